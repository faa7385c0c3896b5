"""Variation across seeds: several runs of one configuration, each metric's mean with a 95% t-interval.

    genrec seeds RUN1 RUN2 RUN3 ... --out seeds.md

Each RUN is a run's `reports/<dataset>` folder (its `metrics/*.json`) or a metrics folder itself, e.g. the
workspace after each of `dvc exp run -S train.seed=1`, `-S train.seed=2`, ... copied aside, or
`dvc exp apply`-ed one at a time. Every model present in the runs gets, per metric, the mean over runs with
the Student-t interval mean ± t(0.975, n-1) x sd / sqrt(n) (runs as the sample: variation the seed causes),
beside the mean of the runs' own per-user bootstrap intervals (variation the users cause). The runs must share
the split (`split_fingerprint`), else they are no repetitions of one configuration.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from genrec.errors import DataError
from genrec.io import atomic_path
from genrec.evaluation.metrics import metric_label
from genrec.evaluation.outputs import ModelResult, check_same_split, load_metrics

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student-t 0.975 quantiles for 1..30 degrees of freedom (any statistics table); above 30, 2.042 (wider
than exact by at most 0.08: conservative)."""


def t_quantile(df: int) -> float:
    """t(0.975, df), the two-sided 95% critical value (df >= 1)."""
    if df < 1:
        raise ValueError(f"df={df}: a t-interval needs at least 2 runs")
    return T_975[min(df, len(T_975)) - 1]


def t_interval(values: list[float]) -> dict:
    """Mean, sample sd and the 95% t-interval of `values` (one per run; at least 2)."""
    x = np.asarray(values, dtype=np.float64)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile(x.size - 1) * sd / math.sqrt(x.size)
    return {"runs": int(x.size), "mean": mean, "sd": sd, "ci95_low": mean - half, "ci95_high": mean + half}


def read_runs(runs: list[str | Path]) -> list[list[ModelResult]]:
    """Each run's metrics files (`<run>/metrics/*.json`, or `<run>/*.json` for a metrics folder).

    Raises:
        DataError: fewer than 2 runs, a run without metrics files, or runs on different splits.
    """
    if len(runs) < 2:
        raise DataError(f"{len(runs)} run(s): an interval across seeds needs at least 2",
                        fix="pass every run's reports/<dataset> folder: genrec seeds DIR1 DIR2 ... --out FILE")
    loaded = []
    for run in map(Path, runs):
        folder = run / "metrics" if (run / "metrics").is_dir() else run
        loaded.append(load_metrics(folder))
    check_same_split([results[0] for results in loaded])
    return loaded


def aggregate(loaded: list[list[ModelResult]]) -> dict[str, dict[str, dict]]:
    """{model: {metric: t_interval(...) + per-user bootstrap interval averaged over runs + values}} for every
    model with the metric in at least 2 runs, in the report's model order."""
    out: dict[str, dict[str, dict]] = {}
    names = [r.name for results in loaded for r in results]
    for name in dict.fromkeys(names):
        found = [r for results in loaded for r in results if r.name == name]
        runs = [r.metrics for r in found]
        for metric in dict.fromkeys(m for r in found for m in r.metric_names):
            have = [m for m in runs if isinstance(m.get(metric), (int, float))]
            if len(have) < 2:
                continue
            entry = t_interval([m[metric] for m in have])
            lows = [m.get("ci95_low", {}).get(metric) for m in have]
            highs = [m.get("ci95_high", {}).get(metric) for m in have]
            if all(v is not None for v in lows + highs):
                entry["bootstrap_low"], entry["bootstrap_high"] = float(np.mean(lows)), float(np.mean(highs))
            entry["values"] = [float(m[metric]) for m in have]
            entry["users"] = sorted({m.get("users") for m in have}, key=str)
            out.setdefault(name, {})[metric] = entry
    return out


def render(table: dict[str, dict[str, dict]], runs: list[str | Path]) -> str:
    """The markdown report: one row per (model, metric)."""
    lines = ["# Variation across seeds", "",
             f"{len(runs)} runs of one configuration (one split): " + ", ".join(f"`{Path(r).as_posix()}`" for r in runs)
             + ". Across seeds: the mean over runs with its 95% Student-t interval (mean ± t(0.975, n-1) sd/√n) "
             "and the sample sd. Across users: each run's 95% bootstrap interval over users, averaged over the "
             "runs. A seed interval much narrower than the user interval means the seed matters less than "
             "which users are tested.", "",
             "| model | metric | runs | users | mean [95% t-interval across seeds] | sd | "
             "per-user 95% bootstrap (mean over runs) | per run |", "|---" * 8 + "|"]
    for name, by_metric in table.items():
        for metric, e in by_metric.items():
            boot = (f"[{e['bootstrap_low']:.4f}, {e['bootstrap_high']:.4f}]" if "bootstrap_low" in e else "n/a")
            lines.append(f"| {name} | {metric_label(metric)} | {e['runs']} | {', '.join(map(str, e['users']))} | "
                         f"{e['mean']:.4f} [{e['ci95_low']:.4f}, {e['ci95_high']:.4f}] | {e['sd']:.4f} | {boot} | "
                         + ", ".join(f"{v:.4f}" for v in e["values"]) + " |")
    return "\n".join(lines) + "\n"


def write(runs: list[str | Path], out_path: str | Path) -> Path:
    """Read the runs, aggregate them and write the markdown report to `out_path`.

    Raises:
        DataError: as `read_runs`.
    """
    text = render(aggregate(read_runs(runs)), runs)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out_path)
