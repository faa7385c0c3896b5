"""Fault injection: a stage stopped at any write leaves each output old or new, whole; a rerun repairs it.

The real split stage runs on tiny tables over the outputs of an earlier run on other data, and is
stopped at its N-th file-system write (a rename, delete or new temporary of `genrec.io`), for N = 1, 2, ...
until a run completes first. Two ways to stop:

- interrupt: KeyboardInterrupt raised in-process at the write, as Ctrl-C does; clean-up code runs.
- kill: the files on disk are copied just before the write, as `kill -9` would leave them; nothing runs
  after. The one state that is not "old or new at the path" is allowed here: the old output moved aside
  to `.<name>.old` between the two renames, which the next write of that output puts back.

Also: two `genrec ingest` runs on one output, at once, give one complete output and one clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

import genrec
from genrec.io import lock_path
from genrec.config.params import load_params
from genrec.stages import split as stage

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("processed", "report", "split.json")
# Fields great-expectations fills with the time or a fresh uuid on every run.
VOLATILE = {"ge_load_time", "run_time", "validation_id", "validation_time", "id"}


def write_interim(folder: Path, users: int) -> Path:
    """`users` users who each rated the same 6 items, one a step: passes the default 5-cores."""
    folder.mkdir(parents=True)
    rows = [(f"u{u}", str(i), 100 * i + u, 4.0) for u in range(users) for i in range(6)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_parquet(
        folder / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": [str(i) for i in range(6)], "title": [f"Film {i}" for i in range(6)]}).to_parquet(
        folder / "items.parquet", index=False)
    return folder


def run_split(root: Path, interim_dir: Path, out: Path) -> None:
    stage.run(load_params(root / "params.yaml", []), interim_dir=interim_dir, out_dir=out / "processed",
              report_dir=out / "report", metrics_path=out / "split.json")


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def content(path: Path, name: str):
    """What output `name` (at `path`) holds, comparable across runs; None when it is absent.

    Files compare by bytes. The report's data docs carry run times (in names and in the HTML), so the
    report compares by its file names, times masked, and its validation.json without the volatile fields.
    """
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    if name != "report":
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    names = sorted(re.sub(r"\d{8}T\d{6}\.\d+Z", "<time>", p.relative_to(path).as_posix())
                   for p in path.rglob("*") if p.is_file())
    return names, without_volatile(json.loads((path / "validation.json").read_text()))


def contents(out: Path) -> dict:
    return {name: content(out / name, name) for name in OUTPUTS}


@pytest.fixture(scope="module")
def references(root, tmp_path_factory):
    """Outputs of a run on 5 users (old) and of one on 7 users (new): every output differs."""
    base = tmp_path_factory.mktemp("references")
    old_out, new_out = base / "old", base / "new"
    run_split(root, write_interim(base / "interim_old", 5), old_out)
    new_interim = write_interim(base / "interim_new", 7)
    run_split(root, new_interim, new_out)
    old, new = contents(old_out), contents(new_out)
    assert all(old[name] is not None and old[name] != new[name] for name in OUTPUTS)
    return old_out, new_interim, old, new


IO_WRITES = [(os, "rename"), (os, "replace"), (os, "unlink"), (shutil, "rmtree"), (tempfile, "mkdtemp")]


@contextlib.contextmanager
def stop_at_write(monkeypatch, n: int, before_stop=None):
    """Raise KeyboardInterrupt at the `n`-th file-system write made by genrec.io (after `before_stop()`).

    Yields a list that holds the stopped call once it happened.
    """
    count, stopped = [0], []

    def wrap(func):
        def injected(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") == "genrec.io":
                count[0] += 1
                if count[0] == n:
                    stopped.append((func.__name__, args))
                    if before_stop is not None:
                        before_stop()
                    raise KeyboardInterrupt(f"injected at write {n}: {func.__name__}{args}")
            return func(*args, **kwargs)
        return injected

    with monkeypatch.context() as patch:
        for module, name in IO_WRITES:
            patch.setattr(module, name, wrap(getattr(module, name)))
        yield stopped


def hidden(out: Path) -> list[str]:
    """Hidden leftovers in `out`: temporaries and locks, not the marks genrec writes beside its outputs."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(".genrec-output"))


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_split_stopped_at_each_write_leaves_old_or_new_and_a_rerun_repairs_it(root, references, tmp_path,
                                                                              monkeypatch, how):
    old_out, new_interim, old, new = references
    for n in range(1, 200):
        out, disk = tmp_path / f"stopped_{n}", tmp_path / f"disk_{n}"
        shutil.copytree(old_out, out)
        with stop_at_write(monkeypatch, n, before_stop=lambda: shutil.copytree(out, disk, symlinks=True)) as stopped:
            try:
                run_split(root, new_interim, out)
            except KeyboardInterrupt:
                pass
        if not stopped:
            assert contents(out) == new and hidden(out) == []
            break
        left = out if how == "interrupt" else disk
        for name in OUTPUTS:
            now = content(left / name, name)
            if now is None and how == "kill":  # stopped between the two renames: the old output is aside
                now = content(left / f".{name}.old", name)
                assert now == old[name], f"write {n} {stopped}: {name} aside is not the old output"
            else:
                assert now in (old[name], new[name]), f"write {n} {stopped}: {name} is neither old nor new"

        run_split(root, new_interim, left)
        assert contents(left) == new, f"rerun after write {n} {stopped}"
        assert hidden(left) == [], f"rerun after write {n} {stopped} left temporaries"
        shutil.rmtree(out), shutil.rmtree(disk, ignore_errors=True)
    else:
        pytest.fail("the split never completed")
    assert n > 10, n  # it did stop at the writes of all three outputs


