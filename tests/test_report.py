"""Report pieces: split checks, the paired bootstrap on hand cases, per-k curves, rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec import report
from genrec.errors import DataError


def result(name: str, fingerprint: str = "abc", split: str = "test", ranks=None) -> report.ModelResult:
    metrics = {"model": name, "split_fingerprint": fingerprint, "protocol": {"split": split}, "hr_at_10": 0.1}
    return report.ModelResult(name=name, metrics_path=Path(f"reports/metrics/{name}.json"), metrics=metrics,
                              ranks=ranks)


def test_identical_outcomes_give_no_difference_and_p_one():
    a = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    test = report.paired_bootstrap(a, a.copy(), samples=500, seed=0)
    assert test["diff"] == 0.0 and test["ci95_low"] == 0.0 and test["ci95_high"] == 0.0
    assert test["p_value"] == 1.0 and test["wins"] == test["losses"] == 0


def test_clearly_better_model_gets_a_small_p_value():
    rng = np.random.default_rng(0)
    worse = (rng.random(300) < 0.1).astype(float)
    better = np.maximum(worse, (rng.random(300) < 0.4).astype(float))  # never worse, often better
    test = report.paired_bootstrap(better, worse, samples=2000, seed=0)
    assert test["diff"] == pytest.approx(better.mean() - worse.mean())
    assert 0 < test["ci95_low"] <= test["diff"] <= test["ci95_high"]
    assert test["p_value"] == pytest.approx(2 / 2001)  # no resample reverses the sign
    assert test["losses"] == 0 and test["wins"] > 50
    reverse = report.paired_bootstrap(worse, better, samples=2000, seed=0)
    assert reverse["diff"] == -test["diff"] and reverse["p_value"] == test["p_value"]


def test_a_tie_with_disagreements_is_not_significant():
    a, b = np.zeros(200), np.zeros(200)
    a[:40], b[20:60] = 1.0, 1.0  # same hit rate, 20 users each way
    test = report.paired_bootstrap(a, b, samples=2000, seed=0)
    assert test["diff"] == 0.0 and test["wins"] == test["losses"] == 20
    assert test["ci95_low"] < 0 < test["ci95_high"] and test["p_value"] > 0.5


def test_paired_tests_use_only_shared_users():
    ref = result("genrec", ranks={"u1": 1, "u2": None, "u3": 3})
    other = result("sasrec", ranks={"u1": None, "u2": None, "u4": 1})
    tests = report.paired_tests([ref, other], "genrec", ("hr_at_10",), samples=200, seed=0)
    assert tests["sasrec"]["hr_at_10"]["users"] == 2
    assert tests["sasrec"]["hr_at_10"]["diff"] == pytest.approx(0.5)
    assert report.paired_tests([other], "genrec", ("hr_at_10",), 200, 0) == {}


def test_mismatched_splits_are_refused_naming_both_files():
    with pytest.raises(DataError, match=r"sasrec\.json.*another split than .*genrec\.json"):
        report.check_same_split([result("genrec", "abc"), result("sasrec", "xyz")])
    with pytest.raises(DataError, match="another evaluated split"):
        report.check_same_split([result("genrec"), result("p5", split="valid")])
    missing = result("p5")
    del missing.metrics["split_fingerprint"]
    with pytest.raises(DataError, match=r"p5\.json.*no split_fingerprint"):
        report.check_same_split([result("genrec"), missing])
    assert report.check_same_split([result("genrec"), result("mostpop")]) == "abc"


def test_per_k_curves_are_cumulative():
    ranks = {"u1": 1, "u2": 3, "u3": None, "u4": 10}
    rows = report.per_k_curves([result("m", ranks=ranks)], max_k=10)
    assert [row["k"] for row in rows] == list(range(1, 11))
    assert [row["m_hr"] for row in rows] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.75]
    assert rows[2]["m_ndcg"] == pytest.approx((1 + 1 / np.log2(4)) / 4)


def test_paper_table_is_labelled_as_the_papers():
    lines = report.paper_table()
    assert lines[0].startswith("| dataset (paper)")
    assert any("MovieLens 25M | GenRec | 0.1034 | 0.0716 | 0.1311 | 0.0837" in line for line in lines)
