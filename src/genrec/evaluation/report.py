"""The comparison report: metrics files side by side, paired tests on per-user outcomes, figures.

Every model's evaluation writes `<model>.json` (metrics, with the split fingerprint) and
`<model>.jsonl` (per-user ranked lists) in the evaluate stage's format. This module reads them,
refuses to compare files computed on different splits, and turns them into a markdown table, a
paired bootstrap test against a reference model, per-k curves and a bar chart.

When the reference (GenRec) decoded a seeded sample of the users (`eval.max_users`) and the baselines every
user, `on_reference_users` restricts every model to the reference's users and recomputes its metrics and
intervals with the evaluations' own code (`genrec.evaluation.metrics.ranking_metrics`), so that the table and the paired
tests compare like with like; the baselines' all-users numbers stay in a second table.
"""

from __future__ import annotations

import json
import os
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.errors import DataError
from genrec.evaluation.metrics import Rank, hits_at_k, ndcg_gains_at_k, paired_bootstrap, ranking_metrics, target_rank

log = logging.getLogger(__name__)

METRICS = ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10")
LABELS = {"hr_at_5": "HR@5", "ndcg_at_5": "NDCG@5", "hr_at_10": "HR@10", "ndcg_at_10": "NDCG@10"}
MODEL_ORDER = ("genrec", "genrec+sasrec", "p5", "sasrec", "mostpop")

PAPER_TABLE_1 = {
    # Ji et al. 2023 (arXiv 2307.00457), Table 1: HR@5, NDCG@5, HR@10, NDCG@10; LLaMA-7B backbone.
    ("MovieLens 25M", "P5"): (0.0688, 0.0464, 0.1040, 0.0577),
    ("MovieLens 25M", "GenRec"): (0.1034, 0.0716, 0.1311, 0.0837),
    ("Amazon Toys", "P5"): (0.0239, 0.0145, 0.0411, 0.0201),
    ("Amazon Toys", "GenRec"): (0.0190, 0.0136, 0.0251, 0.0157),
}


@dataclass
class ModelResult:
    """One model's metrics file, and the per-user ranks from its predictions file."""

    name: str
    metrics_path: Path
    metrics: dict
    ranks: dict[str, Rank] | None = None


def load_metrics(metrics_dir: str | Path) -> list[ModelResult]:
    """Every metrics file in `metrics_dir` that holds ranking metrics, ordered GenRec, P5, SASRec, MostPop, rest.

    Raises:
        DataError: a file is not JSON, or no file holds ranking metrics.
    """
    metrics_dir = Path(metrics_dir)
    results = []
    for path in sorted(metrics_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"not JSON ({err.msg})", path=path, fix="rerun the stage that wrote it") from None
        if not isinstance(data, dict) or not any(m in data for m in METRICS):
            log.info("%s holds no ranking metrics; left out of the report", path)
            continue
        results.append(ModelResult(name=str(data.get("model") or path.stem), metrics_path=path, metrics=data))
    if not results:
        raise DataError("no metrics files with HR/NDCG", path=metrics_dir,
                        fix="run the evaluation stages first (dvc repro)")
    rank = {name: i for i, name in enumerate(MODEL_ORDER)}
    return sorted(results, key=lambda r: (rank.get(r.name, len(rank)), r.name))


def check_same_split(results: list[ModelResult]) -> str:
    """The one split fingerprint (and evaluated split) all metrics files share.

    Raises:
        DataError: a file has no fingerprint, or two files were computed on different splits
            (naming both files); comparing them would be meaningless.
    """
    for result in results:
        if not result.metrics.get("split_fingerprint"):
            raise DataError("no split_fingerprint", path=result.metrics_path,
                            fix="rerun the stage that wrote it with this version of genrec")
    first = results[0]
    for other in results[1:]:
        for key, what in (("split_fingerprint", "split"), ("protocol.split", "evaluated split")):
            ours, theirs = _get(first.metrics, key), _get(other.metrics, key)
            if ours != theirs:
                raise DataError(f"computed on another {what} than {first.metrics_path} ({key} {theirs!r} vs "
                                f"{ours!r}): refusing to compare", path=other.metrics_path,
                                fix="rerun every model's evaluation on the same split (dvc repro)")
    return first.metrics["split_fingerprint"]


