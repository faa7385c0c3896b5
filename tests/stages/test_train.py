"""The train stage on a tiny random LLaMA and real TRL/PEFT/MLflow (SQLite in tmp_path).

One module-scoped training run backs most tests: the LoRA weights changed, the adapter reloads to the
same validation loss, the MLflow run holds params/metrics/artifacts/tags; a second run is killed
part-way in a subprocess and resumed to the same number of optimizer steps; each bad input fails
before any training.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from genrec.models.genrec import sft_data, sft_loss, sft_trainer
from genrec.tracking import runs as tracking
from genrec.errors import DataError
from genrec.io import split_fingerprint
from genrec.config.params import LoraParams, Params, TrackingParams, TrainParams, load_params, to_dict
from genrec.data.prompts import INSTRUCTIONS, PromptTemplate, format_history
from genrec.stages import train

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml); `tiny` is this module's fixture

ROOT = Path(__file__).resolve().parents[2]
TITLES = [f"{word} {n} ({1980 + n % 30})" for n in range(40)
          for word in ("Toy Story", "Heat", "American President, The", "Amélie")][:80]
TRAIN_RECORDS, VALID_RECORDS = 24, 8
# 24 records, batch 4 -> 6 optimizer steps an epoch, 2 epochs -> 12 steps.
EXPECTED_STEPS = 12


def tiny_train_params(**overrides) -> TrainParams:
    base = dict(format="instruction", seed=7, epochs=2, max_steps=None, lr_scheduler="linear", max_train_samples=None, max_valid_samples=None, batch_size=4,
                micro_batch_size=2, learning_rate=1e-2, warmup=1, max_seq_length=128, bf16=False,
                logging_steps=1, eval_steps=6, save_steps=1, save_total_limit=2,
                accelerate_profile=str(ROOT / "configs" / "accelerate" / "cpu.yaml"),
                lora=LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    base.update(overrides)
    return TrainParams(**base)


def tiny_params(tmp: Path, **train_overrides) -> Params:
    return Params(dataset="tiny", train=tiny_train_params(**train_overrides),
                  tracking=TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}"))


def write_prompts(folder: Path, n_train: int = TRAIN_RECORDS, n_valid: int = VALID_RECORDS) -> Path:
    """Records as the prompts stage writes them (template.json + train/valid.jsonl)."""
    rng = random.Random(0)
    template = PromptTemplate(max_history=6)
    folder.mkdir(parents=True)
    template.save(folder / "template.json")
    for name, n in (("train", n_train), ("valid", n_valid)):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for i in range(n):
                titles = rng.sample(TITLES, 7)
                history, target = titles[:-1], titles[-1]
                fh.write(json.dumps({
                    "user_id": f"u{i}", "target_position": 6, "instruction": rng.choice(INSTRUCTIONS),
                    "input": format_history(history, "lines"), "output": target,
                    "history_item_ids": [str(TITLES.index(t)) for t in history], "history_titles": history,
                    "target_item_id": str(TITLES.index(target))}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Backbone + prompts folders shared by the module."""
    tmp = tmp_path_factory.mktemp("tiny")
    prompts = write_prompts(tmp / "prompts")
    texts = [line for name in ("train", "valid") for line in (prompts / f"{name}.jsonl").read_text().splitlines()]
    texts += list(INSTRUCTIONS) + [PromptTemplate().template]
    return {"tmp": tmp, "base": tiny_genrec.write_backbone(tmp / "base", texts, hidden_size=64,
                                                           initializer_range=0.02, max_positions=256), "prompts": prompts}


@pytest.fixture(scope="module")
def trained(tiny):
    """One in-process training run: (params, result, out_dir)."""
    params = tiny_params(tiny["tmp"])
    out = tiny["tmp"] / "models" / "genrec"
    result = train.run(params, base_dir=tiny["base"], prompts_dir=tiny["prompts"], out_dir=out)
    return params, result, out


def test_outputs_are_complete_and_checkpoints_removed(trained, tiny):
    params, result, out = trained
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "template.json",
                 "config.json", "trainer_state.json", "mlflow_run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "template.json").read_text()) == json.loads((tiny["prompts"] / "template.json").read_text())
    modules = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(params.train.lora.target_modules)  # PEFT's set, written in one order
    config = json.loads((out / "config.json").read_text())
    assert config["params"] == to_dict(params)
    assert config["base_model"]["model_type"] == "llama"
    assert config["training"]["global_step"] == EXPECTED_STEPS == result["global_step"]
    assert config["training"]["records"] == TRAIN_RECORDS
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == result["run_id"]
    assert not train.checkpoint_dir(out).exists()
    assert [p.name for p in out.parent.iterdir()] == ["genrec"]  # no temporary leftovers


