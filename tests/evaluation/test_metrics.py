"""HR@k / NDCG@k on hand-computed ranks, against torchmetrics on random rankings, bootstrap and paired test, integrity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from genrec.evaluation.metrics import (bootstrap_interval, hit_ratio_at_k, integrity_metrics, metric_label, metric_names, ndcg_at_k, paired_bootstrap, parse_metric, per_user, ranking_metrics, target_rank)

RANKS = [1, 3, None, 10, 6]


def test_hand_computed_cases():
    assert hit_ratio_at_k(RANKS, 5) == pytest.approx(2 / 5)
    assert hit_ratio_at_k(RANKS, 10) == pytest.approx(4 / 5)
    assert ndcg_at_k(RANKS, 1) == pytest.approx(1 / 5)
    # rank 1 -> 1/log2(2) = 1, rank 3 -> 1/log2(4) = 0.5
    assert ndcg_at_k(RANKS, 5) == pytest.approx((1 + 0.5) / 5)
    assert ndcg_at_k(RANKS, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(11) + 1 / math.log2(7)) / 5)
    assert hit_ratio_at_k([None, None], 10) == 0.0 and ndcg_at_k([None], 10) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no users"):
        hit_ratio_at_k([], 5)
    with pytest.raises(ValueError, match="k=0"):
        ndcg_at_k([1], 0)


def test_target_rank_counts_a_shared_title_for_each_of_its_items():
    ranked = [["10"], ["20", "21"], ["30"]]
    assert target_rank(ranked, "21") == 2
    assert target_rank(ranked, "20") == 2
    assert target_rank(ranked, "99") is None


@pytest.mark.parametrize("k", [1, 5, 10])
def test_agrees_with_torchmetrics_on_random_rankings(k):
    rng = np.random.default_rng(k)
    users, items = 200, 30
    scores = rng.random((users, items))
    relevant = rng.integers(0, items, users)
    order = np.argsort(-scores, axis=1)
    ranks = [int(np.flatnonzero(order[u] == relevant[u])[0]) + 1 for u in range(users)]
    target = np.zeros((users, items), dtype=bool)
    target[np.arange(users), relevant] = True
    indexes = torch.arange(users).repeat_interleave(items)
    preds, truth = torch.tensor(scores.ravel()), torch.tensor(target.ravel())
    hit_rate = RetrievalHitRate(top_k=k)(preds, truth, indexes=indexes).item()
    ndcg = RetrievalNormalizedDCG(top_k=k)(preds, truth, indexes=indexes).item()
    assert 0 < hit_ratio_at_k(ranks, k) <= 1
    assert hit_ratio_at_k(ranks, k) == pytest.approx(hit_rate, abs=1e-6)
    assert ndcg_at_k(ranks, k) == pytest.approx(ndcg, abs=1e-6)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).random(300) < 0.2
    low, high = bootstrap_interval(values, samples=500, seed=7)
    assert (low, high) == bootstrap_interval(values, samples=500, seed=7)
    assert (low, high) != bootstrap_interval(values, samples=500, seed=8)
    assert low < values.mean() < high
    # The interval of a mean of 300 Bernoulli(0.2) is about +-1.96 * sqrt(0.16 / 300) = +-0.045.
    assert 0.06 < high - low < 0.12
    assert bootstrap_interval(np.ones(50), samples=100, seed=0) == (1.0, 1.0)


def test_identical_outcomes_give_no_difference_and_p_one():
    a = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    test = paired_bootstrap(a, a.copy(), samples=500, seed=0)
    assert test["diff"] == 0.0 and test["ci95_low"] == 0.0 and test["ci95_high"] == 0.0
    assert test["p_value"] == 1.0 and test["wins"] == test["losses"] == 0


def test_clearly_better_model_gets_a_small_p_value():
    rng = np.random.default_rng(0)
    worse = (rng.random(300) < 0.1).astype(float)
    better = np.maximum(worse, (rng.random(300) < 0.4).astype(float))  # never worse, often better
    test = paired_bootstrap(better, worse, samples=2000, seed=0)
    assert test["diff"] == pytest.approx(better.mean() - worse.mean())
    assert 0 < test["ci95_low"] <= test["diff"] <= test["ci95_high"]
    assert test["p_value"] == pytest.approx(2 / 2001)  # no resample reverses the sign
    assert test["losses"] == 0 and test["wins"] > 50
    reverse = paired_bootstrap(worse, better, samples=2000, seed=0)
    assert reverse["diff"] == -test["diff"] and reverse["p_value"] == test["p_value"]


def test_a_tie_with_disagreements_is_not_significant():
    a, b = np.zeros(200), np.zeros(200)
    a[:40], b[20:60] = 1.0, 1.0  # same hit rate, 20 users each way
    test = paired_bootstrap(a, b, samples=2000, seed=0)
    assert test["diff"] == 0.0 and test["wins"] == test["losses"] == 20
    assert test["ci95_low"] < 0 < test["ci95_high"] and test["p_value"] > 0.5


def test_bootstrap_draws_are_pinned():
    """Values computed by the code before the paired test and the interval shared `resampled_means`:
    a change to the draws (seeding, chunking, dtype) changes every recorded interval and p-value."""
    a = np.array([1, 0, 1, 1, 0, 0, 1, 0.5, 0.25, 0, 1, 0.630929753571457])
    b = np.array([0, 0, 1, 0, 1, 0, 0.5, 0.5, 0, 0, 0.386852807234541, 0])
    assert paired_bootstrap(a, b, samples=250, seed=3) == {  # 250 = two chunks of 100 and one of 50
        "users": 12, "diff": 0.249506412194743, "ci95_low": -0.021215863882407513,
        "ci95_high": 0.5115656820444184, "p_value": 0.08764940239043825, "wins": 6, "losses": 1}
    assert bootstrap_interval(a, samples=250, seed=3) == (0.29657653242559645, 0.7802775055133996)


def test_ranking_metrics_names_and_intervals():
    out = ranking_metrics(RANKS, [10, 5], samples=200, seed=0)
    assert {k for k in out if not k.startswith("ci95")} == {"hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10"}
    for name in ("hr_at_5", "ndcg_at_10"):
        assert out["ci95_low"][name] <= out[name] <= out["ci95_high"][name]


def test_integrity_counts_invalid_duplicate_and_missing_beams():
    lists = [["A", "B", None, "A"], ["C"]]  # 4 beams, then 1 of 4: 3 missing
    out = integrity_metrics(lists, num_beams=4)
    assert out["valid_beam_share"] == pytest.approx(4 / 8)
    assert out["duplicate_beam_share"] == pytest.approx(1 / 8)
    assert out["beams_returned_share"] == pytest.approx(5 / 8)


def test_ranking_metrics_values_are_hand_computed():
    """The function that computes every metrics file: ranks 1, 3, a miss and 7 at k = 5 and 10.

    HR@5 = 2/4; NDCG@5 = (1 + 1/log2 4) / 4; HR@10 = 3/4; NDCG@10 = (1 + 1/2 + 1/log2 8) / 4. Swapping HR and
    NDCG, or a k, fails here.
    """
    metrics = ranking_metrics([1, 3, None, 7], [10, 5], samples=50, seed=0)
    assert metrics["hr_at_5"] == 0.5
    assert metrics["ndcg_at_5"] == pytest.approx(0.375)
    assert metrics["hr_at_10"] == 0.75
    assert metrics["ndcg_at_10"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert [k for k in metrics if k.startswith(("hr", "ndcg"))] == list(metric_names([5, 10]))
    for name in metric_names([5, 10]):
        assert metrics["ci95_low"][name] <= metrics[name] <= metrics["ci95_high"][name]


def test_metric_names_follow_k_and_every_name_is_recomputed_per_user():
    assert metric_names([20, 1, 20]) == ("hr_at_1", "ndcg_at_1", "hr_at_20", "ndcg_at_20")
    ranks = {"a": 1, "b": 2, "c": None}
    assert per_user(ranks, ["c", "b", "a"], "hr_at_1").tolist() == [0.0, 0.0, 1.0]
    assert per_user(ranks, ["a", "b"], "ndcg_at_5").tolist() == pytest.approx([1.0, 1 / math.log2(3)])
    assert metric_label("ndcg_at_10") == "NDCG@10" and metric_label("users") == "users"


@pytest.mark.parametrize("name", ["mrr_at_10", "ndcg", "hr_at_x", "recall_at_10", "ndcg_at_"])
def test_a_metric_genrec_cannot_recompute_per_user_is_refused(name):
    """The trap of reading every unknown name as NDCG: mrr_at_10 must not silently test NDCG@10."""
    with pytest.raises(ValueError, match="unknown ranking metric"):
        per_user({"a": 1}, ["a"], name)
    with pytest.raises(ValueError, match="unknown ranking metric"):
        parse_metric(name)
