"""`genrec check-params` and the repro command that runs it first: a bad value never costs DVC's outputs.

`dvc repro` deletes a changed stage's outputs before running it, so a value genrec refuses used to leave the
split, its report and its stats deleted. The end-to-end test runs `make repro` (the project's Makefile) on a
tiny DVC project of the split and prompts stages in a temporary folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tool_env

import tiny_genrec
from genrec.cli import main

ROWS = [(f"u{u}", str((u * 3 + p) % 8), 1000 * u + p, 4.0) for u in range(8) for p in range(6)]
DVC_YAML = """\
stages:
  split:
    cmd: >-
      genrec split --set dataset=tiny --interim data/interim/tiny --out data/processed/tiny
      --report reports/tiny/data_validation --metrics reports/tiny/split_stats.json
    deps: [data/interim/tiny]
    params: [dataset_params.tiny, split]
    outs: [data/processed/tiny, reports/tiny/data_validation]
    metrics: [reports/tiny/split_stats.json]
  prompts:
    cmd: genrec prompts --set dataset=tiny --processed data/processed/tiny --out data/prompts/tiny
    deps: [data/processed/tiny]
    params: [dataset_params.tiny, prompts]
    outs: [data/prompts/tiny]
"""
OUTPUTS = ["data/processed/tiny", "reports/tiny/data_validation", "reports/tiny/split_stats.json", "data/prompts/tiny"]


def tiny_params(root: Path) -> str:
    """The project's params.yaml on one dataset, `tiny`, whose k-cores keep the tiny world whole."""
    text = (root / "params.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^dataset: .*$", "dataset: tiny", text)
    text = re.sub(r"(?m)^datasets: .*$", "datasets: [tiny]", text)
    text = re.sub(r"(?ms)^dataset_params:\n.*?\n\n", "dataset_params:\n  tiny: {split: {user_core: 1}}\n\n", text)
    return text.replace("  item_core: 5 ", "  item_core: 1 ")


def snapshot(project: Path) -> dict[str, bytes]:
    files = {}
    for name in OUTPUTS:
        path = project / name
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                files[file.relative_to(project).as_posix()] = file.read_bytes()
    return files


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)


def make_repro(project: Path) -> subprocess.CompletedProcess:
    """`make repro` with this interpreter's environment as the venv, never reinstalling."""
    return run(["make", "-s", "-o", str(Path(sys.prefix) / ".installed-stamp"), f"VENV={sys.prefix}", "repro"],
               project)


def test_make_repro_and_the_documented_command_check_the_params_before_dvc(root):
    command = "genrec check-params && dvc repro"
    recipe = (root / "Makefile").read_text(encoding="utf-8").split("\nrepro:", 1)[1].split("\n\n", 1)[0]
    assert command in recipe
    assert command in (root / "docs" / "pipeline.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_bad_value_leaves_every_previous_output_intact(root, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make (apt-get install -y make)")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(root / "Makefile", project / "Makefile")
    (project / "params.yaml").write_text(tiny_params(root), encoding="utf-8")
    (project / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    tiny_genrec.write_interim(project / "data" / "interim" / "tiny", ROWS, [f"Title {i}" for i in range(8)])
    assert run(["dvc", "init", "--no-scm", "-q"], project).returncode == 0
    first = make_repro(project)
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(project)
    assert len(before) > 6 and "reports/tiny/split_stats.json" in before
    good = (project / "params.yaml").read_text(encoding="utf-8")
    for bad, named in [(good.replace("min_sequence_length: 3", "min_sequence_length: 2"), "split.min_sequence_length"),
                       (good.replace("tiny: {split: {user_core: 1}}", "tiny: {split: {user_core: -1}}"),
                        "split.user_core: expected an integer >= 1, got -1 (set by dataset_params.tiny)")]:
        (project / "params.yaml").write_text(bad, encoding="utf-8")
        refused = make_repro(project)
        assert refused.returncode != 0
        assert f"Error: params.yaml, line " in refused.stderr and named in refused.stderr, refused.stderr
        assert "Running stage" not in refused.stdout
        assert snapshot(project) == before
    # What the check prevents: DVC alone deletes the split's outputs, then genrec refuses the value.
    alone = run(["dvc", "repro"], project)
    assert alone.returncode != 0 and "split.user_core" in alone.stdout + alone.stderr
    assert not (project / "data" / "processed" / "tiny").exists()


def test_check_params_names_every_problem_of_every_dataset_one_a_line(root, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text(encoding="utf-8")
                      .replace("min_sequence_length: 3", "min_sequence_length: 2")
                      .replace("      max_users: 300", "      max_users: -300"), encoding="utf-8")
    result = CliRunner().invoke(main, ["check-params", "--params", str(params), "--set", "prompts.seed=abc"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 3, result.output
    assert all(line.startswith(f"Error: {params}") for line in lines)
    assert any("split.min_sequence_length" in line and ", line " in line for line in lines)
    assert any("eval.max_users" in line and "(set by dataset_params.toys-p5)" in line for line in lines)
    assert any("prompts.seed" in line for line in lines)


def test_check_params_passes_the_project_params(root):
    result = CliRunner().invoke(main, ["check-params", "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid for ml-latest-small, toys-p5" in result.output


def test_check_params_refuses_a_dataset_name_too_long_for_its_folders(root):
    result = CliRunner().invoke(main, ["check-params", "--params", str(root / "params.yaml"),
                                       "--set", f"datasets=[ml-latest-small, {'t' * 300}]"])
    assert result.exit_code == 1
    assert any("dataset: a name of 300 bytes" in line for line in result.output.splitlines()), result.output
