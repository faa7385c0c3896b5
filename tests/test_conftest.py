"""tests/conftest.py's end-of-run list of skipped tests, in a real pytest run of a throw-away suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_a_run_ends_with_the_skipped_tests_and_their_reasons(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "def test_needs_a_tool():\n    pytest.skip('needs the tool (apt-get install -y tool)')\n\n"
        "@pytest.mark.skipif(True, reason='this machine has a GPU')\n"
        "def test_cpu_only():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    tail = out[out.index("short test summary info"):]  # after pytest's own summary, before the final count
    section = tail[tail.index("2 test(s) skipped"):tail.index("1 passed, 2 skipped")]
    assert "needs the tool (apt-get install -y tool):\n    test_demo.py::test_needs_a_tool" in section
    assert "this machine has a GPU:\n    test_demo.py::test_cpu_only" in section
    assert "rerun `make test`" in section


def test_a_run_without_skips_adds_nothing(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_demo.py").write_text("def test_runs():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "skipped" not in result.stdout, result.stdout