GENERIC = {"interactions.csv": "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{t}\n" for u in range(50)
                                                                      for t, i in enumerate("abcdef")),
           "items.csv": "item_id,title\n" + "".join(f"{i},Film {i}\n" for i in "abcdef")}
# `genrec ingest`, its stage slowed by `delay` seconds so that two runs surely overlap.
SLOW_INGEST = """import sys, time
import genrec.stages.ingest as stage
from genrec.cli import main
run, delay = stage.run, float(sys.argv.pop(1))
stage.run = lambda *args, **kwargs: (time.sleep(delay), run(*args, **kwargs))[1]
main(prog_name="genrec")
"""
LOCKED = r"(raw|out) is being written by another genrec run \(lock \S*\.(raw|out)\.lock\); wait for it to finish"


def ingest(tmp_path: Path, out: Path, delay: float = 0.0) -> subprocess.Popen:
    """`genrec ingest` of a generic dataset in `tmp_path/raw` into `out`, in a process of its own."""
    raw = tmp_path / "raw"
    if not raw.exists():
        raw.mkdir()
        for name, text in GENERIC.items():
            (raw / name).write_text(text)
    env = {**os.environ, "GENREC_DATA_MIRROR": str(tmp_path / "no-mirror"),
           "PYTHONPATH": os.pathsep.join([str(Path(genrec.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_INGEST, str(delay), "ingest", "--params", str(ROOT / "params.yaml"),
         "--set", "dataset=my-data", "--raw", str(raw), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def assert_complete(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "items.parquet", "manifest.json"]
    assert len(pd.read_parquet(out / "interactions.parquet")) == 300
    assert json.loads((out / "manifest.json").read_text())["rows"]["users"] == 50
    assert hidden(out.parent) == [] and hidden(out.parents[1]) == [], "temporaries or lock files left"


def test_ingest_refuses_an_output_another_process_holds(tmp_path):
    out = tmp_path / "interim" / "out"
    out.parent.mkdir()
    with FileLock(lock_path(out)):  # the flock a live run holds
        code, stderr = finish(ingest(tmp_path, out))
    assert code != 0
    assert re.search(LOCKED, stderr) and "Traceback" not in stderr, stderr
    assert not out.exists()
    code, stderr = finish(ingest(tmp_path, out))
    assert code == 0, stderr
    assert_complete(out)


def test_two_ingests_at_once_give_one_output_and_one_clear_message(tmp_path):
    out = tmp_path / "interim" / "out"
    first = ingest(tmp_path, out, delay=3)
    deadline = time.monotonic() + 60  # start the second once the first holds its locks
    while not lock_path(out).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    second = ingest(tmp_path, out, delay=3)
    (ok, ok_err), (failed, failed_err) = sorted([finish(first), finish(second)])
    assert ok == 0, ok_err
    assert failed != 0 and re.search(LOCKED, failed_err) and "Traceback" not in failed_err, failed_err
    assert_complete(out)
