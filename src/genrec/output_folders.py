"""Which folders a command may replace, and the mark genrec leaves beside each folder it wrote.

A stage replaces its output folders whole (`genrec.io.atomic_path`), so a mistyped path would delete what
the folder held: `--out data/processed` instead of `data/processed/<dataset>` would take every dataset's
split with it. Before a stage runs, `genrec.cli` checks each output folder: one that is missing or empty
is fine; one that holds files must carry the mark of the same command and option, `.<name>.genrec-output`
beside it, or the command is refused. After the stage succeeds the mark is written.

The mark lies beside the folder, like the lock and the temporaries of `atomic_path`, never inside: DVC's
hash of a directory output, `io.fingerprint` and `tracking.sha256_path` (the backbone_sha256 of registry
versions) stay those of what the stage wrote. `.dvcignore` lists the pattern too, for a folder nested
inside another DVC output. Only this module and the CLI read or write marks; no stage imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genrec.errors import DataError

MARK_SUFFIX = ".genrec-output"
NAME_MAX = 255
"""Bytes in one file name (Linux, macOS)."""
LONGEST_SIBLING = len(".{}.tmp-4194304-abcdefgh") - 2
"""What `atomic_path` adds to an output's name for its temporary (pid up to Linux's 2**22)."""
MAX_NAME = NAME_MAX - LONGEST_SIBLING
"""The longest output name (bytes) whose lock, temporary and mark still fit in a file name."""


def mark_path(folder: Path) -> Path:
    """The mark of `folder`: `.<name>.genrec-output` beside it."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}{MARK_SUFFIX}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an output (too long for the file system with genrec's siblings), or None."""
    size = len(name.encode("utf-8"))
    if size <= MAX_NAME:
        return None
    return (f"a name of {size} bytes ({name[:20]}...) is longer than the {MAX_NAME} an output may have "
            f"(file names hold {NAME_MAX} bytes, and genrec writes .<name>.tmp-<pid>-<8 characters> beside it)")


def check_path(path: Path, option: str) -> None:
    """Refuse an output path that is the working folder or above it, or has a name too long for its siblings.

    Raises:
        DataError: naming the option and the path.
    """
    resolved, here = Path(os.path.abspath(path)), Path(os.path.abspath(Path.cwd()))
    if resolved == here or resolved in here.parents:
        raise DataError(f"{option} {path} is the working folder or a folder above it, and a stage replaces its "
                        "output folder whole", fix=f"Give {option} a folder of its own below it, as in dvc.yaml")
    too_long = [part for part in resolved.parts[1:-1] if len(part.encode("utf-8")) > NAME_MAX]
    problem = name_problem(resolved.name) or (too_long and f"a folder name of {len(too_long[0].encode())} bytes is "
                                              f"longer than the {NAME_MAX} a file name may have")
    if problem:
        raise DataError(f"{option}: {problem}", fix="Choose a shorter path")


def check_folder(folder: Path, command: str, option: str) -> None:
    """Refuse to replace `folder` unless it is missing, empty, or marked as written by `genrec <command> <option>`.

    Raises:
        DataError: naming the folder, who wrote it (if genrec did), and how to proceed.
    """
    check_path(folder, option)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    mark = mark_path(folder)
    wrote = read_mark(mark)
    if wrote == {"command": command, "option": option}:
        return
    by = (f"was written by `genrec {wrote.get('command')} {wrote.get('option')}`" if wrote
          else f"holds files and no {mark.name} beside it says genrec wrote it there")
    raise DataError(f"{by}; `genrec {command}` replaces {option} whole", path=folder,
                    fix=f"Check the path (a folder of its own, as in dvc.yaml); if nothing in it is needed, delete it "
                        f"and rerun (a folder DVC restored has no mark: `rm -r {folder}`, or let `dvc repro` "
                        "rebuild it)")


def read_mark(mark: Path) -> dict | None:
    """The {command, option} a mark names; None for no mark, or one that is no JSON object."""
    try:
        data = json.loads(mark.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_mark(folder: Path, command: str, option: str) -> None:
    """Mark `folder` (if the stage made it) as written by `genrec <command> <option>`."""
    if Path(folder).is_dir():
        mark = mark_path(folder)
        tmp = mark.with_name(f"{mark.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"command": command, "option": option}, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, mark)
