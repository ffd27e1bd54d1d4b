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
