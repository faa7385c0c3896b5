"""The table stage: one Table 1 block per dataset folder of reports/, with statistics and the paper's figures."""

from __future__ import annotations

import json

import pytest

from genrec.errors import DataError
from genrec.params import Params
from genrec.stages import table

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)


def write_dataset(reports, name: str, hits: list[int | None], stats: dict) -> None:
    for model, ranks in (("genrec", hits), ("mostpop", [None] * len(hits))):
        metrics = tiny_genrec.write_metrics(reports / name / "metrics" / f"{model}.json", "test", ranks)
        metrics["model"] = model
        (reports / name / "metrics" / f"{model}.json").write_text(json.dumps(metrics))
    (reports / name / "split_stats.json").write_text(json.dumps(stats))
    (reports / name / "comparison.md").write_text("# per dataset\n")


def test_one_block_per_dataset_with_statistics_models_and_the_papers_figures(tmp_path):
    reports = tmp_path / "reports"
    write_dataset(reports, "ml-latest-small", [1, None, 3, None], {
        "users": 4, "items": 10, "interactions": 20, "sparsity": 0.5, "dropped": {"k_core": 7, "short_users": 1}})
    write_dataset(reports, "toys-p5", [None, 2],
                  {"users": 2, "items": 5, "interactions": 8, "sparsity": 0.2, "dropped": {}})
    (reports / "figures").mkdir()  # not a dataset: no metrics/ inside
    out = tmp_path / "results" / "table1.md"
    table.run(Params(), reports_dir=reports, out_path=out)
    text = out.read_text()
    blocks = text.split("\n## ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["ml-latest-small", "toys-p5"]
    ml, toys = blocks
    assert "4 users, 10 items, 20 interactions (density 0.50000, mean sequence length 5.0)" in ml
    assert "dropped by the filters: k_core 7, short_users 1." in ml
    assert "| genrec | 4 | 0.5000 [" in ml and "| mostpop | 4 | 0.0000 [" in ml
    assert "The paper on MovieLens 25M: P5 0.0688 / 0.0464 / 0.1040 / 0.0577; GenRec 0.1034" in ml
    assert "The paper on Amazon Toys: P5 0.0239" in toys and "dropped by the filters: nothing." in toys
    assert "[toys-p5/comparison.md](../reports/toys-p5/comparison.md)" in toys  # relative to results/


def test_no_dataset_folder_is_a_data_error(tmp_path):
    (tmp_path / "reports").mkdir()
    with pytest.raises(DataError, match="no <dataset>/metrics/ folders"):
        table.run(Params(), reports_dir=tmp_path / "reports", out_path=tmp_path / "t.md")
    assert not (tmp_path / "t.md").exists()
