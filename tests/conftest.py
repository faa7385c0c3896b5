"""Shared fixtures: where the read-only data mirror is, and the project root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_mirror() -> Path:
    """The folder holding <dataset>/ copies ($GENREC_DATA_MIRROR, else ../shared/data beside the repo)."""
    mirror = Path(os.environ.get("GENREC_DATA_MIRROR") or ROOT.parent / "shared" / "data")
    if not (mirror / "ml-latest-small" / "ratings.csv").exists():
        pytest.fail(f"no ml-latest-small under {mirror}: set GENREC_DATA_MIRROR to the shared data folder")
    return mirror.resolve()


@pytest.fixture(autouse=True, scope="session")
def no_outside_mlflow_store():
    """Tests never write to the caller's MLflow store: MLFLOW_TRACKING_URI, which genrec lets override
    `tracking.uri`, is unset for the session. genrec itself leaves no tracking URI behind (checked in
    tests/test_tracking.py and tests/test_registry.py), so nothing needs undoing between modules."""
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After pytest's own summary, just above the final count: every skipped test with its reason.

    Each skip reason says what is missing and how to get it (e.g. the browser test names the Debian
    packages), so a run that skipped something says so where it cannot be missed.
    """
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)
    terminalreporter.section(f"{len(skipped)} test(s) skipped: not run on this machine", sep="=", yellow=True)
    for reason, nodeids in by_reason.items():
        terminalreporter.line(f"{reason}:", yellow=True)
        for nodeid in nodeids:
            terminalreporter.line(f"    {nodeid}")
    terminalreporter.line("Each reason names what is missing: provide it, then rerun `make test` "
                          "(or `pytest <test id>`).")
    terminalreporter.line("CI=true turns the browser test's skip into a failure.")
