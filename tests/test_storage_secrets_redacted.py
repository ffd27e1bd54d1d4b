"""Storage options are written down (_job.json, _summary.json, the dry run) with their secrets as '***'. Before, only
names with key, secret, token, password or session were: a web server's headers={"Authorization": "Bearer ..."},
aiohttp's auth and cookies, and Azure's credential were written in clear."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import JobConfig
from pipeline.redaction import redact

SECRETS = {"headers": {"Authorization": "Bearer s3cr3t-1", "Proxy-Authorization": "Basic s3cr3t-2",
                       "Accept": "image/png"},
           "client_kwargs": {"auth": ["user", "s3cr3t-3"], "cookies": {"sid": "s3cr3t-4"}, "timeout": 30},
           "credential": "s3cr3t-5", "account_name": "acct"}


def test_http_and_azure_credentials_are_redacted_and_the_rest_kept() -> None:
    shown = redact(SECRETS)
    assert "s3cr3t" not in json.dumps(shown)
    assert shown["headers"]["Accept"] == "image/png" and shown["client_kwargs"]["timeout"] == 30
    assert shown["account_name"] == "acct"


def test_the_recorded_config_holds_no_header_credential(tmp_path: Path) -> None:
    config = JobConfig(input="https://example.com/data/", output=str(tmp_path / "out"), storage_options=SECRETS)
    assert "s3cr3t" not in json.dumps(config.public())


# Azurite's published development account key: the shape of a real one, and no secret.
AZURE_CONNECTION = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OU"
                    "zFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")


def test_an_azure_connection_string_is_not_written_down(tmp_path: Path) -> None:
    """adlfs takes the account key inside connection_string=...; a run on abfs:// wrote it in clear to _job.json,
    _summary.json and _runs/ (found against Azurite). Hidden under its own name, under another name that a value
    holding AccountKey= or SharedAccessSignature= gives away, and inside a list."""
    sas = "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024-01-01&sig=s3cr3t-7"
    options = {"connection_string": AZURE_CONNECTION, "conn_str": "s3cr3t-6", "azure": {"cs": sas},
               "extra": [AZURE_CONNECTION], "account_name": "devstoreaccount1", "anon": False}
    config = JobConfig(input="abfs://imgs/", output="abfs://out/clean/", storage_options=options)
    written = json.dumps(config.public())
    assert "Eby8vdM02" not in written and "s3cr3t" not in written
    shown = config.public()["storage_options"]
    assert shown["account_name"] == "devstoreaccount1" and shown["anon"] is False  # what is no secret stays
    assert shown["connection_string"] == "***" and shown["azure"] == {"cs": "***"}


def test_an_azure_urls_container_before_the_account_is_shown() -> None:
    """'abfss://imgs@acct.dfs.core.windows.net/in/' (adlfs', Spark's and Hadoop's form) names the container imgs, no
    user: the job's last line, _job.json and its messages showed 'abfss://***@acct...', without the container."""
    from pipeline.redaction import redact_uri, redact_uri_secrets

    for uri in ("abfss://imgs@acct.dfs.core.windows.net/in/", "az://$web@acct.blob.core.windows.net/x@2.png",
                "wasbs://raw-2026@acct.blob.core.windows.net/a/"):
        assert redact_uri(uri) == uri
    uri = "abfss://imgs@acct.dfs.core.windows.net/in/"
    said = f"cannot list input {uri}: HttpResponseError: AuthorizationPermissionMismatch on imgs/in"
    assert redact_uri_secrets(said, uri) == said
    config = JobConfig(input=uri, output="abfss://clean@acct.dfs.core.windows.net/out/")
    assert config.public()["input"] == uri and config.public()["output"] == "abfss://clean@acct.dfs.core.windows.net/out/"
    # what cannot be a container's name is hidden as before: a password, upper case, a token of other characters
    assert redact_uri("abfs://user:s3cr3t@acct.dfs.core.windows.net/in") == "abfs://user:***@acct.dfs.core.windows.net/in"
    assert redact_uri("abfs://Tok_EN@acct/x") == "abfs://***@acct/x"
    assert redact_uri("s3://tok@bucket/x") == "s3://***@bucket/x"  # other stores keep the rule
