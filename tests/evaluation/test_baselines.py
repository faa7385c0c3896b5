"""genrec.baselines and genrec.models.sasrec.model: protocol pieces, and both models beat random ranking on synthetic data.

One file for both: they share the synthetic splits built here.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.evaluation import scoring as baselines
from genrec.models.sasrec import model as sasrec
from genrec.errors import DataError
from genrec.io import fingerprint, sha256_file, split_fingerprint
from genrec.config.params import Params
from genrec.stages import mostpop
from genrec.stages import sasrec as sasrec_stage

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)

NUM_ITEMS = 100
SEQUENCE_LENGTH = 10


def write_split(folder, sequences: list[list[int]]) -> None:
    """The split of integer sequences: users u000, u001..., items i000...i099 titled "Item <n>"."""
    tiny_genrec.write_split(folder, {f"u{u:03d}": [f"i{item:03d}" for item in seq] for u, seq in enumerate(sequences)},
                            titles={f"i{i:03d}": f"Item {i}" for i in range(NUM_ITEMS)})


def cyclic_sequences(users: int, seed: int) -> list[list[int]]:
    """Each user walks the items in order from a random start: the next item is always current + 1."""
    starts = np.random.default_rng(seed).integers(0, NUM_ITEMS, size=users)
    return [[(int(s) + j) % NUM_ITEMS for j in range(SEQUENCE_LENGTH)] for s in starts]


def popular_sequences(users: int, seed: int) -> list[list[int]]:
    """Items drawn without replacement with Zipf-like popularity, in no particular order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, NUM_ITEMS + 1)
    return [list(rng.choice(NUM_ITEMS, size=SEQUENCE_LENGTH, replace=False, p=weights / weights.sum()))
            for _ in range(users)]


def random_hr_at_10() -> float:
    """Expected HR@10 of a random ranking: 10 of the items the user does not have yet."""
    return 10 / (NUM_ITEMS - (SEQUENCE_LENGTH - 1))


def small_params(**overrides) -> Params:
    defaults = {"max_len": 12, "hidden": 32, "batch_size": 32, "learning_rate": 0.01, "max_epochs": 30,
                "patience": 30, "dropout": 0.1, "bf16": False}
    params = Params()
    return dataclasses.replace(params, eval=dataclasses.replace(params.eval, bootstrap_samples=100),
                               sasrec=dataclasses.replace(params.sasrec, **{**defaults, **overrides}))


def test_read_split_codes_items_and_histories(tmp_path):
    write_split(tmp_path, [[3, 1, 4, 1 + 4, 9], [2, 7, 1, 8]])
    data = baselines.read_split(tmp_path)
    assert data.users == ["u000", "u001"]
    assert data.item_ids[data.train[0] - 1].tolist() == ["i003", "i001", "i004"]
    assert data.item_ids[data.valid - 1].tolist() == ["i005", "i001"]
    histories, targets = baselines.eval_cases(data, "test", np.array([1]))
    assert data.item_ids[histories[0] - 1].tolist() == ["i002", "i007", "i001"]
    assert data.item_ids[targets - 1].tolist() == ["i008"]


def test_read_split_refuses_an_item_outside_the_catalogue(tmp_path):
    write_split(tmp_path, [[1, 2, 3]])
    pd.DataFrame({"user_id": ["u000"], "item_id": ["nope"], "timestamp": [1], "position": [0]}).to_parquet(
        tmp_path / "train.parquet", index=False)
    with pytest.raises(DataError, match="'nope' is not in items.parquet"):
        baselines.read_split(tmp_path)


def test_top_k_skips_padding_and_history_and_breaks_ties_by_code():
    scores = np.array([[9.0, 1.0, 5.0, 5.0, 7.0, 0.0]])
    codes, values = baselines.top_k(scores, [np.array([4])], 3, exclude_history=True)
    assert codes[0].tolist() == [2, 3, 1]
    assert values[0].tolist() == [5.0, 5.0, 1.0]
    codes, _ = baselines.top_k(scores, [np.array([4])], 3, exclude_history=False)
    assert codes[0].tolist() == [4, 2, 3]
    codes, _ = baselines.top_k(scores, [np.array([1, 2, 3, 4])], 3, exclude_history=True)
    assert codes[0].tolist() == [5]  # fewer candidates than k: a shorter list


def test_training_windows_cover_every_training_position_once():
    sequences = [np.arange(1, 12), np.array([5, 6])]
    inputs, targets = sasrec.training_windows(sequences, max_len=4)
    predicted = sorted(int(t) for t in targets[targets > 0])
    assert predicted == sorted(list(range(2, 12)) + [6])
    for x, y in zip(inputs, targets):  # the input at t + 1 is the target at t
        real = y[:-1] > 0
        assert np.all(x[1:][real] == y[:-1][real]) and np.all((x > 0) == (y > 0))


