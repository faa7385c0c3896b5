"""The report stage end to end on two fake but well-formed evaluations (built with the real metrics code)."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from genrec.errors import DataError
from genrec.evaluation.metrics import integrity_metrics, ranking_metrics, target_rank
from genrec.config.params import Params
from genrec.evaluation import comparison, outputs, report
from genrec.stages import report as stage

USERS = [f"u{i:03d}" for i in range(120)]


def fake_evaluation(folder, name: str, hit_rate: float, seed: int, fingerprint: str = "f" * 64,
                    users: list[str] = USERS, **facts) -> None:
    """metrics/<name>.json and predictions/<name>.jsonl for a model that puts the target first at `hit_rate`;
    `facts` are further keys of the metrics file (P5's `index` and `leaky`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in users:
        target = f"t-{user}"
        ranked = [{"title": f"Film {user} {j}", "item_ids": [f"x-{user}-{j}"], "score": -float(j)} for j in range(10)]
        if rng.random() < hit_rate:
            ranked[int(rng.integers(0, 10))]["item_ids"] = [target]
        rows.append({"user_id": user, "target_item_id": target, "target_title": "T", "ranked": ranked})
    ranks = [target_rank([e["item_ids"] for e in r["ranked"]], r["target_item_id"]) for r in rows]
    metrics = ranking_metrics(ranks, [5, 10], 200, 0)
    metrics.update(integrity_metrics([[e["title"] for e in r["ranked"]] for r in rows], 10))
    metrics.update({"model": name, "users": len(rows), "split_fingerprint": fingerprint, "seed": 42,
                    "protocol": {"split": "test", "num_beams": 10, "exclude_history": True, "k": [5, 10],
                                 "max_users": None if users is USERS else len(users)},
                    "train_seconds": 12.0, "eval_seconds": 3.0, **facts})
    (folder / "metrics").mkdir(exist_ok=True)
    (folder / "predictions").mkdir(exist_ok=True)
    (folder / "metrics" / f"{name}.json").write_text(json.dumps(metrics))
    (folder / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    base = Params()
    return dataclasses.replace(base, tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{tmp_path}/mlflow.db"),
                               report=dataclasses.replace(base.report, paired_samples=500))


def write_split(folder):
    """The training part and catalogue `fake_evaluation`'s users and items come from: user i has i % 7 + 1
    training items and the popular `t-pop` twice; each user's target `t-<user>` was seen once, by another user."""
    rows = [(u, f"x-{u}-{j}") for i, u in enumerate(USERS) for j in range(i % 7 + 1)]
    rows += [(u, "t-pop") for u in USERS] * 2 + [(USERS[(i + 1) % len(USERS)], f"t-{u}") for i, u in enumerate(USERS)]
    items = sorted({item for _, item in rows} | {f"x-{u}-{j}" for u in USERS for j in range(10)})
    folder.mkdir(exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_parquet(folder / "train.parquet")
    pd.DataFrame({"item_id": items}).to_parquet(folder / "items.parquet")
    return folder


def run(params, tmp_path):
    return stage.run(params, metrics_dir=tmp_path / "metrics", predictions_dir=tmp_path / "predictions",
                     out_path=tmp_path / "comparison.md", figures_dir=tmp_path / "figures",
                     plots_path=tmp_path / "plots" / "per_k.csv", processed_dir=write_split(tmp_path / "processed"),
                     analysis_path=tmp_path / "analysis.json")


def test_report_renders_table_figures_curves_and_logs_to_mlflow(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1)
    fake_evaluation(tmp_path, "mostpop", hit_rate=0.1, seed=2)
    (tmp_path / "metrics" / "notes.json").write_text(json.dumps({"comment": "no ranking metrics"}))
    out = run(params, tmp_path)

    assert out["models"] == ["genrec", "mostpop"]
    text = (tmp_path / "comparison.md").read_text()
    for expected in ("| genrec | title | 120 |", "| mostpop | - | 120 |", "The paper's Table 1", "0.1311",
                     "Paired tests against genrec", "| mostpop | 120 | +0.", "p |"):
        assert expected in text
    test = out["paired_tests"]["mostpop"]["hr_at_10"]
    assert test["diff"] > 0.3 and test["p_value"] < 0.01
    assert all((tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in stage.FIGURES)
    with (tmp_path / "plots" / "per_k.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == list(range(1, 11))
    assert float(rows[-1]["genrec_hr"]) == pytest.approx(json.loads((tmp_path / "metrics" / "genrec.json").read_text())
                                                          ["hr_at_10"], abs=1e-6)

    from genrec.tracking import runs as tracking

    client = tracking.mlflow_client(params)
    runs = client.search_runs([client.get_experiment_by_name("genrec-ml-latest-small").experiment_id],
                              filter_string="tags.`genrec.family` = 'report'")
    assert len(runs) == 1
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert logged == {"report/comparison.md", "report/comparison.png", "report/per_k.png", "report/per_k.csv",
                      "report/slices.png", "report/analysis.json"}


def test_report_refuses_metrics_from_another_split(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.5, seed=1)
    fake_evaluation(tmp_path, "sasrec", hit_rate=0.5, seed=2, fingerprint="0" * 64)
    with pytest.raises(DataError, match=r"sasrec\.json.*another split than .*genrec\.json"):
        run(params, tmp_path)
    assert not (tmp_path / "comparison.md").exists() and not (tmp_path / "figures").exists()


def test_report_refuses_stale_predictions(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.5, seed=1)
    path = tmp_path / "predictions" / "genrec.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match="119 users, but .*genrec.json reports 120"):
        run(params, tmp_path)


def test_baselines_on_every_user_are_reported_on_genrecs_sample_and_on_all_users(tmp_path, params):
    sample = USERS[::3]  # GenRec decoded a seeded 40 of the 120 users; the baselines every user
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1, users=sample)
    fake_evaluation(tmp_path, "mostpop", hit_rate=0.1, seed=2)
    fake_evaluation(tmp_path, "sasrec", hit_rate=0.3, seed=3)
    out = run(params, tmp_path)

    assert out["sample"]["users"] == 40 and out["sample"]["of"] == 120
    assert out["paired_tests"]["mostpop"]["hr_at_10"]["users"] == 40
    text = (tmp_path / "comparison.md").read_text()
    assert "seeded sample of 40 of the 120 test users (eval.max_users=40, eval.seed=42)" in text
    this_run, all_users = text.split("## This run, on genrec's 40 users")[1].split("## All users")
    assert "| mostpop | - | 40 |" in this_run and "| sasrec | id | 40 |" in this_run
    assert "| mostpop | - | 120 |" not in this_run
    assert "| mostpop | - | 120 |" in all_users and "| sasrec | id | 120 |" in all_users
    assert "| genrec | title | 40 |" in all_users
    with (tmp_path / "plots" / "per_k.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    ranks = {json.loads(line)["user_id"]: json.loads(line) for line in
             (tmp_path / "predictions" / "mostpop.jsonl").read_text().splitlines()}
    hits = sum(any(e["item_ids"] == [ranks[u]["target_item_id"]] for e in ranks[u]["ranked"]) for u in sample)
    assert float(last["mostpop_hr"]) == pytest.approx(hits / 40, abs=1e-6)  # curves on the sample too


def test_item_representations_are_tested_pair_by_pair_on_the_users_each_pair_shares(tmp_path, params):
    sample = USERS[::3]  # GenRec decoded 40 of the 120 users; the others every user
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1, users=sample)
    fake_evaluation(tmp_path, "p5-random", hit_rate=0.2, seed=2, index="random", leaky=False)
    fake_evaluation(tmp_path, "p5-semantic", hit_rate=0.4, seed=3, index="semantic", leaky=False)
    fake_evaluation(tmp_path, "p5-sequential", hit_rate=0.9, seed=4, index="sequential", leaky=True)
    fake_evaluation(tmp_path, "sasrec", hit_rate=0.3, seed=5)
    fake_evaluation(tmp_path, "mostpop", hit_rate=0.1, seed=6)
    out = run(params, tmp_path)

    pairs = [(t["model"], t["against"]) for t in out["representation_tests"]]
    assert pairs == [("genrec", "sasrec"), ("p5-random", "sasrec"), ("p5-semantic", "p5-random"),
                     ("p5-semantic", "sasrec"), ("p5-sequential", "p5-random"), ("p5-sequential", "sasrec")]
    results = outputs.load_metrics(tmp_path / "metrics")
    outputs.attach_ranks(results, tmp_path / "predictions")
    metrics = ("hr_at_10", "ndcg_at_10")
    for t in out["representation_tests"]:
        pair = [r for r in results if r.name in (t["model"], t["against"])]
        expected = comparison.paired_tests(pair, t["model"], metrics, params.report.paired_samples, params.report.seed)
        assert t["tests"] == expected[t["against"]]
    by_pair = {(t["model"], t["against"]): t["tests"] for t in out["representation_tests"]}
    assert by_pair["p5-semantic", "p5-random"]["hr_at_10"]["users"] == 120  # not only genrec's 40
    assert by_pair["genrec", "sasrec"]["hr_at_10"]["users"] == 40
    assert out["paired_tests"]["p5-random"]["hr_at_10"]["users"] == 40  # the reference's tests are unchanged

    text = (tmp_path / "comparison.md").read_text()
    assert "| p5-semantic | semantic | 40 |" in text and "| p5-semantic | semantic | 120 |" in text
    assert "| p5-sequential (leaky) | sequential | 120 |" in text and report.LEAKY_NOTE in text
    section = text.split("## Item representations")[1]
    semantic = by_pair["p5-semantic", "p5-random"]
    row = (f"| p5-semantic | semantic | p5-random | random | 120 | {semantic['hr_at_10']['diff']:+.4f} "
           f"[{semantic['hr_at_10']['ci95_low']:+.4f}, {semantic['hr_at_10']['ci95_high']:+.4f}] | "
           f"{semantic['hr_at_10']['p_value']:.4f} | {semantic['ndcg_at_10']['diff']:+.4f}")
    assert row in section
    assert "| genrec | title | sasrec | id | 40 |" in section
    assert "| p5-sequential (leaky) | sequential | p5-random | random | 120 |" in section
    assert section.rstrip().endswith(report.LEAKY_NOTE)


def test_without_pairs_the_section_says_so(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1)
    fake_evaluation(tmp_path, "mostpop", hit_rate=0.1, seed=2)
    out = run(params, tmp_path)
    assert out["representation_tests"] == []
    assert "## Item representations\n\nNo representation tests" in (tmp_path / "comparison.md").read_text()


def test_slices_beyond_accuracy_metrics_and_their_runs(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1)
    fake_evaluation(tmp_path, "mostpop", hit_rate=0.1, seed=2)
    out = run(params, tmp_path)

    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["users"] == "every evaluated user" and analysis["split"] == "test"
    popularity = analysis["buckets"]["popularity"]
    # 240 t-pop + 120 target + 477 other interactions: t-pop alone makes the first 20%.
    assert popularity["head"]["items"] == 1 and popularity["head_min_interactions"] == 240
    genrec = analysis["models"]["genrec"]
    pop = genrec["slices"]["popularity"]
    # The targets t-<user> were seen once each: cold, and torso (the tail's run from the bottom, items with equal
    # counts ordered by id, ends among the 477 x-<user>-<j> items, which sort after them).
    assert (pop["head"]["users"], pop["torso"]["users"], pop["tail"]["users"], pop["cold"]["users"]) == (0, 120, 0, 120)
    ranks = outputs.read_ranks(tmp_path / "predictions" / "genrec.jsonl")
    assert pop["cold"]["hr_at_10"] == pytest.approx(sum(r is not None for r in ranks.values()) / 120)
    lengths = [r["users"] for r in analysis["buckets"]["history"].values()]
    assert sum(lengths) == 120 and len(lengths) == 4
    assert sum(genrec["slices"]["history"][name]["users"] for name in genrec["slices"]["history"]) == 120
    # Every list names 10 distinct items of its own (a hit swaps one for the user's target): 1,200 of the 1,321
    # catalogue items (1,200 x-<user>-<j>, 120 t-<user>, t-pop), each once; 121 never: Gini 121 / 1,321.
    assert genrec["beyond"]["coverage_at_10"] == pytest.approx(1200 / 1321)
    assert genrec["beyond"]["gini_at_10"] == pytest.approx(121 / 1321)
    assert genrec["predictions_sha256"] is None  # fake_evaluation records none: nothing to check
    cold = analysis["paired"]["mostpop"]["popularity.cold"]["hr_at_10"]
    assert cold["users"] == 120 and cold["diff"] > 0.3

    text = (tmp_path / "comparison.md").read_text()
    assert "## Slices: the target's popularity, the user's history" in text and "](figures/slices.png)" in text
    assert f"| genrec | n/a | {pop['torso']['hr_at_10']:.3f} [" in text
    assert "## Beyond accuracy" in text and f"| genrec | 120 | {genrec['beyond']['coverage_at_10']:.3f} |" in text

    from genrec.tracking import runs as tracking

    client = tracking.mlflow_client(params)
    experiment = client.get_experiment_by_name("genrec-ml-latest-small").experiment_id
    nested = {r.data.tags[stage.ANALYSIS_TAG]: r for r in client.search_runs(
        [experiment], filter_string="tags.`genrec.family` = 'analysis'")}
    assert set(nested) == {"genrec", "mostpop"}
    logged = nested["genrec"].data.metrics
    assert logged["test.slice.popularity.cold.hr_at_10"] == pytest.approx(pop["cold"]["hr_at_10"])
    assert logged["test.coverage_at_10"] == pytest.approx(genrec["beyond"]["coverage_at_10"])
    report_run = client.search_runs([experiment], filter_string="tags.`genrec.family` = 'report'")[0]
    assert nested["genrec"].data.tags["mlflow.parentRunId"] == report_run.info.run_id

    # With a GenRec model folder, every report logs into its training run, and later reports into the same
    # nested runs.
    with tracking.start_or_resume_run(params, run_name="genrec") as training:
        tracking.write_run_file(tmp_path / "model" / tracking.RUN_FILE, training)
    for _ in range(2):
        stage.run(params, metrics_dir=tmp_path / "metrics", predictions_dir=tmp_path / "predictions",
                  out_path=tmp_path / "comparison.md", figures_dir=tmp_path / "figures",
                  plots_path=tmp_path / "plots" / "per_k.csv", processed_dir=tmp_path / "processed",
                  analysis_path=tmp_path / "analysis.json", genrec_model_dir=tmp_path / "model")
    under = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{training.info.run_id}'")
    assert sorted(r.data.tags[stage.ANALYSIS_TAG] for r in under) == ["genrec", "mostpop"]


def test_predictions_that_are_not_their_metrics_files_evaluation_are_refused(tmp_path, params):
    fake_evaluation(tmp_path, "genrec", hit_rate=0.6, seed=1)
    metrics_path = tmp_path / "metrics" / "genrec.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "predictions_sha256": "0" * 64}))
    with pytest.raises(DataError, match=r"genrec.jsonl.*predictions_sha256 of its metrics file"):
        run(params, tmp_path)
    assert not (tmp_path / "analysis.json").exists() and not (tmp_path / "comparison.md").exists()
