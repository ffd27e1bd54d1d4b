from __future__ import annotations

import pytest

from tests.jobutil import tiny_model_file

SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return tiny_model_file(tmp_path_factory.mktemp("reliability-model"))


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.section("reliability scenarios")
        terminalreporter.write_line(f"{'scenario':<34} inputs purified rejected duplicates lost")
        for line in SUMMARY:
            terminalreporter.write_line(line)
