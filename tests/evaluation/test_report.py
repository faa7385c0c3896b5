"""Report pieces: split checks, paired tests on shared users, per-k curves, rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec.evaluation import comparison, outputs, report
from genrec.errors import DataError


def result(name: str, fingerprint: str = "abc", split: str = "test", ranks=None) -> outputs.ModelResult:
    metrics = {"model": name, "split_fingerprint": fingerprint, "protocol": {"split": split}, "hr_at_10": 0.1}
    return outputs.ModelResult(name=name, metrics_path=Path(f"reports/metrics/{name}.json"), metrics=metrics,
                              ranks=ranks)


def test_paired_tests_use_only_shared_users():
    ref = result("genrec", ranks={"u1": 1, "u2": None, "u3": 3})
    other = result("sasrec", ranks={"u1": None, "u2": None, "u4": 1})
    tests = comparison.paired_tests([ref, other], "genrec", ("hr_at_10",), samples=200, seed=0)
    assert tests["sasrec"]["hr_at_10"]["users"] == 2
    assert tests["sasrec"]["hr_at_10"]["diff"] == pytest.approx(0.5)
    assert comparison.paired_tests([other], "genrec", ("hr_at_10",), 200, 0) == {}


def test_mismatched_splits_are_refused_naming_both_files():
    with pytest.raises(DataError, match=r"sasrec\.json.*another split than .*genrec\.json"):
        outputs.check_same_split([result("genrec", "abc"), result("sasrec", "xyz")])
    with pytest.raises(DataError, match="another evaluated split"):
        outputs.check_same_split([result("genrec"), result("p5-random", split="valid")])
    missing = result("p5-random")
    del missing.metrics["split_fingerprint"]
    with pytest.raises(DataError, match=r"p5-random\.json.*no split_fingerprint"):
        outputs.check_same_split([result("genrec"), missing])
    assert outputs.check_same_split([result("genrec"), result("mostpop")]) == "abc"


def test_per_k_curves_are_cumulative():
    ranks = {"u1": 1, "u2": 3, "u3": None, "u4": 10}
    rows = comparison.per_k_curves([result("m", ranks=ranks)], max_k=10)
    assert [row["k"] for row in rows] == list(range(1, 11))
    assert [row["m_hr"] for row in rows] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.75]
    assert rows[2]["m_ndcg"] == pytest.approx((1 + 1 / np.log2(4)) / 4)


def test_paper_table_is_labelled_as_the_papers():
    lines = report.paper_table()
    assert lines[0].startswith("| dataset (paper)")
    assert any("MovieLens 25M | GenRec | 0.1034 | 0.0716 | 0.1311 | 0.0837" in line for line in lines)


def test_every_model_is_restricted_to_the_references_sample_with_recomputed_intervals():
    from genrec.evaluation.metrics import ranking_metrics

    everyone = {f"u{i}": (1 if i % 4 == 0 else None) for i in range(40)}
    sample = {u: everyone[u] for u in list(everyone)[::4]}  # the reference decoded 10 of the 40 users
    ref = result("genrec", ranks={u: 2 for u in sample})
    ref.metrics.update({"seed": 7, "protocol": {"split": "test", "k": [5, 10], "max_users": 10}})
    base = result("mostpop", ranks=everyone)
    base.metrics.update({"users": 40, "valid_beam_share": 1.0})
    restricted, info = comparison.on_reference_users([ref, base], "genrec", samples=100, seed=3)
    assert restricted[0] is ref
    mostpop = restricted[1]
    assert set(mostpop.ranks) == set(sample) and mostpop.metrics["users"] == 10
    expected = ranking_metrics(list(sample.values()), [5, 10], 100, 3)  # the evaluations' own code
    assert mostpop.metrics["hr_at_10"] == expected["hr_at_10"] == 1.0  # every sampled user was a hit
    assert mostpop.metrics["ci95_low"] == expected["ci95_low"] and mostpop.metrics["valid_beam_share"] is None
    assert base.metrics["users"] == 40 and base.metrics["hr_at_10"] == 0.1  # the all-users result is untouched
    assert info == {"reference": "genrec", "users": 10, "of": 40, "seed": 7, "max_users": 10, "short": {}}
    text = report.sample_statement(info, 100)
    assert "seeded sample of 10 of the 40 test users (eval.max_users=10, eval.seed=7)" in text


def test_no_restriction_without_a_sample_and_a_short_model_is_named():
    same = {"u1": 1, "u2": None}
    ref, other = result("genrec", ranks=same), result("p5-random", ranks=dict(same))
    assert comparison.on_reference_users([ref, other], "genrec", 100, 0) == ([ref, other], None)
    assert comparison.on_reference_users([other], "genrec", 100, 0) == ([other], None)  # no reference
    partial = result("sasrec", ranks={"u1": 1, "u3": 1})  # lacks u2, has u3 beyond the sample
    restricted, info = comparison.on_reference_users([ref, partial], "genrec", 100, 0)
    assert set(restricted[1].ranks) == {"u1"} and info["short"] == {"sasrec": 1}
    assert "sasrec lacks 1 of its users" in report.sample_statement(info, 100)


def test_a_models_items_come_from_the_model_table_then_its_metrics_file():
    assert [comparison.representation(result(name)) for name in ("genrec", "p5-semantic", "sasrec")] == [
        "title", "semantic", "id"]
    assert comparison.representation(result("mostpop")) == "-"  # in the table, names no items
    unknown = result("p5-tiger")
    unknown.metrics["index"] = "tiger"
    assert comparison.representation(unknown) == "tiger" and comparison.representation(result("zeta")) == "-"


def test_representation_pairs_follow_family_defaults_and_the_sasrec_anchor():
    names = ["genrec", "genrec+sasrec", "p5-random", "p5-semantic", "p5-sequential", "sasrec", "mostpop"]
    assert comparison.representation_pairs(names) == [
        ("genrec", "sasrec", "generative vs SASRec"), ("genrec+sasrec", "sasrec", "generative vs SASRec"),
        ("p5-random", "sasrec", "generative vs SASRec"),
        ("p5-semantic", "p5-random", "family default"), ("p5-semantic", "sasrec", "generative vs SASRec"),
        ("p5-sequential", "p5-random", "family default"), ("p5-sequential", "sasrec", "generative vs SASRec")]
    # a pair needs both of its models: no p5-random, no sasrec
    assert comparison.representation_pairs(["genrec", "p5-semantic", "mostpop"]) == []


def test_representation_tests_are_paired_tests_on_each_pairs_shared_users():
    p5 = result("p5-random", ranks={f"u{i}": (1 if i % 3 == 0 else None) for i in range(30)})
    semantic = result("p5-semantic", ranks={f"u{i}": (2 if i % 2 == 0 else None) for i in range(5, 30)})
    sasrec = result("sasrec", ranks={f"u{i}": (1 if i % 5 == 0 else None) for i in range(30)})
    genrec = result("genrec", ranks={f"u{i}": 1 for i in range(10)})  # a sample: its pairs use its users
    metrics = ("hr_at_10", "ndcg_at_10")
    tests = comparison.representation_tests([genrec, p5, semantic, sasrec], metrics, samples=300, seed=4)
    assert [(t["model"], t["against"]) for t in tests] == [
        ("genrec", "sasrec"), ("p5-random", "sasrec"), ("p5-semantic", "p5-random"), ("p5-semantic", "sasrec")]
    for t in tests:
        pair = [r for r in (genrec, p5, semantic, sasrec) if r.name in (t["model"], t["against"])]
        assert t["tests"] == comparison.paired_tests(pair, t["model"], metrics, 300, 4)[t["against"]]
    by_pair = {(t["model"], t["against"]): t["tests"] for t in tests}
    assert by_pair["p5-semantic", "p5-random"]["hr_at_10"]["users"] == 25
    assert by_pair["genrec", "sasrec"]["hr_at_10"]["users"] == 10
    assert by_pair["genrec", "sasrec"]["hr_at_10"]["diff"] == pytest.approx(1 - 2 / 10)  # the model minus the other


def test_the_results_table_names_each_models_items_and_marks_a_leaky_index():
    leaky = result("p5-sequential")
    leaky.metrics.update(index="sequential", leaky=True)
    lines = report.results_table([result("genrec"), result("p5-random"), leaky, result("mostpop")])
    assert lines[0].startswith("| model | items | users |")
    rows = [line.split(" | ")[:2] for line in lines[2:6]]
    assert rows == [["| genrec", "title"], ["| p5-random", "random"], ["| p5-sequential (leaky)", "sequential"],
                    ["| mostpop", "-"]]
    assert lines[-1] == report.LEAKY_NOTE and "leakage" in lines[-1]
    assert report.LEAKY_NOTE not in report.results_table([result("genrec"), result("p5-random")])


def test_predictions_are_read_with_their_lists_and_refused_when_not_their_metrics_files(tmp_path):
    import hashlib
    import json

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"user_id": "u1", "target_item_id": 7, "ranked": [{"item_ids": [8]}, {"item_ids": [7, 9]}]})
                    + "\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert outputs.read_predictions(path, digest) == {"u1": ("7", [["8"], ["7", "9"]])}
    assert outputs.read_ranks(path) == {"u1": 2}
    with pytest.raises(DataError, match="predictions_sha256 of its metrics file"):
        outputs.read_predictions(path, "0" * 64)
    path.write_text('{"user_id": "u1"}\n')
    with pytest.raises(DataError, match="row 1"):
        outputs.read_predictions(path)