def test_lora_weights_changed_from_their_initialisation(trained, tiny):
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, set_seed

    params, _, out = trained
    saved = load_file(out / "adapter_model.safetensors")
    set_seed(params.train.seed)
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["base"]),
                           sft_trainer.lora_config(params.train.lora))
    initial = get_peft_model_state_dict(fresh)
    assert set(saved) == set(initial) and len(saved) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for name, tensor in saved.items():
        assert not torch.equal(tensor, initial[name]), name


def test_adapter_reloads_to_the_same_validation_loss(trained, tiny):
    """PeftModel.from_pretrained on the saved adapter reproduces the trained model's eval loss exactly."""
    from peft import PeftModel
    from trl import SFTTrainer

    from genrec.models.genrec.backbone import load_backbone

    params, result, out = trained
    base, tokenizer = load_backbone(tiny["base"], dtype="float32")
    model = PeftModel.from_pretrained(base, out)
    template = PromptTemplate.load(out / "template.json")
    valid, _ = sft_data.prompt_dataset(tiny["prompts"] / "valid.jsonl", template, tokenizer,
                                    params.train.max_seq_length, None, params.train.seed)
    config = sft_trainer.sft_config(params, tiny["tmp"] / "reload", num_processes=1)
    trainer = SFTTrainer(model=model, args=config, train_dataset=valid, eval_dataset=valid, processing_class=tokenizer)
    with sft_loss.completion_positions_only(True):
        reloaded = trainer.evaluate()["eval_loss"]
    assert reloaded == pytest.approx(result["eval_loss"], abs=1e-5)
    base_loss = SFTTrainer(model=load_backbone(tiny["base"], dtype="float32")[0], args=config, train_dataset=valid,
                           eval_dataset=valid,
                           processing_class=tokenizer).evaluate()["eval_loss"]
    assert base_loss - reloaded > 0.1  # the adapter matters


def test_mlflow_run_has_params_metrics_artifacts_and_tags(trained, tiny):
    from mlflow.tracking import MlflowClient

    params, result, out = trained
    client = MlflowClient(params.tracking.uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "genrec-tiny"
    assert run.data.tags["genrec.family"] == "genrec" and run.data.tags["genrec.dataset"] == "tiny"
    assert run.data.tags["genrec.git_commit"]  # HEAD (or "none" outside a repository)
    assert run.data.params["train.lora.r"] == "4"
    assert re.fullmatch(r"genrec-[\w.-]+-r4-[0-9a-f]{8}", run.info.run_name), run.info.run_name
    assert run.data.params["train.learning_rate"] == "0.01"
    assert run.data.params["data.base"].startswith("sha256:")  # no dvc.lock here: computed
    assert run.data.params["data.prompts"] == tracking.data_hashes([tiny["prompts"]])[str(tiny["prompts"])]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, EXPECTED_STEPS + 1))
    assert losses[-1].value < losses[0].value  # training loss falls
    assert {m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")} == {6, 12}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/adapter_model.safetensors", "model/template.json", "model/config.json"} <= artifacts
    assert "prompt_template.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(Path(params.tracking.uri[10:]).parent)


