"""Shared fixtures: where the read-only data mirror is, the project root, and local servers run as processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

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


def tool_env(**extra: str) -> dict:
    """This environment with this interpreter's bin folder first (so `mlflow`, `dvc` and `genrec` are the
    installed ones), MLflow telemetry off and passive OpenMP threads; `extra` variables on top."""
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(command: Callable[[int], list[str]], health: str, log_path: Path, timeout_s: float,
                   cwd: Path | None = None, **env: str) -> Iterator[str]:
    """Run `command(port)` on a free 127.0.0.1 port in its own session and `tool_env(**env)`, output to
    `log_path`; yield its URL once GET <url><health> answers 2xx. The test fails with the log's tail if the
    process exits or `timeout_s` passes first. On exit the whole process group (a CLI's server workers,
    `make`'s children) gets SIGTERM, then SIGKILL after 30 s."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(command(port), cwd=cwd, env=tool_env(**env), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(url + health):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exit {process.returncode}" if process.returncode is not None else f"{timeout_s} s passed"
                pytest.fail(f"{url} not up ({state}); {log_path}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group is gone already
        process.wait()
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def local_server() -> Callable:
    """`running_server` for fixtures of any scope: `with local_server(lambda port: [...], "/health", log,
    timeout_s) as url:`."""
    return running_server


@pytest.fixture(autouse=True, scope="session")
def no_outside_mlflow_store():
    """Tests never write to the caller's MLflow store: MLFLOW_TRACKING_URI, which genrec lets override
    `tracking.uri`, is unset for the session. genrec itself leaves no tracking URI behind (checked in
    tests/tracking/test_tracking.py and tests/tracking/test_registry.py), so nothing needs undoing between modules."""
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
