"""The table stage: one Table 1 block per dataset folder of reports/, with statistics and the paper's figures."""

from __future__ import annotations

import json

import pytest

from genrec.errors import DataError
from genrec.config.params import Params
from genrec.stages import table

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)


def write_dataset(reports, name: str, hits: list[int | None], stats: dict) -> None:
    for model, ranks in (("genrec", hits), ("mostpop", [None] * len(hits))):
        metrics = tiny_genrec.write_metrics(reports / name / "metrics" / f"{model}.json", "test", ranks)
        metrics["model"] = model
        (reports / name / "metrics" / f"{model}.json").write_text(json.dumps(metrics))
    (reports / name / "split_stats.json").write_text(json.dumps(stats))
    (reports / name / "comparison.md").write_text("# per dataset\n")


@pytest.fixture
def params(tmp_path, monkeypatch):
    """Default params with the MLflow store in tmp_path (a real SQLite store)."""
    import dataclasses

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    base = Params()
    return dataclasses.replace(base, tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{tmp_path}/mlflow.db"))


def test_one_block_per_dataset_with_statistics_models_and_the_papers_figures(tmp_path, params):
    reports = tmp_path / "reports"
    write_dataset(reports, "ml-latest-small", [1, None, 3, None], {
        "users": 4, "items": 10, "interactions": 20, "sparsity": 0.5, "dropped": {"k_core": 7, "short_users": 1}})
    write_dataset(reports, "toys-p5", [None, 2],
                  {"users": 2, "items": 5, "interactions": 8, "sparsity": 0.2, "dropped": {}})
    (reports / "figures").mkdir()  # not a dataset: no metrics/ inside
    out = tmp_path / "results" / "table1.md"
    written = table.run(params, reports_dir=reports, out_path=out)
    text = out.read_text()
    blocks = text.split("\n## ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["ml-latest-small", "toys-p5"]
    ml, toys = blocks
    assert "4 users, 10 items, 20 interactions (density 0.50000, mean sequence length 5.0)" in ml
    assert "dropped by the filters: k_core 7, short_users 1." in ml
    assert "| genrec | title | 4 | 0.5000 [" in ml and "| mostpop | - | 4 | 0.0000 [" in ml
    assert "The paper on MovieLens 25M: P5 0.0688 / 0.0464 / 0.1040 / 0.0577; GenRec 0.1034" in ml
    assert "The paper on Amazon Toys: P5 0.0239" in toys and "dropped by the filters: nothing." in toys
    assert "[toys-p5/comparison.md](../reports/toys-p5/comparison.md)" in toys  # relative to results/

    from genrec.tracking import runs as tracking  # Table 1 and each comparison.md are artifacts of a run in <prefix>-table

    client = tracking.mlflow_client(params)
    runs = client.search_runs([client.get_experiment_by_name("genrec-table").experiment_id])
    assert [r.info.run_id for r in runs] == [written["run_id"]]
    assert runs[0].data.tags["genrec.family"] == "table"
    assert runs[0].data.tags["genrec.dataset"] == "ml-latest-small,toys-p5"
    root = {a.path for a in client.list_artifacts(written["run_id"])}
    assert root == {"table1.md", "ml-latest-small", "toys-p5"}
    assert [a.path for a in client.list_artifacts(written["run_id"], "toys-p5")] == ["toys-p5/comparison.md"]
    local = client.download_artifacts(written["run_id"], "table1.md", str(tmp_path / "download"))
    assert open(local).read() == text


def test_a_sampled_dataset_shows_every_model_on_genrecs_users(tmp_path, params):
    reports = tmp_path / "reports"
    write_dataset(reports, "toys-p5", [1, None, 3, None], {"users": 4, "items": 5, "interactions": 16})
    folder = reports / "toys-p5"
    metrics = json.loads((folder / "metrics" / "genrec.json").read_text())  # genrec decoded users u0 and u1
    metrics["users"], metrics["protocol"]["max_users"], metrics["seed"] = 2, 2, 42
    (folder / "metrics" / "genrec.json").write_text(json.dumps(metrics))
    (folder / "predictions").mkdir()
    for model, users in (("genrec", {"u0": 1, "u1": None}), ("mostpop", {f"u{i}": None for i in range(4)})):
        rows = [{"user_id": u, "target_item_id": "t", "ranked": [{"item_ids": ["t" if rank == 1 else "x"]}]}
                for u, rank in users.items()]
        (folder / "predictions" / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table.run(params, reports_dir=reports, out_path=tmp_path / "table1.md")
    text = (tmp_path / "table1.md").read_text()
    assert "Every model on genrec's seeded sample of 2 of the 4 test users (eval.seed=42)" in text
    assert "| genrec | title | 2 | 0.5000 [" in text and "| mostpop | - | 2 | 0.0000 [" in text


def test_each_row_names_its_items_in_the_model_tables_order(tmp_path, params):
    reports = tmp_path / "reports"
    folder = reports / "ml-latest-small" / "metrics"
    models = {"sasrec": {}, "p5-sequential": {"index": "sequential", "leaky": True}, "mostpop": {},
              "p5-semantic": {"index": "semantic", "leaky": False}, "genrec": {},
              "p5-random": {"index": "random", "leaky": False}, "p5-tiger": {"index": "tiger", "leaky": False}}
    for model, facts in models.items():
        metrics = tiny_genrec.write_metrics(folder / f"{model}.json", "test", [1, None])
        (folder / f"{model}.json").write_text(json.dumps({**metrics, "model": model, **facts}))
    table.run(params, reports_dir=reports, out_path=tmp_path / "table1.md")
    text = (tmp_path / "table1.md").read_text()
    assert "| model | items | users |" in text
    rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ") and " | 2 | " in line]
    assert rows == [["| genrec", "title"], ["| p5-random", "random"], ["| p5-semantic", "semantic"],
                    ["| p5-sequential (leaky)", "sequential"], ["| sasrec", "id"], ["| mostpop", "-"],
                    ["| p5-tiger", "tiger"]]  # a model outside the table: its metrics file's index, after the rest
    assert "its gain over random ids is that leakage, not a result" in text


def test_no_dataset_folder_is_a_data_error(tmp_path, params):
    (tmp_path / "reports").mkdir()
    with pytest.raises(DataError, match="no <dataset>/metrics/ folders"):
        table.run(params, reports_dir=tmp_path / "reports", out_path=tmp_path / "t.md")
    assert not (tmp_path / "t.md").exists()


def test_each_block_lists_its_leakage_audits(tmp_path, params):
    reports = tmp_path / "reports"
    write_dataset(reports, "ml-latest-small", [1, None], {"users": 2, "items": 5, "interactions": 8, "sparsity": 0.2})
    write_dataset(reports, "toys-p5", [None, 2], {"users": 2, "items": 5, "interactions": 8, "sparsity": 0.2})
    (reports / "ml-latest-small" / "audit.json").write_text(json.dumps({
        "policy": "warn", "tripped": ["timestamp_ties"],
        "findings": ["timestamp ties: 1 of 2 test targets (50.0%) share their timestamp with a history item",
                     "consecutive ids: random 0 of 2 test targets (0.0%)"]}))
    out = tmp_path / "table1.md"
    table.run(params, reports_dir=reports, out_path=out)
    ml, toys = out.read_text().split("\n## ")[1:]
    assert "Leakage audits (audit.policy=warn): 1 tripped (timestamp_ties).\n\n- timestamp ties: 1 of 2" in ml
    assert "\n- consecutive ids: random 0 of 2 test targets (0.0%)\n" in ml
    assert "Leakage audits" not in toys  # no audit.json: no line
