"""P5 train + evaluate end to end on a tiny synthetic split, on one-code and multi-code item indexes; the batched
code-trie search against HF generate; refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.models.p5 import model as p5
from genrec.errors import DataError
from genrec.io import fingerprint
from genrec.indexing.codes import ItemCodes, random_codes
from genrec.config.params import EvalParams, P5Params, Params, PromptsParams, TrackingParams
from genrec.models.p5 import ranking as p5_ranking
from genrec.decoding.trie import build_title_trie
from genrec.stages import p5_evaluate, p5_train

N_ITEMS, N_USERS = 30, 60


def write_cycle_split(folder) -> None:
    """Every user walks a stretch of one cycle of items, so the next item follows from the last one."""
    rng = np.random.default_rng(0)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(N_USERS):
        first, length = rng.integers(N_ITEMS), rng.integers(5, 12)
        for pos in range(length):
            name = "test" if pos == length - 1 else "valid" if pos == length - 2 else "train"
            rows[name].append({"user_id": f"u{u:02d}", "item_id": str(100 + (first + pos) % N_ITEMS),
                               "timestamp": 1000 + pos, "position": pos})
    folder.mkdir(parents=True)
    for name, records in rows.items():
        pd.DataFrame(records).astype({"timestamp": "int64", "position": "int64"}).to_parquet(folder / f"{name}.parquet")
    items = [str(100 + i) for i in range(N_ITEMS)]
    pd.DataFrame({"item_id": items, "title": [f"Film {i} (2001)" for i in items]}).to_parquet(folder / "items.parquet")


def two_level_codes() -> ItemCodes:
    """A hand-made 2-level index (items 100..129 as (i // 6, i % 6)): the shape of a semantic index."""
    return ItemCodes("semantic", {str(100 + i): (i // 6, i % 6) for i in range(N_ITEMS)}, (5, 6))


def tiny_params(tmp, indexing="random", **eval_overrides) -> Params:
    return Params(prompts=PromptsParams(train_targets="all"),
                  tracking=TrackingParams(uri=f"sqlite:///{tmp}/mlflow.db"),
                  eval=EvalParams(bootstrap_samples=50, batch_size=8, **eval_overrides),
                  p5=P5Params(indexing=indexing, d_model=32, d_ff=64, num_layers=1, num_heads=2, epochs=12,
                              batch_size=16, learning_rate=0.005, logging_steps=5))


@pytest.fixture(scope="module", params=["random", "semantic"])
def trained(request, tmp_path_factory):
    """(folder, training result) of a P5 on a one-code index (random) and on a two-level one (semantic)."""
    tmp = tmp_path_factory.mktemp(f"p5-{request.param}")
    write_cycle_split(tmp / "processed")
    codes = random_codes([str(100 + i) for i in range(N_ITEMS)], 0) if request.param == "random" else two_level_codes()
    codes.save(tmp / "index")
    result = p5_train.run(tiny_params(tmp, request.param), processed_dir=tmp / "processed", index_dir=tmp / "index",
                          model_dir=tmp / "model")
    return tmp, result


def evaluate(tmp, params=None, name="test"):
    return p5_evaluate.run(params or tiny_params(tmp, ItemCodes.load(tmp / "index").method),
                           processed_dir=tmp / "processed", model_dir=tmp / "model",
                           metrics_path=tmp / f"{name}.json", predictions_path=tmp / f"{name}.jsonl")


def test_train_writes_a_labelled_checkpoint(trained):
    tmp, result = trained
    model_dir = tmp / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "codes.json", p5.META_FILE, "mlflow_run.json"):
        assert (model_dir / name).exists(), name
    meta = json.loads((model_dir / p5.META_FILE).read_text())
    method = ItemCodes.load(tmp / "index").method
    assert meta["backbone"] == p5.SCRATCH_LABEL and meta["indexing"] == method
    assert meta["index_depth"] == (1 if method == "random" else 2)
    assert ItemCodes.load(model_dir) == ItemCodes.load(tmp / "index")  # the codes travel with the model
    assert meta["architecture"]["d_model"] == 32 and meta["max_history"] == 10
    train = pd.read_parquet(tmp / "processed" / "train.parquet")
    assert result["examples"] == (train.groupby("user_id").size() - 1).sum()  # train_targets all: positions >= 1
    assert result["valid_loss"] < np.log(N_ITEMS)  # below a uniform guess over the items
    assert not list(tmp.glob(".model.*"))  # nothing half-written left beside it


def test_evaluate_writes_genrec_format_and_beats_random(trained):
    tmp, _ = trained
    metrics = evaluate(tmp)
    written = json.loads((tmp / "test.json").read_text())
    method = ItemCodes.load(tmp / "index").method
    assert written["model"] == f"p5-{method}" and written["backbone"] == p5.SCRATCH_LABEL
    assert written["index"] == method and written["protocol"]["max_new_tokens"] == written["index_depth"] + 1
    assert written["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert written["users"] == N_USERS and len(written["split_fingerprint"]) == 64
    assert written["model_sha256"] == fingerprint(tmp / "model")  # the checkpoint folder evaluated
    for key in ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10"):
        assert 0 <= written["ci95_low"][key] <= written[key] <= written["ci95_high"][key] <= 1
    assert written["valid_beam_share"] == 1.0 and written["duplicate_beam_share"] == 0.0
    assert written["train_seconds"] > 0 and written["eval_seconds"] > 0 and written["protocol"]["num_beams"] == 10
    # Random guessing: 5 of about 25 allowed items. The cycle is learnable, so P5 must do far better.
    assert metrics["hr_at_5"] > 0.6
    lines = [json.loads(line) for line in (tmp / "test.jsonl").read_text().splitlines()]
    assert len(lines) == N_USERS and set(lines[0]) == {"user_id", "target_item_id", "target_title", "ranked"}
    history = pd.concat([pd.read_parquet(tmp / "processed" / f"{n}.parquet") for n in ("train", "valid")])
    owned = history.groupby("user_id")["item_id"].agg(set)
    for line in lines:
        assert len(line["ranked"]) == 10
        assert set(line["ranked"][0]) == {"title", "item_ids", "score"}
        scores = [entry["score"] for entry in line["ranked"]]
        assert scores == sorted(scores, reverse=True)
        assert not owned[line["user_id"]] & {entry["item_ids"][0] for entry in line["ranked"]}  # history excluded
    evaluate(tmp, name="again")
    assert (tmp / "again.jsonl").read_text() == (tmp / "test.jsonl").read_text()  # deterministic


def test_metrics_land_in_the_training_run(trained):
    from mlflow.tracking import MlflowClient

    tmp, result = trained
    evaluate(tmp)
    run = MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_run(result["run_id"])
    assert run.data.tags["genrec.family"] == "p5" and run.data.tags["genrec.dataset"] == "ml-latest-small"
    assert run.data.tags["genrec.backbone"] == p5.SCRATCH_LABEL
    assert run.data.tags["genrec.index"] == run.data.params["index"] == ItemCodes.load(tmp / "index").method
    assert "p5.loss" in run.data.metrics and "test.hr_at_10" in run.data.metrics
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                for i in run.inputs.dataset_inputs}
    assert contexts == {"ml-latest-small/train": "training", "ml-latest-small/test": "evaluation"}


def test_user_sample_matches_the_evaluate_stage(trained):
    from genrec.evaluation.outputs import sample_users

    tmp, _ = trained
    evaluate(tmp, tiny_params(tmp, ItemCodes.load(tmp / "index").method, max_users=7), name="sample")
    users = [json.loads(line)["user_id"] for line in (tmp / "sample.jsonl").read_text().splitlines()]
    assert users == sample_users([f"u{u:02d}" for u in range(N_USERS)], 7, 42)


def load_trained(tmp):
    """(model, tokenizer, [items, depth] code token ids, item words) of the fixture's checkpoint."""
    model, tokenizer = p5_ranking.load_model(tmp / "model", "auto")
    codes = ItemCodes.load(tmp / "model")
    items = [str(100 + i) for i in range(N_ITEMS)]
    return model, tokenizer, p5.code_token_ids(tokenizer, codes, items, tmp), p5.item_words(codes, items, tmp)


def test_batched_code_search_equals_hf_generate(trained):
    """The batched trie search returns HF generate's beams (items and scores), exclusions included."""
    tmp, _ = trained
    model, tokenizer, code_ids, words = load_trained(tmp)
    rng = np.random.default_rng(1)
    texts = [p5.build_prompt(p5.PHRASINGS[i % 5], f"u{i:02d}", rng.choice(N_ITEMS, 6), words) for i in range(6)]
    prompts = tokenizer(texts)["input_ids"]
    # Up to 15 of 30 items excluded; user 5 loses a whole first-level code's items (0..5) in the two-level index.
    excluded = [sorted(rng.choice(N_ITEMS, size=i * 3, replace=False).tolist()) for i in range(5)] + [list(range(6))]
    trie = build_title_trie(code_ids.tolist(), tokenizer.eos_token_id)
    for length_penalty in (1.0, 0.0):
        direct = p5_ranking.rank_constrained(model, prompts, trie, excluded, 10, length_penalty,
                                             tokenizer.pad_token_id)
        generated = p5_ranking.rank_generate(model, prompts, code_ids, excluded, 10, length_penalty,
                                             tokenizer.pad_token_id, tokenizer.eos_token_id)
        for user, (d, g) in enumerate(zip(direct, generated)):
            assert len(d) == 10 and [i for i, _, _ in d] == [i for i, _, _ in g]
            np.testing.assert_allclose([s for _, s, _ in d], [s for _, s, _ in g], rtol=1e-4, atol=1e-5)
            assert not set(excluded[user]) & {i for i, _, _ in d}
            assert all(tokens == code_ids[i].tolist() for i, _, tokens in d)  # a beam spells its item's codes


def test_a_beam_is_always_an_item(trained):
    """Constrained to the trie, no beam is a non-item, even where the model prefers code tuples no item has."""
    tmp, _ = trained
    model, tokenizer, code_ids, words = load_trained(tmp)
    kept = list(range(0, N_ITEMS, 7))  # a sparse catalogue: most code tuples name nothing
    trie = build_title_trie(code_ids[kept].tolist(), tokenizer.eos_token_id)
    prompts = tokenizer([p5.build_prompt(p5.PHRASINGS[0], "u00", [3, 4, 5], words)])
    beams = p5_ranking.rank_constrained(model, prompts["input_ids"], trie, None, 10, 1.0, tokenizer.pad_token_id)[0]
    assert sorted(i for i, _, _ in beams) == list(range(len(kept)))  # every leaf, and nothing else


def test_foreign_checkpoint_is_refused(trained):
    tmp, _ = trained
    params = tiny_params(tmp, ItemCodes.load(tmp / "index").method)
    with pytest.raises(DataError, match="trained on dataset 'ml-latest-small', evaluating 'ml-1m'"):
        evaluate(tmp, dataclasses.replace(params, dataset="ml-1m"), name="foreign")
    other = tmp / "other"
    write_cycle_split(other)
    test = pd.read_parquet(other / "test.parquet")
    test.loc[0, "timestamp"] += 1
    test.to_parquet(other / "test.parquet")
    with pytest.raises(DataError, match="retrain P5 on this split"):
        p5_evaluate.run(params, processed_dir=other, model_dir=tmp / "model",
                        metrics_path=tmp / "x.json", predictions_path=tmp / "x.jsonl")
    assert not (tmp / "x.json").exists()


def test_catalogue_not_covered_by_the_index_is_refused(trained, tmp_path):
    tmp, _ = trained
    grown = tmp_path / "grown"
    write_cycle_split(grown)  # the same split files: same fingerprint
    items = pd.read_parquet(grown / "items.parquet")
    pd.concat([items, pd.DataFrame({"item_id": ["999"], "title": ["New (2020)"]})]).to_parquet(grown / "items.parquet")
    with pytest.raises(DataError, match="1 catalogue items have no codes"):
        p5_evaluate.run(tiny_params(tmp, ItemCodes.load(tmp / "index").method), processed_dir=grown, model_dir=tmp / "model",
                        metrics_path=tmp_path / "x.json", predictions_path=tmp_path / "x.jsonl")


def test_pretrained_t5_path_with_a_local_folder(trained, tmp_path):
    """The `t5-small` code path (from_pretrained, item tokens added, embeddings resized), offline: a saved T5."""
    tmp, _ = trained
    params = tiny_params(tmp, ItemCodes.load(tmp / "index").method)
    params = dataclasses.replace(params, p5=dataclasses.replace(params.p5, backbone=str(tmp / "model"), epochs=1))
    p5_train.run(params, processed_dir=tmp / "processed", index_dir=tmp / "index", model_dir=tmp_path / "warm")
    meta = json.loads((tmp_path / "warm" / p5.META_FILE).read_text())
    assert meta["backbone"] == "model" and meta["backbone_source"] == str(tmp / "model")
    assert meta["architecture"] == json.loads((tmp / "model" / p5.META_FILE).read_text())["architecture"]
    metrics = p5_evaluate.run(params, processed_dir=tmp / "processed", model_dir=tmp_path / "warm",
                              metrics_path=tmp_path / "m.json", predictions_path=tmp_path / "p.jsonl")
    assert metrics["backbone"] == "model" and metrics["hr_at_5"] > 0.6  # it starts from the trained weights


def test_pickled_weights_are_refused(trained, tmp_path):
    """A checkpoint with only pytorch_model.bin (a pickle) is never loaded."""
    import shutil

    import torch

    tmp, _ = trained
    pickled = tmp_path / "pickled"
    shutil.copytree(tmp / "model", pickled)
    model, _ = p5_ranking.load_model(pickled, "auto")
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(DataError, match="pickled.*no model.safetensors"):
        p5_ranking.load_model(pickled, "auto")


def test_an_index_of_another_method_is_refused(trained, tmp_path):
    tmp, _ = trained
    method = ItemCodes.load(tmp / "index").method
    other = "semantic" if method == "random" else "random"
    with pytest.raises(DataError, match=f"holds the '{method}' index but p5.indexing is '{other}'"):
        p5_train.run(tiny_params(tmp, other), processed_dir=tmp / "processed", index_dir=tmp / "index",
                     model_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()
