"""io.atomic_path: whole outputs or none, for files and folders; crashed writers' leftovers cleaned; one writer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from filelock import FileLock

from genrec.io import OutputLocked, atomic_path, lock_path, output_lock


def write(tmp, kind, text):
    """Fill the temporary path `atomic_path` yields: one file, or a folder holding two."""
    if kind == "file":
        tmp.write_text(text)
    else:
        tmp.mkdir()
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text * 2)


def snapshot(path):
    """{relative name: bytes} of a file or of every file under a folder."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(params=["file", "folder"])
def kind(request):
    return request.param


@pytest.fixture
def old(tmp_path, kind):
    """An existing output `out/target` written by atomic_path, and its bytes."""
    path = tmp_path / "out" / "target"
    with atomic_path(path) as tmp:
        write(tmp, kind, "old")
    return path, snapshot(path)


def test_success_replaces_the_output_and_leaves_nothing_beside_it(old, kind):
    path, before = old
    with atomic_path(path) as tmp:
        assert tmp != path and tmp.parent.parent == path.parent and tmp.name == path.name
        write(tmp, kind, "new")
        assert snapshot(path) == before  # untouched until the body succeeds
    assert snapshot(path) != before
    assert snapshot(path) == ({"": b"new"} if kind == "file" else {"a.txt": b"new", "sub/b.txt": b"newnew"})
    assert names(path.parent) == ["target"]  # no temporary, no `.old`, no lock file


def test_new_output_of_the_other_kind_replaces_the_old_one(old, kind):
    path, _ = old
    other = "folder" if kind == "file" else "file"
    with atomic_path(path) as tmp:
        write(tmp, other, "new")
    assert path.is_dir() == (other == "folder")
    assert names(path.parent) == ["target"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_keeps_the_old_output_byte_identical(old, kind, error):
    path, before = old
    with pytest.raises(type(error)):
        with atomic_path(path) as tmp:
            write(tmp, kind, "half")
            raise error
    assert snapshot(path) == before
    assert names(path.parent) == ["target"]


def test_an_exception_before_any_output_leaves_nothing(tmp_path, kind):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "target") as tmp:
            write(tmp, kind, "half")
            raise RuntimeError("boom")
    assert names(tmp_path) == []


def test_temporaries_of_a_killed_writer_are_removed_at_the_next_write(old, kind):
    path, _ = old
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a pid that was live and has exited, as after `kill -9`
    stale = path.parent / f".target.tmp-{dead_pid}-abcd_123"
    legacy = path.parent / ".target.x1y2z3_q"  # the writer before locks: tempfile.mkdtemp(prefix=".target.")
    for folder in (stale, legacy):
        folder.mkdir()
        write(folder / "target", kind, "half")
    dead_lock = lock_path(path)
    dead_lock.write_text("")  # a lock file whose flock died with its process
    # Siblings that only look alike stay: another output's temporary, a user's hidden folder, a lookalike.
    keep = [path.parent / ".target.json.tmp-1-abcdefgh", path.parent / ".targetx.abcdefgh",
            path.parent / ".target.abcdefgh"]
    for folder in keep:
        folder.mkdir()
    (keep[-1] / "notes.txt").write_text("not a temporary: it holds something other than `target`")

    with atomic_path(path) as tmp:
        write(tmp, kind, "new")
    assert not stale.exists() and not legacy.exists() and not dead_lock.exists()
    assert all(folder.exists() for folder in keep)
    assert b"".join(snapshot(path).values()).startswith(b"new")


def test_a_write_interrupted_between_its_two_renames_is_undone_at_the_next_call(old, kind):
    path, before = old
    # The state a `kill -9` leaves after the first rename (old output aside) and before the second.
    aside = path.with_name(".target.old")
    os.rename(path, aside)
    half = path.parent / f".target.tmp-{os.getpid() + 1_000_000}-abcdefgh"  # no such pid
    half.mkdir()
    write(half / "target", kind, "new")

    with pytest.raises(RuntimeError):  # the next call restores the old output first, whatever it does
        with atomic_path(path):
            assert snapshot(path) == before
            raise RuntimeError("boom")
    assert snapshot(path) == before
    assert names(path.parent) == ["target"]


def test_a_leftover_old_output_beside_a_whole_output_is_removed(old, kind):
    path, _ = old
    aside = path.with_name(".target.old")
    write(aside, kind, "older")  # killed while deleting the old output, after the new one was in place
    with atomic_path(path) as tmp:
        write(tmp, kind, "new")
    assert names(path.parent) == ["target"]


def test_an_in_process_interrupt_between_the_renames_puts_the_old_output_back(old, kind, monkeypatch):
    path, before = old
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the second rename: the new output into place
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            write(tmp, kind, "new")
    monkeypatch.undo()
    assert calls[0] == (path, path.with_name(".target.old")) and calls[2] == (path.with_name(".target.old"), path)
    assert snapshot(path) == before
    assert names(path.parent) == ["target"]


def test_an_output_locked_by_another_process_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "target"
    holder = FileLock(lock_path(path))  # another open file description conflicts like another process
    with holder:
        with pytest.raises(OutputLocked, match=r"target is being written by another genrec run \(lock .*"
                                               r"\.target\.lock\); wait for it to finish"):
            with atomic_path(path) as tmp:
                write(tmp, kind, "new")
    assert not path.exists()
    with atomic_path(path) as tmp:
        write(tmp, kind, "new")
    assert path.exists()


def test_the_lock_is_reentrant_within_a_process_and_removed_after(tmp_path):
    path = tmp_path / "target.json"
    with output_lock(path, tmp_path / "other"):
        assert lock_path(path).exists()
        with atomic_path(path) as tmp:
            tmp.write_text("1")
        assert lock_path(path).exists()  # still held by the outer lock
    assert names(tmp_path) == ["target.json"]
