"""The evaluate stage end to end on a tiny random LLaMA, a LoRA adapter and real MLflow (SQLite in tmp)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from genrec.errors import DataError
from genrec.config.params import EvalParams, Params, TrackingParams
from genrec.data.prompts import INSTRUCTIONS, PromptTemplate, format_history
from genrec.models.genrec import evaluation
from genrec.stages import evaluate
from genrec.tracking.runs import data_hashes

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

TITLES = [f"{word} {n} ({1980 + n})" for n in range(12) for word in ("Heat", "Toy Story", "President, The")]
SHARED = "Hamlet (2000)"  # carried by two items, as 5 titles are in ml-latest-small
USERS = 6
TIMING = ("decode_seconds", "users_per_s", "eval_seconds")


def write_adapter(folder: Path, base: Path, template: PromptTemplate) -> Path:
    """A LoRA adapter with non-zero B (so it changes the model) and the files `genrec train` writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    peft.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    template.save(folder / "template.json")
    # As genrec.stages.train.backbone_info records it: the count includes the injected LoRA layers.
    (folder / "config.json").write_text(json.dumps({"base_model": {
        "path": str(base), "hash": data_hashes([base])[str(base)], "model_type": "llama",
        "num_parameters": peft.get_base_model().num_parameters(),
        "trainable_parameters": peft.get_nb_trainable_parameters()[0]}}))
    return folder


def write_users(tmp: Path, items: pd.DataFrame, template: PromptTemplate, lengths: list[int], seed: int):
    """The split (processed/) and the test prompt records (prompts/) of one user a sequence length in `lengths`."""
    rng = random.Random(seed)
    processed, prompts = tmp / "processed", tmp / "prompts"
    processed.mkdir()
    prompts.mkdir()
    items.to_parquet(processed / "items.parquet")
    rows = {"train": [], "valid": [], "test": []}
    records = []
    for u, length in enumerate(lengths):
        seq = rng.sample(list(items["item_id"]), length)
        for name, part in (("train", seq[:-2]), ("valid", seq[-2:-1]), ("test", seq[-1:])):
            rows[name] += [{"user_id": str(u), "item_id": i} for i in part]
        history = [items["title"][int(i)] for i in seq[:-1]][-template.max_history:]
        records.append({"user_id": str(u), "target_position": length - 1,
                        "instruction": INSTRUCTIONS[u % len(INSTRUCTIONS)],
                        "input": format_history(history, template.history_format), "output": items["title"][int(seq[-1])],
                        "history_item_ids": seq[-1 - len(history):-1], "history_titles": history,
                        "target_item_id": seq[-1]})
    for name, part in rows.items():
        pd.DataFrame(part).to_parquet(processed / f"{name}.parquet")
    (prompts / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    template.save(prompts / "template.json")
    return processed, prompts, records, rows


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Split, prompt records, backbone and adapter folders shared by the module's tests."""
    tmp = tmp_path_factory.mktemp("eval")
    items = pd.DataFrame({"item_id": [str(i) for i in range(len(TITLES) + 2)], "title": TITLES + [SHARED, SHARED]})
    template = PromptTemplate(max_history=5)
    processed, prompts, records, rows = write_users(tmp, items, template, [9] * USERS, seed=0)
    texts = TITLES + [SHARED] + list(INSTRUCTIONS) + [template.template]
    base = tiny.write_backbone(tmp / "base", texts, hidden_size=64)
    return {"tmp": tmp, "processed": processed, "prompts": prompts, "base": base, "records": records,
            "rows": rows, "items": items, "adapter": write_adapter(tmp / "adapter", base, template)}


@pytest.fixture(scope="module")
def crowd(world, tmp_path_factory) -> dict:
    """`world`'s backbone and adapter, 48 users whose histories hold 1 to 5 titles: prompts of many lengths."""
    tmp = tmp_path_factory.mktemp("crowd")
    lengths = [random.Random(u).randint(2, 9) for u in range(48)]
    processed, prompts, records, rows = write_users(tmp, world["items"], PromptTemplate(max_history=5), lengths, 1)
    return {**world, "tmp": tmp, "processed": processed, "prompts": prompts, "records": records, "rows": rows}


def params(tmp: Path, **eval_overrides) -> Params:
    return Params(dataset="tiny", tracking=TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}"),
                  eval=replace(EvalParams(batch_size=4, bootstrap_samples=200), **eval_overrides))


