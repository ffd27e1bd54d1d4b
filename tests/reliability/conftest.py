from __future__ import annotations

import pytest

from tests.conftest import SCENARIO_PROPERTY
from tests.jobutil import tiny_model_file

SUMMARY: list[str] = []  # scenario lines `scenario.check` adds in this process


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return tiny_model_file(tmp_path_factory.mktemp("reliability-model"))


@pytest.fixture(autouse=True)
def _scenario_lines_to_the_report(request):
    """Each test's scenario lines go into its report, which pytest-xdist sends from the worker that ran the test to
    the process that prints the summary (tests/conftest.py); a list kept here would stay in the worker."""
    start = len(SUMMARY)
    yield
    request.node.user_properties.extend((SCENARIO_PROPERTY, line) for line in SUMMARY[start:])
