"""genrec.tracking on a real MLflow SQLite store in tmp_path: experiments, runs, lineage helpers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from genrec.tracking import runs as tracking
from genrec.io import split_fingerprint
from genrec.config.params import Params, TrackingParams

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)


def params_for(tmp: Path, dataset: str = "tiny") -> Params:
    return Params(dataset=dataset, tracking=TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}"))


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_runs_are_tagged_resumable_and_store_artifacts_beside_the_db(tmp_path, no_env_uri):
    import mlflow

    params = params_for(tmp_path)
    with tracking.start_or_resume_run(params, run_name="first") as run:
        tracking.log_params(params, {"data": {"models/base": "md5:abc"}})
        mlflow.log_text("hello", "note.txt")
        tracking.write_run_file(tmp_path / "model" / tracking.RUN_FILE, run)
    run_id = tracking.read_run_id(tmp_path / "model")
    assert run_id == run.info.run_id
    saved = json.loads((tmp_path / "model" / tracking.RUN_FILE).read_text())
    assert saved["tracking_uri"] == params.tracking.uri and saved["experiment_id"] == run.info.experiment_id

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"hr": {"5": 0.1, "10": 0.2}, "users": 3, "name": "x", "ok": True}))
    with tracking.start_or_resume_run(params, run_id=run_id) as again:
        logged = tracking.log_metrics_file(metrics, prefix="test")
    assert again.info.run_id == run_id
    assert logged == {"test.hr.5": 0.1, "test.hr.10": 0.2, "test.users": 3.0}

    client = mlflow.MlflowClient(params.tracking.uri)
    stored = client.get_run(run_id)
    assert stored.data.tags["genrec.family"] == "genrec" and stored.data.tags["genrec.dataset"] == "tiny"
    assert stored.data.params["train.lora.r"] == str(Params().train.lora.r) and stored.data.params["data.models/base"] == "md5:abc"
    assert stored.data.metrics["test.hr.10"] == 0.2
    experiment = client.get_experiment(stored.info.experiment_id)
    assert experiment.name == "genrec-tiny"
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "genrec-tiny").as_uri()
    assert list((tmp_path / "mlartifacts" / "genrec-tiny").rglob("note.txt"))
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()
    assert tracking.run_exists(params, run_id) and not tracking.run_exists(params, "0" * 32)
    with tracking.start_or_resume_run(params, tags={"genrec.family": "p5"}) as other:
        pass
    assert client.get_run(other.info.run_id).data.tags["genrec.family"] == "p5"
    assert client.get_run(other.info.run_id).info.experiment_id == stored.info.experiment_id


def test_a_dvc_experiment_names_and_tags_its_new_runs_only(tmp_path, no_env_uri, monkeypatch):
    import mlflow

    params = params_for(tmp_path)
    client = mlflow.MlflowClient(params.tracking.uri)
    monkeypatch.delenv(tracking.DVC_EXP_NAME, raising=False)
    with tracking.start_or_resume_run(params, run_name="genrec-x-r8-0123abcd") as plain:
        pass
    monkeypatch.setenv(tracking.DVC_EXP_NAME, "cedar-vies")  # what `dvc exp run` sets for its stages
    with tracking.start_or_resume_run(params, run_name="genrec-x-r16-89abcdef") as named:
        pass
    with tracking.start_or_resume_run(params) as unnamed:
        pass
    with tracking.start_or_resume_run(params, run_id=plain.info.run_id):  # reopening renames nothing
        pass

    runs = {run.info.run_id: client.get_run(run.info.run_id) for run in (plain, named, unnamed)}
    assert runs[plain.info.run_id].info.run_name == "genrec-x-r8-0123abcd"
    assert "genrec.dvc_experiment" not in runs[plain.info.run_id].data.tags
    assert runs[named.info.run_id].info.run_name == "genrec-x-r16-89abcdef-cedar-vies"
    assert runs[unnamed.info.run_id].info.run_name == "cedar-vies"
    for run_id in (named.info.run_id, unnamed.info.run_id):
        assert runs[run_id].data.tags["genrec.dvc_experiment"] == "cedar-vies"


@pytest.mark.parametrize("outside", ["unset", "elsewhere"])
def test_calls_leave_the_tracking_uri_and_environment_as_they_were(tmp_path, monkeypatch, outside):
    """Before and after each call: the same MLflow tracking URI (unset, or another store) and environment."""
    import mlflow

    monkeypatch.delenv(tracking.TELEMETRY_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # first: teardown restores the value before the test
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}" if outside == "elsewhere" else None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # exported by set_tracking_uri; it would win over params
    uri, was_set, env = mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set(), dict(os.environ)

    def unchanged(call: str) -> None:
        assert (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set()) == (uri, was_set), call
        assert dict(os.environ) == env, call

    try:
        params = params_for(tmp_path)
        experiment_id = tracking.ensure_experiment(params)
        unchanged("ensure_experiment")
        with tracking.start_or_resume_run(params, run_name="x") as run:
            assert mlflow.get_tracking_uri() == params.tracking.uri  # the stages' fluent calls reach the store
            mlflow.log_metric("m", 1.0)
            tracking.write_run_file(tmp_path / tracking.RUN_FILE, run)
        unchanged("start_or_resume_run")
        with tracking.start_or_resume_run(params, run_id=run.info.run_id, system_metrics=True):
            pass
        unchanged("start_or_resume_run(run_id=..., system_metrics=True)")
        with pytest.raises(RuntimeError), tracking.start_or_resume_run(params):
            raise RuntimeError("a failing stage")
        unchanged("start_or_resume_run that raised")
        assert tracking.run_exists(params, run.info.run_id)
        unchanged("run_exists")
        stored = tracking.mlflow_client(params).get_run(run.info.run_id)
        unchanged("mlflow_client")
        assert stored.data.metrics["m"] == 1.0 and stored.info.experiment_id == experiment_id
        assert json.loads((tmp_path / tracking.RUN_FILE).read_text())["tracking_uri"] == params.tracking.uri
    finally:
        mlflow.set_tracking_uri(None)  # MLflow's "not set"


def test_a_run_whose_block_raises_ends_failed_and_an_interrupted_one_killed(tmp_path, no_env_uri):
    import mlflow

    params = params_for(tmp_path)
    mlc = tracking.mlflow_client(params)
    with pytest.raises(ValueError, match="stage broke"):
        with tracking.start_or_resume_run(params, run_name="fails") as run:
            raise ValueError("stage broke")
    assert mlc.get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with tracking.start_or_resume_run(params, run_id=run.info.run_id):  # a resumed run too
            raise KeyboardInterrupt
    assert mlc.get_run(run.info.run_id).info.status == "KILLED"
    with tracking.start_or_resume_run(params, run_id=run.info.run_id):
        pass
    assert mlc.get_run(run.info.run_id).info.status == "FINISHED" and mlflow.active_run() is None


SIGTERMED = """
import os, signal, sys, time
from genrec.tracking import runs as tracking
from genrec.config.params import Params, TrackingParams

