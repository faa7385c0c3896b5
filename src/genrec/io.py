"""Atomic writes (outputs appear whole or not at all: write to a temporary sibling, then rename) and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from genrec.layout import SPLITS


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it.

    Works for files and for directories (the caller creates what it needs under the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


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
