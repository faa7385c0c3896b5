"""Atomic writes (an output is whole or absent, never half-written) under a per-output lock, and file hashes.

`atomic_path(path)` writes a new output beside the old one and swaps them under a lock, using these hidden
siblings of `path` (beside it, never inside, so a DVC output never holds them; `/data/`, `/models/` and
`/reports/` are git-ignored as a whole):

    .<name>.lock              the lock: one writer per output, across processes
    .<name>.tmp-<pid>-<rand>  the new output while it is written
    .<name>.old               the old output between the two renames of the swap

The swap is: rename the old output to `.<name>.old`, rename the new one in, delete the old one. If a run
dies between the two renames, `path` is missing and `.<name>.old` holds the old output: the next
`atomic_path(path)` (or, after an in-process interrupt, the writer's own clean-up) renames it back, so
an interrupt at any point leaves the old or the new output whole at `path`. The new one is not finished
instead, because a temporary cannot tell whether it was complete. Each call, once it holds the lock,
also deletes the temporaries of writers that died (`kill -9`): a live writer would hold the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from genrec.errors import DataError
from genrec.config.layout import SPLITS

log = logging.getLogger(__name__)


class OutputLocked(DataError):
    """Another process holds the lock of an output: it is being written by another genrec run."""

    def __init__(self, path: Path, lock: Path):
        super().__init__(f"{path} is being written by another genrec run (lock {lock}); "
                         "wait for it to finish (the lock goes when that process exits)")
        self.path, self.lock = path, lock


def lock_path(path: str | Path) -> Path:
    """The lock file of output `path`: a hidden sibling, `.<name>.lock`."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(*paths: str | Path) -> Iterator[None]:
    """Hold the lock of each output in `paths`, or raise `OutputLocked` at once if another process has one.

    Reentrant within a process (`run_stage` locks a stage's outputs, then `atomic_path` locks each again).
    The lock is `flock` on `.<name>.lock`, so the kernel drops it when its process dies, however it dies;
    a lock file left by `kill -9` locks nothing. The file is deleted on the last release, while still
    locked, so none is left beside the output; filelock does not count a lock on an inode unlinked that
    way as acquired, so two processes never both hold one.
    """
    with contextlib.ExitStack() as stack:
        for path in paths:
            stack.enter_context(_one_lock(Path(path)))
        yield


@contextlib.contextmanager
def _one_lock(path: Path) -> Iterator[None]:
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    # One shared instance per path in the process (is_singleton, not thread-local) makes the lock reentrant.
    lock = FileLock(lock_file, blocking=False, is_singleton=True, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLocked(path, lock_file) from None
    try:
        yield
    finally:
        if lock.lock_counter == 1:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_file)
        lock.release()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success swap it in for `path`, on error delete it.

    Works for files and for directories (the caller creates what it needs under the yielded path).
    Holds `path`'s lock throughout (see the module docstring for the names and the recovery).

    Raises:
        OutputLocked: another process is writing `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _sibling(path, "old")
    with output_lock(path):
        _recover(path, old)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)) / path.name
        try:
            yield tmp
            if os.path.lexists(path):
                os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        finally:
            if not os.path.lexists(path) and os.path.lexists(old):
                os.rename(old, path)  # interrupted between the two renames: the old output goes back
            shutil.rmtree(tmp.parent, ignore_errors=True)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _recover(path: Path, old: Path) -> None:
    """Undo what a writer of `path` that died left behind (the caller holds `path`'s lock)."""
    if os.path.lexists(old):
        if os.path.lexists(path):
            log.warning("removing %s, left by an interrupted write of %s", old, path)
            _remove(old)
        else:
            log.warning("restoring %s from %s: a write was interrupted between its two renames", path, old)
            os.rename(old, path)
    for stale in _stale_temporaries(path):
        log.warning("removing %s, left by an interrupted write of %s", stale, path)
        shutil.rmtree(stale, ignore_errors=True)


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of `path` that no writer uses: the caller holds `path`'s lock, so their writers are gone.

    Their names carry the writer's pid, for whoever finds one. Writing `path` again inside a write of
    `path` is not supported (the inner write would delete the outer one's temporary). Also matched: the
    temporaries of the writer before locks, `.<name>.<8 chars>` (`tempfile.mkdtemp`), holding nothing or
    just `<name>`; that writer took no lock, so one still running on the same path would lose its write.
    """
    name = re.escape(path.name)
    current = re.compile(rf"\.{name}\.tmp-\d+-[a-z0-9_]{{8}}")
    legacy = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}")
    stale = []
    for entry in path.parent.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            continue
        if current.fullmatch(entry.name) or (
                legacy.fullmatch(entry.name) and {p.name for p in entry.iterdir()} <= {path.name}):
            stale.append(entry)
    return sorted(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*paths: str | Path) -> str:
    """sha256 over the bytes of the given files (folders: every file inside, in sorted order).

    Identifies a split or a prompt set independently of DVC: metrics files carry the fingerprint of
    the split they were computed on, so the report can refuse to compare across splits.

    Not the same hash as `tracking.sha256_path`, on purpose: this one streams each file's base name
    and bytes into one digest, that one hashes (relative path, file sha256) pairs. Both values are
    recorded (split_fingerprint in every metrics file and registry version; adapter_sha256,
    backbone_sha256 and MLflow `data.*` params), so merging them would make every recorded value
    disagree with what the code computes now.
    """
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def split_fingerprint(processed_dir: str | Path) -> str:
    """Fingerprint of a split (its train/valid/test.parquet): every metrics file carries it."""
    return fingerprint(*(Path(processed_dir) / f"{name}.parquet" for name in SPLITS))
