"""A new model through the plug-in interface alone: it is trained, ranked, written, logged, and reported.

A random recommender defined here (nothing in genrec names it) goes through `evaluate_recommender`; the report
stage then lists it beside MostPop with its paired test, and the dataset's MLflow experiment holds a run of
each model.
"""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np

import tiny_genrec
from genrec.evaluation import scoring
from genrec.evaluation.harness import evaluate_recommender
from genrec.models.mostpop import MostPop
from genrec.models.table import MODELS, order_key
from genrec.stages import report as report_stage


class RandomRanker:
    """Scores every item at random (seeded): a `genrec.models.interface.Recommender` in a dozen lines."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.seed, self.num_items = seed, 0

    def fit(self, data: scoring.SplitData) -> dict:
        self.num_items = data.num_items
        return {"random_seed": self.seed}

    def rank(self, histories, k, exclude_history):
        scores = np.random.default_rng(self.seed).random((len(histories), self.num_items + 1))
        return scoring.top_k(scores, histories, k, exclude_history)


def test_a_recommender_added_through_the_interface_appears_in_the_report_and_the_runs_table(tmp_path):
    split = tiny_genrec.write_split(tmp_path / "processed")
    params = tiny_genrec.params(tmp_path)
    params = dataclasses.replace(params, report=dataclasses.replace(params.report, reference="mostpop",
                                                                    paired_samples=200))
    for model in (MostPop(), RandomRanker(seed=3)):
        written = evaluate_recommender(model, params, processed_dir=split,
                                       metrics_path=tmp_path / "metrics" / f"{model.name}.json",
                                       predictions_path=tmp_path / "predictions" / f"{model.name}.jsonl")
        assert written["users"] == tiny_genrec.USERS and written["model"] == model.name
    metrics = json.loads((tmp_path / "metrics" / "random.json").read_text())
    assert metrics["random_seed"] == 3 and metrics["seed"] == params.eval.seed and metrics["protocol"]["ranking"] == "full catalogue, scored"
    assert metrics["split_fingerprint"] and metrics["valid_beam_share"] == 1.0

    result = report_stage.run(params, metrics_dir=tmp_path / "metrics", predictions_dir=tmp_path / "predictions",
                              out_path=tmp_path / "comparison.md", figures_dir=tmp_path / "figures",
                              plots_path=tmp_path / "per_k.csv", processed_dir=split,
                              analysis_path=tmp_path / "analysis.json")
    assert result["models"] == ["mostpop", "random"]  # the table's order, then names it does not know
    assert set(result["paired_tests"]["random"]) == {"hr_at_10", "ndcg_at_10"}
    text = (tmp_path / "comparison.md").read_text()
    assert "| random | 6 |" in text and "| random | 6 | " in text.split("## Paired tests against mostpop")[1]
    assert "random_hr" in (tmp_path / "per_k.csv").read_text().splitlines()[0]
    assert set(json.loads((tmp_path / "analysis.json").read_text())["models"]) == {"mostpop", "random"}

    client = mlflow.MlflowClient(params.tracking.uri)
    experiment = client.get_experiment_by_name(f"{params.tracking.experiment_prefix}-{params.dataset}")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"mostpop", "random"} <= set(runs)
    assert runs["random"].data.tags["genrec.family"] == "random"
    assert runs["random"].data.metrics["test.ndcg_at_10"] == metrics["ndcg_at_10"]


def test_the_model_table_orders_known_models_first():
    assert list(MODELS)[0] == "genrec" and list(MODELS)[1].startswith("genrec-")  # a family's rows together
    names = sorted(["zeta", "mostpop", "alpha", "genrec", "p5-random"], key=order_key)
    assert names == ["genrec", "p5-random", "mostpop", "alpha", "zeta"]
    assert all(entry.kind in ("generative", "scoring") for entry in MODELS.values())
    assert [e.name for e in MODELS.values() if e.promotable] == ["genrec"]