params = Params(dataset="tiny", tracking=TrackingParams(uri=sys.argv[1]))
with tracking.start_or_resume_run(params, run_name="terminated") as run:
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
print("survived", flush=True)
"""


def test_a_run_terminated_by_sigterm_ends_killed_and_the_process_still_dies_of_it(tmp_path, no_env_uri):
    import signal
    import sys

    params = params_for(tmp_path)
    done = subprocess.run([sys.executable, "-c", SIGTERMED, params.tracking.uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == -signal.SIGTERM, done.stderr
    run_id = done.stdout.split()[0]
    assert "survived" not in done.stdout
    assert tracking.mlflow_client(params).get_run(run_id).info.status == "KILLED"


def test_system_metrics_are_sampled_only_for_runs_that_ask_and_continue_when_resumed(tmp_path, no_env_uri,
                                                                                     monkeypatch):
    monkeypatch.delenv(tracking.INTERVAL_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)  # MLflow's own switch: off
    params = params_for(tmp_path)
    params = replace(params, tracking=replace(params.tracking, system_metrics_interval=0.2))
    with tracking.start_or_resume_run(params, system_metrics=True) as run:
        time.sleep(1.5)
    with tracking.start_or_resume_run(params) as plain:  # evaluation and promotion reopen runs like this
        time.sleep(0.6)
    with tracking.start_or_resume_run(params, run_id=run.info.run_id, system_metrics=True):
        time.sleep(0.6)

    client = tracking.mlflow_client(params)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 4 and steps == sorted(set(steps)), steps  # the resumed run continued the series
    assert not [name for name in client.get_run(plain.info.run_id).data.metrics if name.startswith("system/")]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_the_split_is_a_dataset_input_named_by_part_with_the_fingerprint_as_digest(tmp_path, no_env_uri):
    params = params_for(tmp_path)
    processed = tiny_genrec.write_split(tmp_path / "processed")
    with tracking.start_or_resume_run(params) as run:
        tracking.log_split_input(params, processed, "train", "training")
    for part in ("valid", "test", "test"):  # evaluate reopens the run; logging a part twice keeps one input
        with tracking.start_or_resume_run(params, run_id=run.info.run_id):
            tracking.log_split_input(params, processed, part, "evaluation")

    inputs = tracking.mlflow_client(params).get_run(run.info.run_id).inputs.dataset_inputs
    fingerprint = split_fingerprint(processed)
    found = {i.dataset.name: (i.dataset.digest, json.loads(i.dataset.source), {t.key: t.value for t in i.tags})
             for i in inputs}
    assert sorted(found) == ["tiny/test", "tiny/train", "tiny/valid"] and len(inputs) == 3
    for name, (digest, source, tags) in found.items():
        assert digest == fingerprint[:36] and source == {"uri": str(processed)}
        assert tags["mlflow.data.context"] == ("training" if name == "tiny/train" else "evaluation")
        assert tags["genrec.split_fingerprint"] == fingerprint
    assert found["tiny/train"][2]["genrec.rows"] == str(4 * tiny_genrec.USERS)
    assert found["tiny/test"][2]["genrec.rows"] == str(tiny_genrec.USERS)


def test_environment_uri_wins_over_params(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    params = params_for(tmp_path)
    assert tracking.tracking_uri(params) == f"sqlite:///{tmp_path / 'env.db'}"
    assert tracking.artifact_root(params, tracking.tracking_uri(params)) == tmp_path / "mlartifacts"
    assert tracking.artifact_root(params, "http://127.0.0.1:5000") is None


def test_read_run_id_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mlflow_run.json"):
        tracking.read_run_id(tmp_path)


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_data_hashes_prefer_dvc_lock_and_fall_back_to_sha256(tmp_path):
    prompts = tmp_path / "data" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "train.jsonl").write_text("a\n")
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prompts": {"outs": [
        {"path": "data/prompts", "hash": "md5", "md5": "0123.dir", "size": 2, "nfiles": 1}]}}}))
    hashes = tracking.data_hashes([prompts, base], lock_path=lock)
    assert hashes[str(prompts)] == "md5:0123.dir"
    before = hashes[str(base)]
    assert before.startswith("sha256:") and len(before) == len("sha256:") + 64
    assert tracking.data_hashes([base], lock_path=lock)[str(base)] == before  # stable
    (base / "config.json").write_text('{"x": 1}')
    assert tracking.data_hashes([base], lock_path=lock)[str(base)] != before  # content changes it
    assert tracking.data_hashes([prompts], lock_path=tmp_path / "no.lock")[str(prompts)].startswith("sha256:")


def test_git_commit(tmp_path):
    assert tracking.git_commit(tmp_path) is None  # not a repository
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    assert tracking.git_commit(tmp_path) is None  # no commit yet
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("commit", "-q", "-m", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "f").write_text("y")
    assert tracking.git_commit(tmp_path) == head + "-dirty"