def _get(data: dict, dotted: str):
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def read_ranks(path: str | Path) -> dict[str, Rank]:
    """Per user_id, the 1-based rank of the target in a predictions file (None: a miss).

    Raises:
        DataError: the file is missing, or a line is not a well-formed prediction.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("not found", path=path, fix="rerun the stage that writes this model's predictions")
    ranks = {}
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                lists = [entry["item_ids"] for entry in record["ranked"]]
                ranks[str(record["user_id"])] = target_rank(lists, str(record["target_item_id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"not a prediction record ({err})", path=path, row=row,
                                fix="rerun the stage that wrote it") from None
    return ranks


def attach_ranks(results: list[ModelResult], predictions_dir: str | Path) -> None:
    """Read `<predictions_dir>/<metrics file stem>.jsonl` for each result, checked against its metrics.

    Raises:
        DataError: a predictions file is missing or evaluates another number of users than its
            metrics file (a stale file).
    """
    for result in results:
        path = Path(predictions_dir) / f"{result.metrics_path.stem}.jsonl"
        result.ranks = read_ranks(path)
        expected = result.metrics.get("users")
        if expected is not None and expected != len(result.ranks):
            raise DataError(f"{len(result.ranks)} users, but {result.metrics_path} reports {expected}", path=path,
                            fix="rerun the stage that writes both, so they come from the same evaluation")


def per_user(ranks: dict[str, Rank], users: list[str], metric: str) -> np.ndarray:
    """Per-user HR@k or NDCG@k (`metric` like "hr_at_10") for `users`, in that order."""
    name, k = metric.split("_at_")
    gains = hits_at_k if name == "hr" else ndcg_gains_at_k
    return gains([ranks[u] for u in users], int(k))


def paired_tests(results: list[ModelResult], reference: str, metrics: tuple[str, ...], samples: int,
                 seed: int) -> dict[str, dict]:
    """`reference` against every other model on the users both evaluated: {model: {metric: test}}."""
    ref = next((r for r in results if r.name == reference), None)
    if ref is None:
        log.warning("no %r metrics file: no paired tests", reference)
        return {}
    out = {}
    for other in results:
        if other is ref:
            continue
        users = sorted(set(ref.ranks) & set(other.ranks))
        if not users:
            log.warning("%s and %s share no users: no paired test", reference, other.name)
            continue
        out[other.name] = {m: paired_bootstrap(per_user(ref.ranks, users, m), per_user(other.ranks, users, m),
                                               samples, seed) for m in metrics}
    return out


def on_reference_users(results: list[ModelResult], reference: str, samples: int,
                       seed: int) -> tuple[list[ModelResult], dict | None]:
    """Every model on exactly the reference's users, when some model evaluated users the reference did not.

    A model with users outside the reference's set (a baseline on every user, GenRec on a seeded sample) gets
    its per-user ranks restricted to the reference's users and its HR/NDCG and 95% intervals recomputed with
    `ranking_metrics` (`samples` resamples, `seed`); its valid-beam share, which needs the beams, becomes
    unknown. Models within the reference's users are kept as they are.

    Returns:
        (the results to compare, the sample: {reference, users, of, seed, max_users, short}) or
        (`results`, None) when there is no reference or no model has users beyond the reference's.
        `of` is the largest number of users any model evaluated (every test user when a baseline ran on
        all); `short` names models that lack some of the reference's users, with how many.
    """
    ref = next((r for r in results if r.name == reference and r.ranks is not None), None)
    if ref is None or all(set(r.ranks) <= set(ref.ranks) for r in results):
        return results, None
    users = set(ref.ranks)
    ks = (ref.metrics.get("protocol") or {}).get("k") or sorted({int(m.rsplit("_", 1)[1]) for m in METRICS})
    out, short = [], {}
    for r in results:
        if set(r.ranks) <= users:
            out.append(r)
            continue
        shared = sorted(users & set(r.ranks))
        if len(shared) < len(users):
            short[r.name] = len(users) - len(shared)
        ranks = {u: r.ranks[u] for u in shared}
        metrics = {**r.metrics, **ranking_metrics(list(ranks.values()), ks, samples, seed), "users": len(shared),
                   "valid_beam_share": None, "restricted_to": reference}
        out.append(ModelResult(name=r.name, metrics_path=r.metrics_path, metrics=metrics, ranks=ranks))
    protocol = ref.metrics.get("protocol") or {}
    sample = {"reference": reference, "users": len(users), "of": max(len(r.ranks) for r in results),
              "seed": ref.metrics.get("seed"), "max_users": protocol.get("max_users"), "short": short}
    return out, sample


def sample_statement(sample: dict, samples: int) -> str:
    """The paragraph that states the user sample every model of the comparison is reported on."""
    n, of, reference = f"{sample['users']:,}", f"{sample['of']:,}", sample["reference"]
    settings = ", ".join(f"eval.{key}={sample[key]}" for key in ("max_users", "seed") if sample.get(key) is not None)
    text = (f"**User sample.** {reference} was evaluated on a seeded sample of {n} of the {of} test users"
            f"{f' ({settings})' if settings else ''}. Every model in the tables and tests below is reported on exactly "
            f"those {n} users: its per-user ranks restricted to them, HR/NDCG and the 95% intervals recomputed "
            f"({samples} bootstrap resamples); valid beams are n/a there and times are those of the whole "
            f"evaluation. The baselines' numbers on every user they evaluated are in \"All users\" below.")
    if sample["short"]:
        text += " Short of the sample: " + ", ".join(f"{name} lacks {count:,} of its users"
                                                      for name, count in sample["short"].items()) + "."
    return text


def per_k_curves(results: list[ModelResult], max_k: int) -> list[dict]:
    """Records {k, <model>_hr, <model>_ndcg, ...} for k = 1..max_k, from each model's predictions."""
    rows = []
    for k in range(1, max_k + 1):
        row = {"k": k}
        for r in results:
            ranks = list(r.ranks.values())
            row[f"{r.name}_hr"] = round(float(hits_at_k(ranks, k).mean()), 6)
            row[f"{r.name}_ndcg"] = round(float(ndcg_gains_at_k(ranks, k).mean()), 6)
        rows.append(row)
    return rows


