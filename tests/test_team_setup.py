"""What a colleague needs, end to end with the real tools: a DVC remote and the MLflow tracking server.

- DVC: the project's data stages on a 12-user dataset, pushed to a local-folder remote by `make push`;
  a fresh `git clone` gets them with `make pull`, `dvc status` is clean and `dvc repro` runs nothing.
- MLflow: `make server` on a free loopback port (SQLite store and artifact proxy in tmp); with
  MLFLOW_TRACKING_URI=http://127.0.0.1:<port>, training's run, `genrec promote` and `genrec recommend`
  go through the server, and recommend needs nothing on this machine but the params file.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

DATASET = "tinyset"
DATA_STAGES = [f"{stage}@{DATASET}" for stage in ("ingest", "split", "prompts")]
SERVER_START_TIMEOUT_S = 120  # `mlflow server` starts in 6-10 s on an idle machine (docs/team.md)


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _tool_env() -> dict:
    """This interpreter's bin folder first, so `dvc`, `genrec` and `mlflow` are the installed ones."""
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _make(*args: str) -> list[str]:
    """`make` on the project's Makefile with this interpreter's environment as the venv, never reinstalling."""
    return ["make", "-s", "-o", str(Path(sys.prefix) / ".installed-stamp"), f"VENV={sys.prefix}", *args]


def _commit(repo: Path, env: dict, message: str) -> None:
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo, env)


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_pipeline_from_a_folder_remote_and_has_nothing_to_rerun(root, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make (apt-get install -y make): the test runs `make push` and `make pull`")
    env = _tool_env()
    origin = tmp_path / "origin"
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if (root / name).exists():
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, origin / name)
    (origin / "dvc.lock").unlink(missing_ok=True)  # the project's own runs: not this repository's
    params = yaml.safe_load((origin / "params.yaml").read_text())
    params["datasets"] = [DATASET]
    params["dataset_params"][DATASET] = {}  # every dataset in `datasets` needs an entry
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = origin / "data" / "raw" / DATASET
    raw.mkdir(parents=True)
    rows = [f"u{u},i{i},{100 * u + i}" for u in range(12) for i in range(8)]
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    (raw / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(8)))
    _run(["git", "init", "-q"], origin, env)
    _commit(origin, env, "init")
    ran = re.findall(r"Running stage '([^']+)'", _run(["dvc", "repro", "prompts"], origin, env))
    assert ran == DATA_STAGES

    remote = tmp_path / "remote"  # a shared folder; S3, GCS and SSH remotes differ only in the URL
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], origin, env)
    pushed = _run(_make("push"), origin, env)
    assert re.search(r"\d+ files? pushed", pushed), pushed
    _commit(origin, env, "pipeline outputs, and the team's remote")

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()  # git holds none of it
    pulled = _run(_make("pull"), clone, env)  # training and later stages never ran: warned, not fatal
    assert re.search(r"\d+ files? fetched", pulled), pulled
    for folder in (f"data/raw/{DATASET}", f"data/interim/{DATASET}", f"data/processed/{DATASET}",
                   f"data/prompts/{DATASET}"):
        compared = filecmp.dircmp(origin / folder, clone / folder)
        assert compared.left_list and not (compared.left_only or compared.right_only or compared.diff_files), folder
    assert "up to date" in _run(["dvc", "status", "prompts"], clone, env)
    assert "Running stage" not in _run(["dvc", "repro", "prompts"], clone, env)


@pytest.fixture
def server(root, tmp_path, local_server):
    """`make server` in tmp_path (its default store and artifact folder land there) on a free port."""
    if shutil.which("make") is None:
        pytest.skip("needs GNU make (apt-get install -y make): the test starts the server with `make server`")
    with local_server(lambda port: _make("-f", str(root / "Makefile"), "server", f"SERVER_PORT={port}"),
                      "/health", tmp_path / "server.log", SERVER_START_TIMEOUT_S, cwd=tmp_path) as url:
        yield url


@pytest.mark.slow
def test_promote_and_recommend_go_through_the_tracking_server(server, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from genrec.tracking import registry
    from genrec.tracking import runs as tracking
    from genrec.cli import recommend
    from genrec.config.params import to_dict

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    w = tiny.world(tmp_path / "work")  # params say sqlite:///<tmp>/work/mlflow.db: the variable must win
    tiny.promote(w, "first", seed=3, valid_ranks=[1, 2], test_ranks=[2, None])
    client = MlflowClient(server)
    version = client.get_model_version_by_alias(registry.registered_model_name(w["params"]), registry.CHAMPION)
    assert version.version == "1"
    with tracking.start_or_resume_run(w["params"], run_id=version.run_id):  # as `genrec evaluate` does
        tracking.log_split_input(w["params"], w["processed"], "test", "evaluation")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # stored behind the server's proxy
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["tiny/test"]
    assert not (w["tmp"] / "mlflow.db").exists() and not (w["tmp"] / "mlartifacts").exists()
    stored = {p.name for p in (tmp_path / "mlartifacts-server").rglob("*") if p.is_file()}
    assert {"adapter_model.safetensors", "items.parquet", "model.safetensors"} <= stored  # adapter and backbone

    # A colleague's machine: the params file and the variable, no adapter, backbone or split here.
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(w["params"])))
    shutil.rmtree(w["tmp"])
    result = CliRunner().invoke(recommend, ["--params", str(params_path), "--history", "Toy Story (1995)",
                                            "--history", "Heat (1995)", "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert len(lines) == 3 and "models:/genrec-tiny@champion" in result.stdout
    titles = [line.split(". ", 1)[1].rsplit("  (", 1)[0] for line in lines]
    assert set(titles) <= set(tiny.TITLES) - {"Toy Story (1995)", "Heat (1995)"}
