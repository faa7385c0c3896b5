"""The comparison's figures: grouped bars with 95% intervals, HR@k and NDCG@k against k, a metric by popularity
slice (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.evaluation.metrics import metric_label
from genrec.evaluation.outputs import ModelResult


def bar_chart(results: list[ModelResult], path: str | Path) -> Path:
    """Grouped bars of the four metrics per model, with the 95% intervals as error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = results[0].metric_names
    grouped_bars(ax, [(r.label, [(r.metrics, name) for name in names]) for r in results], capsize=3)
    ax.set_xticks(np.arange(len(names)), [metric_label(m) for m in names])
    ax.set_ylabel("score (95% bootstrap interval)")
    ax.legend()
    return save(fig, ax, path)


def grouped_bars(ax, series: list[tuple[str, list[tuple[dict, str]]]], capsize: int) -> None:
    """One bar per series in each group, with its 95% interval as error bars.

    Args:
        series: (label, [(metrics, name) per group]): the bar's value is metrics[name], its interval
            metrics["ci95_low"][name] to metrics["ci95_high"][name] (none when absent).
    """
    width = 0.8 / max(len(series), 1)
    for i, (label, cells) in enumerate(series):
        values = np.array([m.get(name, np.nan) for m, name in cells], dtype=float)
        low = np.array([m.get("ci95_low", {}).get(name, v) for (m, name), v in zip(cells, values)], dtype=float)
        high = np.array([m.get("ci95_high", {}).get(name, v) for (m, name), v in zip(cells, values)], dtype=float)
        ax.bar(np.arange(len(cells)) + (i - (len(series) - 1) / 2) * width, values, width, label=label,
               yerr=np.vstack([values - low, high - values]), capsize=capsize)


def save(fig, ax, path: str | Path) -> Path:
    """Grid the y axis, lay the figure out, write it as a PNG and close it."""
    import matplotlib.pyplot as plt

    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_chart(rows: list[dict], models: list[str], path: str | Path) -> Path:
    """HR@k and NDCG@k against k, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    ks = [row["k"] for row in rows]
    for ax, metric, label in zip(axes, ("hr", "ndcg"), ("HR@k", "NDCG@k")):
        for name in models:
            ax.plot(ks, [row[f"{name}_{metric}"] for row in rows], marker="o", label=name)
        ax.set_xlabel("k")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def slice_chart(analysis: dict, metric: str, path: str | Path) -> Path:
    """`metric` (e.g. hr_at_10) by popularity slice (head, torso, tail, cold), one bar per model, with the 95%
    intervals as error bars (PNG); `analysis` is `genrec.evaluation.slices.analyse`'s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genrec.evaluation.slices import POPULARITY

    names = [*POPULARITY, "cold"]
    models = analysis["models"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    grouped_bars(ax, [(result.get("label", model), [(result["slices"]["popularity"][name], metric) for name in names])
                      for model, result in models.items()], capsize=2)
    users = models[next(iter(models))]["slices"]["popularity"] if models else {}
    ax.set_xticks(np.arange(len(names)), [f"{name}\n({users.get(name, {}).get('users', 0)} users)" for name in names])
    ax.set_ylabel(f"{metric_label(metric)} (95% bootstrap interval)")
    ax.set_title(f"{metric_label(metric)} by the target's popularity in the training split")
    ax.legend(fontsize=8)
    return save(fig, ax, path)
