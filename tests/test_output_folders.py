"""A command replaces only output folders it wrote: the check before a stage runs, the mark after, and DVC's
indifference to the mark (a real DVC repository under tmp)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tool_env

import tiny_genrec
from genrec.cli import main

ROWS = [(f"u{u}", str((u * 3 + p) % 8), 1000 * u + p, 4.0) for u in range(8) for p in range(6)]


def split(tmp: Path, **paths: str):
    """`genrec split` on a tiny interim folder; `paths` replace --out/--report/--metrics."""
    if not (tmp / "interim").exists():
        tiny_genrec.write_interim(tmp / "interim", ROWS, [f"Title {i}" for i in range(8)])
    chosen = {"out": str(tmp / "processed"), "report": str(tmp / "report"), "metrics": str(tmp / "stats.json"),
              **paths}
    return CliRunner().invoke(main, ["split", "--set", "split.user_core=1", "--set", "split.item_core=1",
                                     "--interim", str(tmp / "interim"),
                                     *[word for key, value in chosen.items() for word in (f"--{key}", value)]])


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_a_report_folder_holding_other_files_is_refused_and_kept(tmp_path):
    """`--report` on a folder of someone's files deleted them (rc 0): now one line naming the folder."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    line = one_error_line(split(tmp_path, report=str(tmp_path / "notes")))
    assert str(tmp_path / "notes") in line and "--report" in line and "delete it" in line
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "processed").exists()


def test_the_parent_of_every_dataset_split_is_refused(tmp_path):
    """`--out data/processed` (for data/processed/<dataset>) would replace every dataset's split."""
    for dataset in ("a", "b"):
        result = split(tmp_path, out=str(tmp_path / "processed" / dataset))
        assert result.exit_code == 0, result.output
    line = one_error_line(split(tmp_path, out=str(tmp_path / "processed")))
    assert "no .processed.genrec-output beside it" in line
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == [".a.genrec-output", ".b.genrec-output",
                                                                          "a", "b"]
    assert (tmp_path / "processed" / "a" / "train.parquet").is_file()


def test_a_marked_folder_is_replaced_by_its_own_command_only(tmp_path):
    assert split(tmp_path).exit_code == 0
    assert (tmp_path / ".processed.genrec-output").is_file() and (tmp_path / ".report.genrec-output").is_file()
    assert not list((tmp_path / "processed").glob("*genrec-output*"))  # beside the output, never inside
    assert split(tmp_path).exit_code == 0  # the same command and options again
    line = one_error_line(CliRunner().invoke(main, ["prompts", "--processed", str(tmp_path / "processed"),
                                                    "--out", str(tmp_path / "report")]))
    assert "was written by `genrec split --report`" in line
    assert (tmp_path / "report" / "validation.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert split(tmp_path, out=str(empty)).exit_code == 0  # an empty folder holds nothing to lose


@pytest.mark.parametrize("where", [".", "..", "ROOT", "ABOVE"])
def test_the_working_folder_and_those_above_it_are_never_outputs(root, tmp_path, monkeypatch, where):
    """`--report .` replaced the repository's root; now one line, even where a mark stands beside it."""
    work = tmp_path / "repo"
    (work / "src").mkdir(parents=True)
    (work / "params.yaml").write_text((root / "params.yaml").read_text())
    monkeypatch.chdir(work)
    target = {"ROOT": str(work), "ABOVE": str(tmp_path)}.get(where, where)
    (work.parent / f".{work.name}.genrec-output").write_text('{"command": "split", "option": "--report"}')
    line = one_error_line(split(work, report=target))
    assert f"--report {target} is the working folder or a folder above it" in line
    assert (work / "params.yaml").is_file() and (work / "src").is_dir()


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    """A 300-character dataset name ended in `OSError: File name too long` from the lock file."""
    (tmp_path / "interim").mkdir()
    name = "a" * 300
    result = CliRunner().invoke(main, ["ingest", "--set", f"dataset={name}", "--raw", str(tmp_path / "raw" / "x"),
                                       "--out", str(tmp_path / "interim" / "x")])
    assert "dataset: a name of 300 bytes" in one_error_line(result)
    result = CliRunner().invoke(main, ["ingest", "--raw", str(tmp_path / "raw" / name),
                                       "--out", str(tmp_path / "interim" / "x")])
    assert "--raw: a name of 300 bytes" in one_error_line(result)


def _dvc(args: list[str], cwd: Path) -> str:
    result = subprocess.run(["dvc", *args], cwd=cwd, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dvc_ignores_the_mark_inside_and_beside_a_directory_output(root, tmp_path):
    """With the project's .dvcignore, a mark inside a directory output (a folder nested in another output) or
    beside it leaves `dvc status` clean; without it, the same mark inside modifies the output."""
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: mkdir -p out/sub && echo a > out/a && "
                                       "echo b > out/sub/b\n    outs:\n      - out\n")
    _dvc(["init", "--no-scm", "-q"], tmp_path)
    (tmp_path / ".dvcignore").write_text((root / ".dvcignore").read_text())
    _dvc(["repro", "-q"], tmp_path)
    lock = (tmp_path / "dvc.lock").read_text()
    (tmp_path / "out" / ".sub.genrec-output").write_text('{"command": "x", "option": "--out"}\n')
    (tmp_path / ".out.genrec-output").write_text('{"command": "make", "option": "--out"}\n')
    assert "up to date" in _dvc(["status"], tmp_path)
    assert "didn't change" in _dvc(["repro"], tmp_path) and (tmp_path / "dvc.lock").read_text() == lock
    (tmp_path / ".dvcignore").write_text("")
    assert "modified" in _dvc(["status"], tmp_path)
