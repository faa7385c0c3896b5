"""Report pieces: split checks, paired tests on shared users, per-k curves, rendering."""

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
