"""The split stage end to end: real ml-latest-small in, split + report + metrics out, atomically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.errors import DataError
from genrec.config.params import load_params
from genrec.stages import split as stage

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)

SPLIT_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet")


@pytest.fixture(scope="module")
def interim(tmp_path_factory, data_mirror):
    """ml-latest-small as canonical parquet tables, read straight from the mirror's CSVs."""
    folder = tmp_path_factory.mktemp("interim")
    ratings = pd.read_csv(data_mirror / "ml-latest-small" / "ratings.csv")
    movies = pd.read_csv(data_mirror / "ml-latest-small" / "movies.csv")
    pd.DataFrame({
        "user_id": ratings["userId"].astype(str), "item_id": ratings["movieId"].astype(str),
        "timestamp": ratings["timestamp"].astype("int64"), "rating": ratings["rating"].astype("float64"),
    }).to_parquet(folder / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": movies["movieId"].astype(str), "title": movies["title"].str.strip()}).to_parquet(
        folder / "items.parquet", index=False)
    return folder


def run_stage(root, interim_dir, out, overrides=()):
    params = load_params(root / "params.yaml", list(overrides))
    return stage.run(params, interim_dir=interim_dir, out_dir=out / "processed", report_dir=out / "report",
                     metrics_path=out / "split.json")


@pytest.fixture(scope="module")
def result(root, interim, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_stage(root, interim, out)


def test_writes_the_split_the_report_and_the_metrics(result):
    out, written = result
    assert sorted(p.name for p in (out / "processed").iterdir()) == sorted(SPLIT_FILES)
    assert all(path.exists() for path in written.values())
    parts = {name: pd.read_parquet(out / "processed" / f"{name}.parquet") for name in ("train", "valid", "test")}
    for frame in parts.values():
        assert list(frame.columns) == ["user_id", "item_id", "timestamp", "position", "rating"]
        assert frame["timestamp"].dtype == np.int64 and frame["position"].dtype == np.int64
        assert pd.api.types.is_string_dtype(frame["user_id"]) and pd.api.types.is_string_dtype(frame["item_id"])
        assert frame.equals(frame.sort_values(["user_id", "position"]).reset_index(drop=True))
    assert parts["valid"]["user_id"].is_unique and parts["test"]["user_id"].is_unique
    assert set(parts["valid"]["user_id"]) == set(parts["test"]["user_id"]) == set(parts["train"]["user_id"])
    items = pd.read_parquet(out / "processed" / "items.parquet")
    assert list(items.columns) == ["item_id", "title"] and items["item_id"].is_monotonic_increasing
    assert set(items["item_id"]) == set(pd.concat(parts.values())["item_id"])
    report = json.loads((out / "report" / "validation.json").read_text())
    assert report["success"] is True
    assert (out / "report" / "data_docs" / "index.html").exists()
    metrics = json.loads((out / "split.json").read_text())
    assert metrics["users"] == 610 and metrics["items"] == len(items)
    assert metrics["train_rows"] + metrics["valid_rows"] + metrics["test_rows"] == metrics["interactions"]
    assert set(metrics["history_length"]) == {"p10", "p25", "p50", "p75", "p90", "max"}
    assert metrics["dropped"]["k_core"] == 100836 - metrics["interactions"]
    assert 0 < metrics["sparsity"] < 1


def test_equal_timestamps_follow_the_source_file_order(result):
    out, _ = result
    split = pd.concat([pd.read_parquet(out / "processed" / f"{n}.parquet") for n in ("train", "valid", "test")])
    split = split.sort_values(["user_id", "position"])
    tied = split[split.duplicated(["user_id", "timestamp"], keep=False)]
    assert len(tied) > 10_000
    # ratings.csv lists each user's ratings by movieId, so ties must come out in movieId order.
    groups = tied.groupby(["user_id", "timestamp"])["item_id"]
    assert groups.apply(lambda ids: ids.astype(int).is_monotonic_increasing).all()


def test_same_input_gives_byte_identical_files(root, interim, result, tmp_path):
    first, _ = result
    run_stage(root, interim, tmp_path)
    for name in SPLIT_FILES:
        assert (tmp_path / "processed" / name).read_bytes() == (first / "processed" / name).read_bytes(), name


def test_failing_validation_writes_the_report_but_no_split(root, interim, tmp_path):
    items = pd.read_parquet(interim / "items.parquet")
    items.loc[items["item_id"] == "1", "title"] = "  "  # Toy Story is in the split
    broken = tmp_path / "interim"
    broken.mkdir()
    items.to_parquet(broken / "items.parquet", index=False)
    (broken / "interactions.parquet").write_bytes((interim / "interactions.parquet").read_bytes())
    with pytest.raises(DataError, match=r"expect_column_value_lengths_to_be_between\(title\).*titles are not empty"):
        run_stage(root, broken, tmp_path)
    assert not (tmp_path / "processed").exists() and not (tmp_path / "split.json").exists()
    assert json.loads((tmp_path / "report" / "validation.json").read_text())["success"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interim", "report"]  # no temporary leftovers


def test_duplicates_and_min_rating_are_counted(root, tmp_path):
    rows = [(u, str(i), 100 * i, 4.0) for u in ("a", "b", "c", "d", "e") for i in range(6)]
    rows += [("a", "0", 0, 4.0), ("b", "5", 0, 1.0)]
    interim_dir = tiny_genrec.write_interim(tmp_path / "interim", rows, [f"Film {i}" for i in range(6)])
    run_stage(root, interim_dir, tmp_path, ["split.min_rating=3.0"])
    metrics = json.loads((tmp_path / "split.json").read_text())
    assert metrics["dropped"] == {"min_rating": 1, "duplicates": 1, "k_core": 0, "short_users": 0}
    assert (metrics["users"], metrics["items"], metrics["train_rows"]) == (5, 6, 20)


def test_missing_column_names_file_and_column(root, tmp_path):
    interim_dir = tmp_path / "interim"
    interim_dir.mkdir()
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}).to_parquet(interim_dir / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": ["x"], "title": ["X"]}).to_parquet(interim_dir / "items.parquet", index=False)
    with pytest.raises(DataError, match=r"interactions.parquet.*column 'timestamp'"):
        run_stage(root, interim_dir, tmp_path)


def test_nothing_left_after_filtering_is_a_data_error(root, interim, tmp_path):
    with pytest.raises(DataError, match="no interactions left.*split.user_core"):
        run_stage(root, interim, tmp_path, ["split.user_core=100000"])
    assert not (tmp_path / "processed").exists() and not (tmp_path / "report").exists()


def test_cli_runs_the_stage_with_relative_paths(root, interim, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as `dvc repro` runs it: paths relative to the project root
    args = ["split", "--params", str(root / "params.yaml"), "--interim", str(interim),
            "--out", "processed", "--report", "reports/data_validation", "--metrics", "reports/split.json",
            "--set", "split.user_core=20"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads((tmp_path / "reports" / "split.json").read_text())["history_length"]["p10"] >= 20
    assert (tmp_path / "reports" / "data_validation" / "data_docs" / "index.html").exists()
