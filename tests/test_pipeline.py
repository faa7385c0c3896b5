"""The data half of `dvc repro` on the real ml-latest-small: runs, is a no-op the second time, reruns only
what a changed param touches, and a forced rerun gives byte-identical outputs (same md5 in dvc.lock)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DATA_STAGES = ["ingest", "split", "prompts"]


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _data_md5s(repo: Path) -> dict[str, str]:
    """md5 of every data output (the validation report holds GX run times, so it is left out)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in DATA_STAGES for out in lock["stages"][stage]["outs"]
            if out["path"].startswith("data/")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, root, data_mirror) -> tuple[Path, dict]:
    """A throw-away git + DVC checkout of the project's tracked files, with the mirror configured."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if (root / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, repo / name)
    env = {**os.environ, "GENREC_DATA_MIRROR": str(data_mirror), "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        _run(cmd, repo, env)
    return repo, env


def test_repro_twice_then_param_change_reruns_split_and_prompts_only(repo):
    repo, env = repo
    first = _run(["dvc", "repro", "prompts"], repo, env)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first
    assert len((repo / "data/prompts/ml-latest-small/test.jsonl").read_text().splitlines()) == 610

    second = _run(["dvc", "repro", "prompts"], repo, env)
    assert "Running stage" not in second

    md5s = _data_md5s(repo)
    forced = _run(["dvc", "repro", "--force", "--single-item", "split"], repo, env)
    forced += _run(["dvc", "repro", "--force", "--single-item", "prompts"], repo, env)
    assert _data_md5s(repo) == md5s, "a rerun with the same inputs and seed changed an output"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["item_core"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(["dvc", "repro", "prompts"], repo, env)
    assert "Running stage 'ingest'" not in third
    assert "Running stage 'split'" in third and "Running stage 'prompts'" in third