def test_sasrec_training_is_seeded(tmp_path):
    write_split(tmp_path, cyclic_sequences(20, seed=0))
    data = baselines.read_split(tmp_path)
    params = small_params(max_epochs=2)
    first, _ = sasrec.train_sasrec(data, params.sasrec, exclude_history=True)
    second, _ = sasrec.train_sasrec(data, params.sasrec, exclude_history=True)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture(autouse=True)
def own_mlflow_store(tmp_path, monkeypatch):
    """The scoring stages log an MLflow run each: into tmp_path's store (tracking.uri is relative)."""
    monkeypatch.chdir(tmp_path)


def test_mostpop_beats_random_on_popular_items(tmp_path):
    write_split(tmp_path / "split", popular_sequences(200, seed=1))
    metrics = mostpop.run(small_params(), processed_dir=tmp_path / "split", metrics_path=tmp_path / "m.json",
                          predictions_path=tmp_path / "p.jsonl")
    assert metrics["hr_at_10"] > 2 * random_hr_at_10()
    assert metrics["model"] == "mostpop" and metrics["valid_beam_share"] == 1.0


def test_a_scoring_model_is_a_run_of_the_dataset_experiment(tmp_path):
    import mlflow

    write_split(tmp_path / "split", popular_sequences(50, seed=1))
    params = small_params()
    uri = f"sqlite:///{tmp_path / 'own.db'}"  # absolute: MLflow caches a store by its URI text
    params = dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, uri=uri))
    written = mostpop.run(params, processed_dir=tmp_path / "split", metrics_path=tmp_path / "m.json",
                          predictions_path=tmp_path / "p.jsonl")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"{params.tracking.experiment_prefix}-{params.dataset}")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "mostpop" and run.data.tags["genrec.family"] == "mostpop"
    assert run.data.metrics["test.hr_at_10"] == written["hr_at_10"]
    assert run.data.params["eval.num_beams"] == str(params.eval.num_beams)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval/test")} == {"eval/test/m.json",
                                                                                     "eval/test/p.jsonl"}


def test_sasrec_beats_random_and_mostpop_on_sequential_data(tmp_path):
    split = tmp_path / "split"
    write_split(split, cyclic_sequences(80, seed=2))
    params = small_params()
    metrics = sasrec_stage.run(params, processed_dir=split, model_dir=tmp_path / "model",
                               metrics_path=tmp_path / "sasrec.json", predictions_path=tmp_path / "sasrec.jsonl")
    floor = mostpop.run(params, processed_dir=split, metrics_path=tmp_path / "mostpop.json",
                        predictions_path=tmp_path / "mostpop.jsonl")
    assert metrics["hr_at_10"] > 0.8 > 2 * random_hr_at_10()
    assert metrics["hr_at_10"] > floor["hr_at_10"] + 0.3

    written = json.loads((tmp_path / "sasrec.json").read_text())
    assert written["split_fingerprint"] == split_fingerprint(split) == floor["split_fingerprint"]
    # What each ranked from: SASRec's saved folder; MostPop, which has no weights, the training part and catalogue.
    assert written["model_sha256"] == fingerprint(tmp_path / "model")
    assert floor["model_sha256"] == fingerprint(split / "train.parquet", split / "items.parquet")
    assert written["predictions_sha256"] == sha256_file(tmp_path / "sasrec.jsonl")
    expected = {"hr_at_5", "ndcg_at_10", "ci95_low", "ci95_high", "train_seconds", "eval_seconds", "protocol"}
    assert expected <= set(written)
    rows = [json.loads(line) for line in (tmp_path / "sasrec.jsonl").read_text().splitlines()]
    assert len(rows) == written["users"] == 80
    assert {"user_id", "target_item_id", "target_title", "ranked"} == set(rows[0])
    assert len(rows[0]["ranked"]) == params.eval.num_beams

    # The saved model ranks exactly as the trained one did.
    model, config = sasrec.load_sasrec(tmp_path / "model")
    assert config["split_fingerprint"] == written["split_fingerprint"] and len(config["item_ids"]) == NUM_ITEMS
    data = baselines.read_split(split)
    histories, _ = baselines.eval_cases(data, "test", np.arange(len(data.users)))
    codes, _ = sasrec.rank_with_sasrec(model, histories, 10, True)
    assert [data.item_ids[c - 1].tolist() for c in codes] == [[e["item_ids"][0] for e in r["ranked"]] for r in rows]
