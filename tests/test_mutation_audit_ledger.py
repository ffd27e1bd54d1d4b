"""Mutation-audit gaps in the record of containers read whole (pipeline.ledger) and the output's lease
(pipeline.lease), tested against the modules' functions (no Ray). The mutant ids in the comments (L: ledger.py,
E: lease.py) are those of the audit table in this file's commit message."""

from __future__ import annotations

from pipeline.ledger import ContainerRead, ledger_path, read_ledger, write_ledger
from pipeline.sources import ids_digest

# --- pipeline.ledger ---


def test_a_containers_address_with_a_password_is_not_written_to_the_record(tmp_path) -> None:
    # BUG: a web folder read with its user and password in the URL (https://user:password@host/shards/) gives
    # containers whose listed paths hold them, and a complete run wrote them to OUTPUT/_containers/containers.json in
    # plain text. Such a container is read again by a later run (its done ids skipped), as a presigned one is.
    out = str(tmp_path / "out")
    with_password = "https://alice:s3cretpw@h.example/shards/s.tar"
    with_token = "https://ghp0token0value@h.example/shards/u.tar"
    plain = "https://h.example:8443/shards/me@t.tar"
    entries = {p: ContainerRead(p, 10, "etag", 0, ids_digest([])) for p in (with_password, with_token, plain)}
    write_ledger(out, {}, entries)
    text = open(ledger_path(out)).read()
    assert "s3cretpw" not in text and "ghp0token0value" not in text
    assert read_ledger(out, {}) == {plain: entries[plain]}
