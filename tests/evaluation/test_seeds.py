"""Variation across seeds: mean and 95% t-interval over hand-made runs, beside the per-user intervals."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from genrec.evaluation import seeds
from genrec.cli import main
from genrec.errors import DataError


def write_run(folder, values: dict[str, float], fingerprint: str = "f" * 64) -> None:
    """reports/<dataset>/metrics/<model>.json with HR@10 = value and a per-user interval of value ± 0.05."""
    (folder / "metrics").mkdir(parents=True)
    for model, value in values.items():
        metrics = {"model": model, "users": 100, "split_fingerprint": fingerprint, "protocol": {"split": "test"},
                   "hr_at_10": value, "ci95_low": {"hr_at_10": value - 0.05}, "ci95_high": {"hr_at_10": value + 0.05}}
        (folder / "metrics" / f"{model}.json").write_text(json.dumps(metrics))


def test_t_quantiles_are_the_tabled_ones():
    assert seeds.t_quantile(1) == 12.706 and seeds.t_quantile(2) == 4.303 and seeds.t_quantile(30) == 2.042
    assert seeds.t_quantile(100) == 2.042  # conservative beyond the table
    with pytest.raises(ValueError):
        seeds.t_quantile(0)


def test_three_runs_give_the_hand_computed_interval(tmp_path):
    runs = []
    for i, (genrec, mostpop) in enumerate([(0.10, 0.02), (0.12, 0.02), (0.14, 0.02)]):
        write_run(tmp_path / f"seed{i}", {"genrec": genrec, "mostpop": mostpop})
        runs.append(tmp_path / f"seed{i}")
    table = seeds.aggregate(seeds.read_runs(runs))
    g = table["genrec"]["hr_at_10"]
    # mean 0.12, sd 0.02, half-width 4.303 x 0.02 / sqrt(3)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert g["mean"] == pytest.approx(0.12) and g["sd"] == pytest.approx(0.02)
    assert (g["ci95_low"], g["ci95_high"]) == (pytest.approx(0.12 - half), pytest.approx(0.12 + half))
    assert (g["bootstrap_low"], g["bootstrap_high"]) == (pytest.approx(0.07), pytest.approx(0.17))
    assert g["values"] == [0.10, 0.12, 0.14] and g["runs"] == 3
    m = table["mostpop"]["hr_at_10"]
    assert m["sd"] == 0 and m["ci95_low"] == m["ci95_high"] == pytest.approx(0.02)  # a deterministic model
    text = seeds.render(table, runs)
    assert f"| genrec | HR@10 | 3 | 100 | 0.1200 [{0.12 - half:.4f}, {0.12 + half:.4f}] | 0.0200 | " \
           "[0.0700, 0.1700] | 0.1000, 0.1200, 0.1400 |" in text


def test_runs_on_different_splits_or_a_single_run_are_refused(tmp_path):
    write_run(tmp_path / "a", {"genrec": 0.1})
    write_run(tmp_path / "b", {"genrec": 0.1}, fingerprint="0" * 64)
    with pytest.raises(DataError, match="another split"):
        seeds.read_runs([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DataError, match="at least 2"):
        seeds.read_runs([tmp_path / "a"])


def test_the_command_takes_run_folders_or_their_metrics_folders(tmp_path):
    write_run(tmp_path / "a", {"genrec": 0.1})
    write_run(tmp_path / "b", {"genrec": 0.2})
    out = tmp_path / "seeds.md"
    result = CliRunner().invoke(main, ["seeds", str(tmp_path / "a"), str(tmp_path / "b" / "metrics"),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| genrec | HR@10 | 2 | 100 | 0.1500 [" in out.read_text()
    bad = CliRunner().invoke(main, ["seeds", str(tmp_path / "a"), "--out", str(out)])
    assert bad.exit_code == 1 and "at least 2" in bad.output