def test_resume_after_kill_reaches_the_same_step_in_the_same_run(trained, tiny, tmp_path):
    params_path = tmp_path / "params.yaml"
    params = tiny_params(tiny["tmp"])
    params_path.write_text(yaml.safe_dump(to_dict(params)))
    out = tmp_path / "genrec"
    ckpts = train.checkpoint_dir(out)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "genrec.cli", "train", "--params", str(params_path), "--base", str(tiny["base"]),
           "--prompts", str(tiny["prompts"]), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (ckpts / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-3 within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    killed_run = json.loads((ckpts / train.STATE_FILE).read_text())["run_id"]

    result = train.run(load_params(params_path), base_dir=tiny["base"], prompts_dir=tiny["prompts"], out_dir=out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert result["resumed_from"].startswith("checkpoint-")
    assert state["global_step"] == trained[1]["global_step"] == EXPECTED_STEPS
    assert result["run_id"] == killed_run


def _bad_run(tiny, tmp_path, params=None, base=None, prompts=None):
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        train.run(params or tiny_params(tmp_path), base_dir=base or tiny["base"],
                  prompts_dir=prompts or tiny["prompts"], out_dir=out)
    assert "\n" not in str(err.value)
    assert not out.exists() and not train.checkpoint_dir(out).exists() and not (tmp_path / "mlflow.db").exists()
    return str(err.value)


def test_model_directory_without_tokenizer(tiny, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny["base"], base, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    assert "no tokenizer" in _bad_run(tiny, tmp_path, base=base)


def test_lora_targets_absent_from_the_model(tiny, tmp_path):
    params = tiny_params(tmp_path, lora=LoraParams(target_modules=["q_proj", "query_key_value"]))
    message = _bad_run(tiny, tmp_path, params=params)
    assert "train.lora.target_modules" in message and "query_key_value" in message and "v_proj" in message


def test_accelerate_profile_that_does_not_exist(tiny, tmp_path):
    message = _bad_run(tiny, tmp_path, params=tiny_params(tmp_path, accelerate_profile="8tpu"))
    assert "train.accelerate_profile='8tpu'" in message


def test_empty_prompts_file(tiny, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(tiny["prompts"], prompts)
    (prompts / "train.jsonl").write_text("\n")
    assert "no prompt records" in _bad_run(tiny, tmp_path, prompts=prompts)


def test_resume_point_skips_other_configurations_and_half_written_checkpoints(tmp_path):
    ckpts = tmp_path / "genrec.checkpoints"
    (ckpts / "checkpoint-2").mkdir(parents=True)
    (ckpts / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpts / "checkpoint-3").mkdir()  # killed while saving: no trainer_state.json yet
    (ckpts / train.STATE_FILE).write_text(json.dumps({"fingerprint": "a", "run_id": "r"}))
    assert train.find_resume_point(ckpts, "auto", "a") == (ckpts / "checkpoint-2", "r")
    assert train.find_resume_point(ckpts, "auto", "b") == (None, None)
    assert train.find_resume_point(ckpts, "never", "a") == (None, None)
    train.prepare_checkpoint_dir(ckpts, ckpts / "checkpoint-2")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", train.STATE_FILE]
    train.prepare_checkpoint_dir(ckpts, None)
    assert list(ckpts.iterdir()) == []


def test_fingerprint_ignores_logging_but_not_training_params(tmp_path):
    hashes = {"base": "md5:1"}
    params = tiny_params(tmp_path)
    same = tiny_params(tmp_path, logging_steps=3, eval_steps=None, resume="never")
    other = tiny_params(tmp_path, learning_rate=1e-3)
    assert train.config_fingerprint(params, hashes) == train.config_fingerprint(same, hashes)
    assert train.config_fingerprint(params, hashes) != train.config_fingerprint(other, hashes)
    assert train.config_fingerprint(params, hashes) != train.config_fingerprint(params, {"base": "md5:2"})


def test_sequence_format_trains_on_the_split_and_tracks_a_learning_curve(tmp_path):
    """train.format=sequence: documents from the split, the template saved for evaluation, curve points in
    curve.csv and MLflow; the evaluate stage then ranks real titles with the line end as end marker. The run
    shows the split as its training and evaluation datasets, and the machine's use while it trained."""
    from mlflow.tracking import MlflowClient

    from genrec.config.params import EvalParams
    from genrec.stages import evaluate
    from genrec.stages import prompts as prompts_stage

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    processed = tiny_genrec.write_split(tmp_path / "processed")
    prompts_stage.run(Params(dataset="tiny"), processed_dir=processed, out_dir=tmp_path / "prompts")
    base = tiny_genrec.write_backbone(tmp_path / "base")
    params = Params(dataset="tiny", train=tiny_train_params(
        format="sequence", prompt_history=3, epochs=4, batch_size=2, micro_batch_size=2, max_seq_length=48,
        curve_steps=2, curve_users=4, eval_steps=None, save_steps=100),
        tracking=TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", system_metrics_interval=0.2),
        eval=EvalParams(batch_size=4, bootstrap_samples=50))
    out, curve_dir = tmp_path / "models" / "genrec", tmp_path / "curve"
    result = train.run(params, base_dir=base, prompts_dir=tmp_path / "prompts", processed_dir=processed,
                       out_dir=out, curve_dir=curve_dir)

    template = PromptTemplate.load(out / "template.json")
    assert template.format == "sequence" and template.max_history == 3
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["users"] == tiny_genrec.USERS and training["completion_tokens"] > 0
    steps = result["global_step"]
    assert steps == 4 * -(-training["packed_rows"] // 2)  # 4 epochs of packed rows, batch 2
    rows = (curve_dir / "curve.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["step", "tokens"]
    points = [dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:]]
    assert [int(p["step"]) for p in points] == sorted({*range(2, steps + 1, 2), steps})
    assert all(0 <= float(p["hr_at_10"]) <= 1 and int(p["users"]) == 4 for p in points)
    assert (curve_dir / "curve.png").stat().st_size > 1000
    history = MlflowClient(params.tracking.uri).get_metric_history(result["run_id"], "curve_hr_at_10")
    assert [m.step for m in history] == [int(p["step"]) for p in points]

    metrics = evaluate.run(params, base_dir=base, model_dir=out, prompts_dir=tmp_path / "prompts",
                           processed_dir=processed, metrics_path=tmp_path / "m.json",
                           predictions_path=tmp_path / "p.jsonl")
    assert metrics["users"] == tiny_genrec.USERS and metrics["valid_beam_share"] == 1.0
    train_items = {}
    for line in (tmp_path / "prompts" / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        train_items[record["user_id"]] = set(record["history_titles"])
    for line in (tmp_path / "p.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        titles = [entry["title"] for entry in prediction["ranked"]]
        assert titles and set(titles) <= set(tiny_genrec.TITLES)
        assert not set(titles) & train_items[prediction["user_id"]]  # history excluded
    run = MlflowClient(params.tracking.uri).get_run(result["run_id"])
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert {name: tags["mlflow.data.context"] for name, tags in inputs.items()} == {
        "tiny/train": "training", "tiny/test": "evaluation"}
    assert {i.dataset.digest for i in run.inputs.dataset_inputs} == {split_fingerprint(processed)[:36]}
    assert "system/cpu_utilization_percentage" in run.data.metrics  # sampled every 0.2 s while it trained

    # D3's text-free assistant: SASRec trained on the same split; a heavy weight makes its favourite title
    # (among those not excluded) every user's first recommendation, reported as genrec+sasrec.
    from dataclasses import replace

    from genrec.models.genrec.assist import SasrecAssistant
    from genrec.models.genrec.evaluation import read_catalogue
    from genrec.data.sequences import read_histories
    from genrec.stages import sasrec as sasrec_stage

    sasrec_params = replace(params, sasrec=replace(params.sasrec, max_epochs=2))
    sasrec_stage.run(sasrec_params, processed_dir=processed, model_dir=tmp_path / "sasrec",
                     metrics_path=tmp_path / "s.json", predictions_path=tmp_path / "s.jsonl")
    assisted = replace(params, eval=replace(params.eval, assistant_weight=1000.0, length_penalty=0.0))
    metrics = evaluate.run(assisted, base_dir=base, model_dir=out, prompts_dir=tmp_path / "prompts",
                           processed_dir=processed, metrics_path=tmp_path / "ma.json",
                           predictions_path=tmp_path / "pa.jsonl", assistant_dir=tmp_path / "sasrec")
    assert metrics["model"] == "genrec+sasrec" and metrics["protocol"]["assistant_weight"] == 1000.0
    # Every model of the report is a run of the dataset's experiment: genrec+sasrec beside GenRec's own run.
    client = MlflowClient(params.tracking.uri)
    runs = {r.info.run_name: r for r in client.search_runs([run.info.experiment_id])}
    assert {"sasrec", "genrec+sasrec"} <= set(runs)
    assisted_run = runs["genrec+sasrec"]
    assert assisted_run.data.tags["genrec.family"] == "genrec+sasrec"
    assert assisted_run.data.tags["genrec.genrec_run"] == result["run_id"] != assisted_run.info.run_id
    assert assisted_run.data.metrics["test.hr_at_10"] == metrics["hr_at_10"]
    catalogue = read_catalogue(processed / "items.parquet")
    assistant = SasrecAssistant(tmp_path / "sasrec", catalogue)
    histories = read_histories(processed, before="test")
    for line in (tmp_path / "pa.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        history = histories[prediction["user_id"]]
        probs = assistant.title_probs([history])[0]
        probs[catalogue.covered_titles(history)] = -1
        assert prediction["ranked"][0]["title"] == catalogue.titles[int(probs.argmax())]


def test_sequence_format_needs_the_split(tiny, tmp_path):
    params = tiny_params(tiny["tmp"], format="sequence")
    with pytest.raises(DataError, match="--processed"):
        train.run(params, base_dir=tiny["base"], prompts_dir=tiny["prompts"], out_dir=tmp_path / "out")


@pytest.mark.parametrize("profile", ["cpu2", "fsdp_cpu2"])  # DDP and FSDP2, both over gloo
def test_two_processes_train_like_one_with_twice_the_accumulation(trained, tiny, tmp_path, profile):
    """2 CPU processes (gloo) x micro-batch 2, accumulation 1 == 1 process x micro-batch 2, accumulation 2:
    the same 4 records make each optimizer step, so the logged losses and the adapters agree closely; one
    MLflow run, one adapter, no checkpoints left, written by the main process only."""
    import mlflow
    from safetensors.torch import load_file

    params = tiny_params(tmp_path, accelerate_profile=str(ROOT / "configs" / "accelerate" / f"{profile}.yaml"))
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(params)))
    out = tmp_path / "genrec"
    proc = tiny_genrec.accelerate_launch(params.train.accelerate_profile, "-m", "genrec.cli", "train", "--params",
                                         str(params_path), "--base", str(tiny["base"]), "--prompts", str(tiny["prompts"]),
                                         "--out", str(out), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    one_state = json.loads((trained[2] / "trainer_state.json").read_text())
    two_state = json.loads((out / "trainer_state.json").read_text())
    assert two_state["global_step"] == one_state["global_step"] == EXPECTED_STEPS
    one_loss = [h["loss"] for h in one_state["log_history"] if "loss" in h]
    two_loss = [h["loss"] for h in two_state["log_history"] if "loss" in h]
    assert len(one_loss) == len(two_loss) == EXPECTED_STEPS
    assert max(abs(a - b) for a, b in zip(one_loss, two_loss)) < 1e-3
    one_w, two_w = load_file(trained[2] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert one_w.keys() == two_w.keys()
    diff = max(float((one_w[k] - two_w[k]).abs().max()) for k in one_w)
    scale = max(float(one_w[k].abs().max()) for k in one_w)
    assert diff < 1e-3 * scale
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["processes"] == 2
    assert not train.checkpoint_dir(out).exists()
    runs = mlflow.MlflowClient(params.tracking.uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(params.tracking.uri).search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_two_processes_resume_after_kill(trained, tiny, tmp_path):
    """SIGKILL to both processes after a checkpoint; a second 2-process launch resumes it in the same run."""
    import psutil

    params = tiny_params(tmp_path, accelerate_profile=str(ROOT / "configs" / "accelerate" / "cpu2.yaml"))
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(params)))
    out = tmp_path / "genrec"
    ckpts = train.checkpoint_dir(out)
    args = ("-m", "genrec.cli", "train", "--params", str(params_path), "--base", str(tiny["base"]),
            "--prompts", str(tiny["prompts"]), "--out", str(out))
    proc = subprocess.Popen(tiny_genrec.launch_command(params.train.accelerate_profile, *args), cwd=tmp_path,
                            env=tiny_genrec.launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (ckpts / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-3 within 300 s"
        time.sleep(0.02)
    # torchrun starts its workers in their own sessions: kill every descendant, not just the launcher's group.
    tree = psutil.Process(proc.pid)
    victims = [*tree.children(recursive=True), tree]
    for victim in victims:
        victim.kill()
    psutil.wait_procs(victims, timeout=30)
    proc.wait()
    assert not out.exists()
    killed_run = json.loads((ckpts / train.STATE_FILE).read_text())["run_id"]

    done = tiny_genrec.accelerate_launch(params.train.accelerate_profile, *args, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert state["global_step"] == trained[1]["global_step"] == EXPECTED_STEPS
    assert config["training"]["resumed_from"].startswith("checkpoint-")
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == killed_run


@pytest.mark.parametrize("profile", ["cpu2", "fsdp_cpu2"])
def test_two_processes_run_the_default_recipe_with_a_learning_curve(tmp_path, profile):
    """The default recipe (sequence format, bf16 auto, a learning curve) on 2 CPU processes (DDP, FSDP2):
    every process takes part in the curve (DDP: a share of the users each; FSDP: every user, in step), so
    it neither hangs nor copies the model, and its points equal those of one process with twice the
    accumulation (the same 4 rows make each step)."""
    import mlflow

    from genrec.config.params import EvalParams
    from genrec.stages import prompts as prompts_stage

    processed = tiny_genrec.write_split(tmp_path / "processed")
    prompts_stage.run(Params(dataset="tiny"), processed_dir=processed, out_dir=tmp_path / "prompts")
    base = tiny_genrec.write_backbone(tmp_path / "base")

    def params_in(folder: Path, profile_name: str) -> Params:
        return Params(dataset="tiny", train=tiny_train_params(
            format="sequence", prompt_history=3, epochs=4, batch_size=4, micro_batch_size=2, max_seq_length=48,
            bf16="auto", curve_steps=2, curve_users=tiny_genrec.USERS, eval_steps=None, save_steps=100,
            accelerate_profile=str(ROOT / "configs" / "accelerate" / f"{profile_name}.yaml")),
            tracking=TrackingParams(uri=f"sqlite:///{folder / 'mlflow.db'}"),
            eval=EvalParams(batch_size=2, bootstrap_samples=50))

    one = tmp_path / "one"
    one.mkdir()
    train.run(params_in(one, "cpu"), base_dir=base, prompts_dir=tmp_path / "prompts", processed_dir=processed,
              out_dir=one / "genrec", curve_dir=one / "curve")

    two = tmp_path / "two"
    two.mkdir()
    params = params_in(two, profile)
    (two / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    proc = tiny_genrec.accelerate_launch(params.train.accelerate_profile, "-m", "genrec.cli", "train", "--params",
                                         str(two / "params.yaml"), "--base", str(base), "--prompts",
                                         str(tmp_path / "prompts"), "--processed", str(processed),
                                         "--out", str(two / "genrec"), "--curve", str(two / "curve"), cwd=two)
    assert proc.returncode == 0, proc.stderr[-4000:]

    config = json.loads((two / "genrec" / "config.json").read_text())["training"]
    assert config["processes"] == 2 and config["bf16"] == sft_trainer.precision("auto", False)[0]
    one_curve = (one / "curve" / "curve.csv").read_text().splitlines()
    two_curve = (two / "curve" / "curve.csv").read_text().splitlines()
    columns = one_curve[0].split(",")
    pick = [columns.index(c) for c in columns if c.startswith(("step", "hr_", "ndcg_", "users"))]
    assert len(one_curve) > 2
    assert [[r.split(",")[i] for i in pick] for r in two_curve] == [[r.split(",")[i] for i in pick] for r in one_curve]
    client = mlflow.MlflowClient(params.tracking.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "curve_hr_at_10")
    assert len(history) == len(two_curve) - 1  # logged once a point, by the main process


def test_a_failure_on_the_main_process_ends_every_process_with_its_error(tiny, tmp_path):
    """Checking the saved adapter fails on the main process only (a learning rate so small that no lora_B
    weight moves off its zero initialisation): the other process stops at once with the main process's
    error instead of waiting in a collective until the timeout, and the MLflow run ends FAILED."""
    import mlflow

    params = tiny_params(tmp_path, accelerate_profile=str(ROOT / "configs" / "accelerate" / "cpu2.yaml"),
                         epochs=1, learning_rate=1e-46, process_timeout=900)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(params)))
    began = time.monotonic()
    proc = tiny_genrec.accelerate_launch(params.train.accelerate_profile, "-m", "genrec.cli", "train", "--params",
                                         str(params_path), "--base", str(tiny["base"]), "--prompts", str(tiny["prompts"]),
                                         "--out", str(tmp_path / "genrec"), cwd=tmp_path)
    assert proc.returncode != 0
    assert time.monotonic() - began < 300  # seconds, not the 900 s timeout
    assert "PeerFailure: the main process failed: RuntimeError: " in proc.stderr, proc.stderr[-3000:]
    assert "still equal their initialisation" in proc.stderr
    client = mlflow.MlflowClient(params.tracking.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