def run(world, out: Path, p: Params | None = None, model_dir=None, **paths) -> dict:
    kwargs = dict(base_dir=world["base"], model_dir=model_dir, prompts_dir=world["prompts"],
                  processed_dir=world["processed"], metrics_path=out / "metrics.json",
                  predictions_path=out / "predictions.jsonl")
    kwargs.update(paths)
    return evaluate.run(p or params(out), **kwargs)


def read_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_constrained_run_writes_valid_lists_and_is_reproducible(world, tmp_path):
    result = run(world, tmp_path / "a")
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics == {k: v for k, v in result.items() if not k.endswith("_path")}
    for name in ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10"):
        assert 0 <= metrics["ci95_low"][name] <= metrics[name] <= metrics["ci95_high"][name] <= 1
    assert metrics["users"] == USERS and metrics["valid_beam_share"] == 1.0
    assert metrics["duplicate_beam_share"] == 0.0 and metrics["users_without_candidates"] == 0
    assert metrics["shared_titles"] == 1 and metrics["protocol"]["constrained"] is True
    assert metrics["device"] == ("cuda" if torch_cuda() else "cpu") and metrics["processes"] == 1
    predictions = read_predictions(tmp_path / "a" / "predictions.jsonl")
    owned = {}
    for name in ("train", "valid"):
        for row in world["rows"][name]:
            owned.setdefault(row["user_id"], set()).add(row["item_id"])
    for line in predictions:
        assert len(line["ranked"]) == 10
        scores = [entry["score"] for entry in line["ranked"]]
        assert scores == sorted(scores, reverse=True)
        for entry in line["ranked"]:
            assert entry["title"] in TITLES + [SHARED]
            assert not set(entry["item_ids"]) <= owned[line["user_id"]]  # history excluded
            if entry["title"] == SHARED:
                assert entry["item_ids"] == [str(len(TITLES)), str(len(TITLES) + 1)]

    run(world, tmp_path / "b")
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert {k: v for k, v in again.items() if k not in TIMING} == {k: v for k, v in metrics.items() if k not in TIMING}
    assert read_predictions(tmp_path / "b" / "predictions.jsonl") == predictions


def test_adapter_changes_the_lists_and_logs_into_its_mlflow_run(world, tmp_path):
    from genrec.tracking import runs as tracking

    p = params(tmp_path)
    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    with tracking.start_or_resume_run(p, run_name="train") as active:
        tracking.write_run_file(adapter / tracking.RUN_FILE, active)
    run(world, tmp_path / "bare", p)
    run(world, tmp_path / "lora", p, model_dir=adapter)
    assert read_predictions(tmp_path / "bare" / "predictions.jsonl") != \
        read_predictions(tmp_path / "lora" / "predictions.jsonl")
    client = tracking.mlflow_client(p)
    logged = client.get_run(active.info.run_id)
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert logged.data.metrics["test.hr_at_10"] == pytest.approx(metrics["hr_at_10"])
    assert logged.data.metrics["test.ci95_high.ndcg_at_10"] == pytest.approx(metrics["ci95_high"]["ndcg_at_10"])
    artifacts = {a.path for a in client.list_artifacts(active.info.run_id, "eval/test")}
    assert artifacts == {"eval/test/metrics.json", "eval/test/predictions.jsonl"}
    (evaluated,) = logged.inputs.dataset_inputs  # the test part of the split, as the run's evaluation dataset
    assert evaluated.dataset.name == f"{p.dataset}/test"
    assert evaluated.dataset.digest == metrics["split_fingerprint"][:36]
    assert {t.key: t.value for t in evaluated.tags}["mlflow.data.context"] == "evaluation"


