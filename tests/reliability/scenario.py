"""Counting what a run did with its inputs: every expected id exactly once, nothing lost."""

from __future__ import annotations

from tests.jobutil import read_output
from tests.reliability.conftest import SUMMARY


def check(name: str, output: str, expected_ids: set[str], storage_options: dict | None = None) -> tuple:
    data, rejects = read_output(output, storage_options)
    all_ids = list(data["id"]) + list(rejects["id"])
    duplicates = len(all_ids) - len(set(all_ids))
    lost = len(expected_ids - set(all_ids))
    unexpected = set(all_ids) - expected_ids
    line = f"{name:<34} {len(expected_ids):>6} {len(data):>8} {len(rejects):>8} {duplicates:>10} {lost:>4}"
    SUMMARY.append(line)
    print(line)
    assert duplicates == 0, f"{name}: {duplicates} duplicate ids"
    assert lost == 0, f"{name}: lost {sorted(expected_ids - set(all_ids))[:5]}"
    assert not unexpected, f"{name}: unexpected ids {sorted(unexpected)[:5]}"
    return data, rejects