def _interval(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "n/a"
    low, high = (metrics.get(side, {}).get(name) for side in ("ci95_low", "ci95_high"))
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if low is not None and high is not None else f"{value:.4f}"


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _label(result: ModelResult) -> str:
    backbone = result.metrics.get("backbone")
    return f"{result.name} ({backbone})" if backbone else result.name


def results_table(results: list[ModelResult]) -> list[str]:
    """Markdown rows: model, users, the four metrics with intervals, valid-beam share, times."""
    head = ["model", "users", *(LABELS[m] for m in METRICS), "valid beams", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r.metrics
        eval_seconds = m.get("eval_seconds", m.get("decode_seconds"))
        cells = [_label(r), str(m.get("users", "n/a")), *(_interval(m, name) for name in METRICS),
                 _number(m.get("valid_beam_share"), 3), _number(m.get("train_seconds"), 0), _number(eval_seconds, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paper_table() -> list[str]:
    """The paper's Table 1 as markdown rows."""
    lines = ["| dataset (paper) | model | " + " | ".join(LABELS[m] for m in METRICS) + " |", "|---" * 6 + "|"]
    for (dataset, model), values in PAPER_TABLE_1.items():
        lines.append(f"| {dataset} | {model} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines


def paired_table(tests: dict[str, dict], reference: str) -> list[str]:
    """Markdown rows: per other model, reference minus it (interval, p-value) for each tested metric."""
    metrics = list(next(iter(tests.values()))) if tests else []
    head = ["vs", "users"]
    for m in metrics:
        head += [f"Δ{LABELS.get(m, m)} [95% CI]", "p"]
    head.append(f"{reference} wins / losses ({LABELS.get(metrics[0], metrics[0]) if metrics else ''})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_metric in tests.items():
        first = by_metric[metrics[0]]
        cells = [name, str(first["users"])]
        for t in by_metric.values():
            cells += [f"{t['diff']:+.4f} [{t['ci95_low']:+.4f}, {t['ci95_high']:+.4f}]", f"{t['p_value']:.4f}"]
        cells.append(f"{first['wins']} / {first['losses']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: list[ModelResult], fingerprint: str, tests: dict[str, dict], reference: str,
                    samples: int, dataset: str, figure_name: str, sample: dict | None = None,
                    all_users: list[ModelResult] | None = None, interval_samples: int | None = None) -> str:
    """The whole comparison.md; with a `sample` (`on_reference_users`), its statement (the restricted intervals
    used `interval_samples` resamples) and an "All users" table of `all_users`, the results before it."""
    protocol = results[0].metrics.get("protocol", {})
    users = sorted({r.metrics.get("users") for r in results}, key=str)
    parts = [
        f"# Comparison on {dataset}", "",
        f"Split fingerprint `{fingerprint[:16]}` (all {len(results)} metrics files agree). Evaluated on the "
        f"`{protocol.get('split', 'test')}` items, top-{protocol.get('num_beams', 10)} over the full catalogue, "
        f"history {'excluded' if protocol.get('exclude_history') else 'allowed'}; 95% bootstrap intervals over users.",
        *([] if sample is None else ["", sample_statement(sample, interval_samples or samples)]),
        *([] if len(users) == 1 else ["", f"Models were evaluated on different numbers of users ({users}); the "
                                      "paired tests below use only the users both models share."]), "",
        "## This run" + ("" if sample is None else f", on {reference}'s {sample['users']:,} users"), "",
        *results_table(results), "",
        f"![HR and NDCG with 95% intervals]({figure_name})", "",
        *([] if sample is None or not all_users else [
            "## All users", "", "Each model on every user it evaluated (its own metrics file), for reference: "
            "do not compare rows with different user counts.", "", *results_table(all_users), ""]),
        "## The paper's Table 1 (for orientation only)", "",
        "Ji et al. 2023 (arXiv 2307.00457), LLaMA-7B backbone on MovieLens 25M and Amazon Toys: other datasets, "
        "sizes and backbones than this run, so the numbers are not comparable one to one.", "",
        *paper_table(), "",
        f"## Paired tests against {reference}", "",
    ]
    if tests:
        parts += [f"Per-user outcomes of {reference} minus each model's, on the users both evaluated; paired "
                  f"bootstrap over users ({samples} resamples), two-sided p-value from the bootstrap distribution. "
                  f"A positive difference means {reference} is better.", "", *paired_table(tests, reference)]
    else:
        parts.append(f"No paired tests: no metrics file for {reference!r}, or no other model.")
    return "\n".join(parts) + "\n"


def bar_chart(results: list[ModelResult], path: str | Path) -> Path:
    """Grouped bars of the four metrics per model, with the 95% intervals as error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(results)
    x = np.arange(len(METRICS))
    for i, r in enumerate(results):
        m = r.metrics
        values = np.array([m.get(name, np.nan) for name in METRICS], dtype=float)
        low = np.array([m.get("ci95_low", {}).get(name, v) for name, v in zip(METRICS, values)], dtype=float)
        high = np.array([m.get("ci95_high", {}).get(name, v) for name, v in zip(METRICS, values)], dtype=float)
        ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=_label(r),
               yerr=np.vstack([values - low, high - values]), capsize=3)
    ax.set_xticks(x, [LABELS[m] for m in METRICS])
    ax.set_ylabel("score (95% bootstrap interval)")
    ax.legend()
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


PAPER_DATASETS = (("ml-", "MovieLens 25M"), ("movielens", "MovieLens 25M"), ("toys", "Amazon Toys"),
                  ("amazon-toys", "Amazon Toys"))
"""Which of the paper's Table 1 datasets a dataset name is set beside (by prefix or substring)."""


def paper_dataset(name: str) -> str | None:
    """The paper's dataset to show beside `name`, or None (e.g. MovieLens for ml-latest-small)."""
    lowered = name.lower()
    for key, paper in PAPER_DATASETS:
        if lowered.startswith(key) or key in lowered:
            return paper
    return None


def dataset_statistics(stats: dict) -> str:
    """One line from a split's `split_stats.json`: users, items, interactions, density, sequence length, drops."""
    users, items, interactions = stats.get("users", 0), stats.get("items", 0), stats.get("interactions", 0)
    density = 1.0 - stats.get("sparsity", 1.0)  # the split stage writes sparsity = 1 - interactions / (users x items)
    dropped = ", ".join(f"{key} {value:,}" for key, value in sorted(stats.get("dropped", {}).items()))
    return (f"{users:,} users, {items:,} items, {interactions:,} interactions (density {density:.5f}, mean sequence "
            f"length {interactions / users if users else 0:.1f}); dropped by the filters: {dropped or 'nothing'}.")


def table_one(reports_dir: str | Path, links_from: str | Path = ".", reference: str = "genrec",
              samples: int = 1000, seed: int = 42) -> str:
    """One Table 1 across datasets: a block per `reports_dir/<dataset>/` holding metrics files.

    Each block: the dataset's statistics (its split_stats.json), every model of this run with 95% intervals,
    the paper's figures for the matching dataset, and a link to the dataset's own report (paired tests),
    relative to `links_from` (the folder the table is written to). When the dataset's predictions/ folder is
    there and `reference` evaluated a user sample, every model is shown on its users (`on_reference_users`,
    intervals from `samples` resamples with `seed`), and the block says so.

    Raises:
        DataError: no dataset folder with metrics files under `reports_dir`.
    """
    reports_dir = Path(reports_dir)
    datasets = sorted(p.name for p in reports_dir.iterdir() if (p / "metrics").is_dir()) if reports_dir.is_dir() else []
    if not datasets:
        raise DataError("no <dataset>/metrics/ folders", path=reports_dir, fix="run the pipeline first (dvc repro)")
    lines = ["# Table 1: every dataset of this workspace", "",
             "Each block: this run's models on the dataset's test users (95% bootstrap intervals over users), the "
             "paper's figures for the matching dataset (LLaMA-7B, other sizes: for orientation only), and the "
             "dataset's own report with the paired tests.", ""]
    for name in datasets:
        results = load_metrics(reports_dir / name / "metrics")
        sample = None
        if (reports_dir / name / "predictions").is_dir():
            attach_ranks(results, reports_dir / name / "predictions")
            results, sample = on_reference_users(results, reference, samples, seed)
        stats_path = reports_dir / name / "split_stats.json"
        lines += [f"## {name}", ""]
        if stats_path.is_file():
            lines += [dataset_statistics(json.loads(stats_path.read_text(encoding="utf-8"))), ""]
        if sample is not None:
            seeded = f" (eval.seed={sample['seed']})" if sample.get("seed") is not None else ""
            lines += [f"Every model on {reference}'s seeded sample of {sample['users']:,} of the {sample['of']:,} test "
                      f"users{seeded}; all users: the dataset's report.", ""]
        lines += results_table(results) + [""]
        paper = paper_dataset(name)
        if paper:
            lines += [f"The paper on {paper}: " + "; ".join(
                f"{model} " + " / ".join(f"{v:.4f}" for v in values)
                for (dataset, model), values in PAPER_TABLE_1.items() if dataset == paper)
                + " (HR@5 / NDCG@5 / HR@10 / NDCG@10).", ""]
        if (reports_dir / name / "comparison.md").is_file():
            link = Path(os.path.relpath(reports_dir / name / "comparison.md", links_from)).as_posix()
            lines += [f"Paired tests: [{name}/comparison.md]({link}).", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