def test_a_model_whose_run_is_in_another_store_logs_to_a_new_run(world, tmp_path):
    """An adapter trained against another tracking store: its metrics are written and logged to a run of their
    own (tagged with the model's run id), not a traceback."""
    from genrec.tracking import runs as tracking

    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    elsewhere = params(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with tracking.start_or_resume_run(elsewhere, run_name="train") as active:
        tracking.write_run_file(adapter / tracking.RUN_FILE, active)
    p = params(tmp_path)
    metrics = run(world, tmp_path / "lora", p, model_dir=adapter)
    client = tracking.mlflow_client(p)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags.get("genrec.model_run") for r in runs] == [active.info.run_id]
    assert runs[0].data.metrics["test.hr_at_10"] == pytest.approx(metrics["hr_at_10"])


def test_unconstrained_mode_counts_invalid_beams(world, tmp_path):
    metrics = run(world, tmp_path, params(tmp_path, constrained=False, max_new_tokens=6, num_beams=5, k=[5]))
    assert 0 <= metrics["valid_beam_share"] < 1  # a random model rarely spells a whole title
    assert metrics["protocol"]["invalid_beams"] == "misses" and "hr_at_5" in metrics
    for line in read_predictions(tmp_path / "predictions.jsonl"):
        for entry in line["ranked"]:
            assert (entry["title"] is None) == ("text" in entry)


def test_long_prompts_are_truncated_and_counted(world, tmp_path):
    metrics = run(world, tmp_path, params(tmp_path, max_prompt_tokens=40, max_users=3))
    assert metrics["users"] == 3 and metrics["prompts_truncated"] == 3


def test_user_with_every_title_excluded_is_counted_not_fatal(world, tmp_path):
    processed = tmp_path / "processed"
    processed.mkdir()
    for name in ("items", "valid", "test"):
        (processed / f"{name}.parquet").write_bytes((world["processed"] / f"{name}.parquet").read_bytes())
    train = pd.concat([pd.DataFrame(world["rows"]["train"]),
                       pd.DataFrame({"user_id": "0", "item_id": world["items"]["item_id"]})])
    train.to_parquet(processed / "train.parquet")
    metrics = run(world, tmp_path, processed_dir=processed)
    assert metrics["users_without_candidates"] == 1 and metrics["users"] == USERS
    first = read_predictions(tmp_path / "predictions.jsonl")[0]
    assert first["user_id"] == "0" and first["ranked"] == []


def test_adapter_from_another_backbone_is_refused_by_name(world, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    config = json.loads((adapter / "config.json").read_text())
    config["base_model"].update(path="models/other-base", hash="sha256:" + "0" * 64)
    (adapter / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"models/other-base.*" + str(world["base"]).replace("/", ".")):
        run(world, tmp_path, model_dir=adapter)
    assert not (tmp_path / "metrics.json").exists()


def test_backbone_copy_with_another_hash_kind_is_accepted_by_shape(world, tmp_path):
    """A registry copy of the backbone has no dvc.lock md5: the check falls back to type and size."""
    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    config = json.loads((adapter / "config.json").read_text())
    config["base_model"].update(path="models/base", hash="md5:" + "0" * 32)
    (adapter / "config.json").write_text(json.dumps(config))
    run(world, tmp_path, model_dir=adapter)
    assert (tmp_path / "metrics.json").exists()
    config["base_model"]["num_parameters"] += 1
    (adapter / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="another backbone"):
        run(world, tmp_path, model_dir=adapter)


def test_failed_run_leaves_the_old_metrics_whole(world, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "template.json").write_text((world["prompts"] / "template.json").read_text())
    (prompts / "test.jsonl").write_text('{"user_id": "1"}\n')
    (tmp_path / "metrics.json").write_text('{"old": true}\n')
    with pytest.raises(DataError, match="missing keys"):
        run(world, tmp_path, prompts_dir=prompts)
    assert (tmp_path / "metrics.json").read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "prompts"]


def test_empty_catalogue_is_refused(world, tmp_path):
    processed = tmp_path / "processed"
    processed.mkdir()
    world["items"].iloc[:0].to_parquet(processed / "items.parquet")
    with pytest.raises(DataError, match="catalogue is empty"):
        run(world, tmp_path, processed_dir=processed)


def test_unconstrained_beams_match_titles_exactly_after_whitespace_normalisation(world):
    from transformers import AutoTokenizer

    from genrec.decoding.beam_search import Hypothesis
    from genrec.decoding.trie import Catalogue

    tokenizer = AutoTokenizer.from_pretrained(world["base"])
    catalogue = Catalogue.from_items(world["items"])
    ids = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    hyps = [Hypothesis(ids(f"{SHARED}  "), -1.0, None), Hypothesis(ids("Heat 3"), -2.0, None)]
    first, second = evaluation.ranked_entries(hyps, catalogue, tokenizer, constrained=False)
    assert first == {"title": SHARED, "item_ids": [str(len(TITLES)), str(len(TITLES) + 1)], "score": -1.0}
    assert second == {"title": None, "item_ids": [], "score": -2.0, "text": "Heat 3"}


def test_pickled_adapter_weights_are_refused(world, tmp_path):
    """PEFT would load adapter_model.bin (a pickle) when the safetensors file is missing; genrec refuses."""
    import torch
    from safetensors.torch import load_file

    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match="no adapter_model.safetensors"):
        run(world, tmp_path, model_dir=adapter)
    assert not (tmp_path / "metrics.json").exists()


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launch(root: Path, profile: str, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of configs/accelerate/<profile>.yaml with `args` (`tiny.accelerate_launch`)."""
    return tiny.accelerate_launch(root / "configs" / "accelerate" / f"{profile}.yaml", *args)


# 48 users of prompts of many lengths in batches of 4: 12 batches, 6 a process, each with the padding one process
# gives it; 6 users in one batch of 16: the second process idles.
@pytest.mark.parametrize("users, batch_size", [("crowd", 4), ("world", 16)])
def test_two_processes_give_the_single_process_lists(request, tmp_path, root, users, batch_size):
    """`accelerate launch` with 2 CPU processes (gloo): users sharded, lists gathered, files written once."""
    import yaml

    from genrec.config.params import to_dict

    world = request.getfixturevalue(users)
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: a matmul's sums in the same order, to the bit
    try:
        run(world, one, params(one, batch_size=batch_size), model_dir=world["adapter"])
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(params(two, batch_size=batch_size))))
    proc = launch(root, "cpu2", "-m", "genrec.cli", "evaluate", "--params", str(tmp_path / "params.yaml"),
                  "--base", str(world["base"]), "--model", str(world["adapter"]), "--prompts", str(world["prompts"]),
                  "--processed", str(world["processed"]), "--metrics", str(two / "metrics.json"),
                  "--predictions", str(two / "predictions.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    single, double = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert (single["users"], single["processes"], double["processes"]) == (len(world["records"]), 1, 2)
    ignored = (*TIMING, "processes")
    assert {k: v for k, v in double.items() if k not in ignored} == {k: v for k, v in single.items() if k not in ignored}
    assert sorted(p.name for p in two.iterdir()) == ["metrics.json", "predictions.jsonl"]  # written once, no leftovers


def test_the_process_group_waits_eval_process_timeout(tmp_path, root):
    """Both processes' group has the configured timeout (1234 s: not the 1800 s gloo would have without one)."""
    script = tmp_path / "group.py"
    script.write_text("import pathlib, sys, torch\n"
                      "from genrec.models.genrec.evaluation import processes\n"
                      "from genrec.models.processes import group_timeout\n"
                      "state = processes(torch.device('cpu'), int(sys.argv[1]))\n"
                      "seconds = group_timeout().total_seconds()\n"
                      "pathlib.Path(sys.argv[2], f'rank{state.process_index}').write_text(f'{seconds:.0f}')\n")
    proc = launch(root, "cpu2", str(script), "1234", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["1234", "1234"]


def test_spread_gives_the_cpu_lists_without_a_gpu(world, tmp_path):
    """eval.device=spread loads the backbone with device_map=auto over the GPUs; without CUDA, on the CPU."""
    if torch_cuda():
        pytest.skip("compares with the CPU, where spread loads without a GPU")
    for device in ("cpu", "spread"):
        run(world, tmp_path / device, params(tmp_path / device, device=device), model_dir=world["adapter"])
    assert (tmp_path / "spread" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "cpu" / "predictions.jsonl").read_bytes()


def test_spread_under_several_processes_is_refused_naming_both_keys(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError) as err:
        run(world, tmp_path, params(tmp_path, device="spread", accelerate_profile="cpu2"))
    message = str(err.value)
    assert "eval.device=spread" in message and "eval.accelerate_profile=cpu2 launched 2 processes" in message
    assert "\n" not in message


def test_an_accelerate_profile_that_does_not_exist_is_refused(world, tmp_path):
    with pytest.raises(DataError, match=r"eval.accelerate_profile='8tpu': configs/accelerate/8tpu.yaml does not exist"):
        run(world, tmp_path, params(tmp_path, accelerate_profile="8tpu"))


def test_the_metrics_name_the_adapter_the_split_and_their_predictions(world, tmp_path):
    from genrec.io import fingerprint, sha256_file, split_fingerprint
    from genrec.tracking import registry

    tuned = run(world, tmp_path / "lora", model_dir=world["adapter"])
    assert tuned["model_sha256"] == registry.adapter_hash(world["adapter"])  # what the registry version is tagged
    assert tuned["split_fingerprint"] == split_fingerprint(world["processed"])
    assert tuned["predictions_sha256"] == sha256_file(tmp_path / "lora" / "predictions.jsonl")
    bare = run(world, tmp_path / "bare")
    assert bare["model_sha256"] == fingerprint(world["base"])


def dvc(args: list[str], cwd: Path) -> str:
    from conftest import tool_env

    result = subprocess.run(["dvc", *args], cwd=cwd, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_hand_run_evaluation_leaves_the_stage_record_and_becomes_a_nested_run(world, tmp_path, root):
    """`dvc repro` (real DVC) evaluates into the training run; a hand-run evaluation of another protocol, even on
    the same file names, is a run nested under it; the training run keeps the stage's metrics and artifacts."""
    import yaml
    from conftest import tool_env

    from genrec.config.params import to_dict
    from genrec.tracking import runs as tracking

    repo = tmp_path / "repo"
    repo.mkdir()
    p = params(repo, accelerate_profile=str(root / "configs" / "accelerate" / "cpu.yaml"))
    (repo / "params.yaml").write_text(yaml.safe_dump(to_dict(p)))
    adapter = repo / "adapter"
    shutil.copytree(world["adapter"], adapter)
    with tracking.start_or_resume_run(p, run_name="train") as active:
        tracking.write_run_file(adapter / tracking.RUN_FILE, active)
    command = ["genrec", "evaluate", "--params", "params.yaml", "--base", str(world["base"]), "--model", "adapter",
               "--prompts", str(world["prompts"]), "--processed", str(world["processed"]),
               "--metrics", "metrics/genrec.json", "--predictions", "predictions/genrec.jsonl"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": " ".join(command), "outs": ["predictions/genrec.jsonl"], "metrics": ["metrics/genrec.json"]}}}))
    dvc(["init", "--no-scm", "-q"], repo)
    dvc(["repro", "-q"], repo)
    stage = (repo / "metrics" / "genrec.json").read_text()
    by_hand = subprocess.run([*command[:-4], "--set", "eval.max_users=3", "--metrics", "hand/genrec.json",
                              "--predictions", "hand/genrec.jsonl"], cwd=repo, env=tool_env(),
                             capture_output=True, text=True)
    assert by_hand.returncode == 0, by_hand.stderr

    client = tracking.mlflow_client(p)
    trained = client.get_run(active.info.run_id)
    assert trained.data.metrics["test.users"] == USERS  # the stage's, not the 3 users of the hand-run
    assert trained.data.metrics["test.hr_at_10"] == json.loads(stage)["hr_at_10"]
    assert trained.data.tags["genrec.eval.test.stage"] == "evaluate"  # DVC's DVC_STAGE
    assert json.loads(trained.data.tags["genrec.eval.test.record"])["protocol.max_users"] is None
    logged = client.download_artifacts(active.info.run_id, "eval/test/genrec.json", str(tmp_path / "download"))
    assert Path(logged).read_text() == stage  # the artifact of the same name is still the stage's
    [nested] = client.search_runs([trained.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{active.info.run_id}'")
    assert nested.data.metrics["test.users"] == 3 and nested.data.tags["genrec.eval.differs"] == "protocol.max_users"
    assert nested.data.tags["genrec.family"] == "evaluation" and nested.data.params["eval.max_users"] == "3"
