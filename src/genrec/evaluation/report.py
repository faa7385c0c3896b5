"""The comparison report and Table 1 as markdown: every model with intervals, the paper's numbers, paired tests.

The files are read by `genrec.evaluation.outputs`, the statistics computed by `genrec.evaluation.comparison`,
the figures drawn by `genrec.evaluation.figures`; this module only renders. Columns follow each metrics file's
own cut-offs (`eval.k`); the paper's Table 1 keeps its four columns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genrec.errors import DataError
from genrec.evaluation.comparison import on_reference_users, representation
from genrec.evaluation.metrics import metric_label
from genrec.evaluation.outputs import ModelResult, attach_ranks, load_metrics

PAPER_METRICS = ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10")
"""The columns of the paper's Table 1."""

PAPER_TABLE_1 = {
    # Ji et al. 2023 (arXiv 2307.00457), Table 1: HR@5, NDCG@5, HR@10, NDCG@10; LLaMA-7B backbone.
    ("MovieLens 25M", "P5"): (0.0688, 0.0464, 0.1040, 0.0577),
    ("MovieLens 25M", "GenRec"): (0.1034, 0.0716, 0.1311, 0.0837),
    ("Amazon Toys", "P5"): (0.0239, 0.0145, 0.0411, 0.0201),
    ("Amazon Toys", "GenRec"): (0.0190, 0.0136, 0.0251, 0.0157),
}


def sample_statement(sample: dict, samples: int) -> str:
    """The paragraph that states the user sample every model of the comparison is reported on."""
    n, of, reference = f"{sample['users']:,}", f"{sample['of']:,}", sample["reference"]
    settings = ", ".join(f"eval.{key}={sample[key]}" for key in ("max_users", "seed") if sample.get(key) is not None)
    text = (f"**User sample.** {reference} was evaluated on a seeded sample of {n} of the {of} test users"
            f"{f' ({settings})' if settings else ''}. Every model in the tables and the paired tests against "
            f"{reference} below is reported on exactly those {n} users: its per-user ranks restricted to them, "
            f"HR/NDCG and the 95% intervals recomputed ({samples} bootstrap resamples); valid beams are n/a there "
            f"and times are those of the whole evaluation. The baselines' numbers on every user they evaluated are "
            f"in \"All users\" below.")
    if sample["short"]:
        text += " Short of the sample: " + ", ".join(f"{name} lacks {count:,} of its users"
                                                      for name, count in sample["short"].items()) + "."
    return text


def _interval(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "n/a"
    low, high = (metrics.get(side, {}).get(name) for side in ("ci95_low", "ci95_high"))
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if low is not None and high is not None else f"{value:.4f}"


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


LEAKY_NOTE = ("(leaky): its item index numbers items by their first appearance in the training sequences, so "
              "consecutive ids give the next item away; its gain over random ids is that leakage, not a result.")
"""The footnote of every table with a leaky row (a metrics file with `"leaky": true`)."""


def row_label(result: ModelResult) -> str:
    """A model's name in a table row, marked "(leaky)" when its item index leaks the answer."""
    return f"{result.label} (leaky)" if result.metrics.get("leaky") is True else result.label


def results_table(results: list[ModelResult]) -> list[str]:
    """Markdown rows: model, its items, users, the metrics with intervals, valid-beam share, times; then the
    leakage footnote when a row is leaky."""
    names = results[0].metric_names if results else PAPER_METRICS
    head = ["model", "items", "users", *(metric_label(m) for m in names), "valid beams", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r.metrics
        eval_seconds = m.get("eval_seconds", m.get("decode_seconds"))
        cells = [row_label(r), representation(r), str(m.get("users", "n/a")), *(_interval(m, name) for name in names),
                 _number(m.get("valid_beam_share"), 3), _number(m.get("train_seconds"), 0), _number(eval_seconds, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.metrics.get("leaky") is True for r in results):
        lines += ["", LEAKY_NOTE]
    return lines


def paper_table() -> list[str]:
    """The paper's Table 1 as markdown rows."""
    lines = ["| dataset (paper) | model | " + " | ".join(metric_label(m) for m in PAPER_METRICS) + " |", "|---" * 6 + "|"]
    for (dataset, model), values in PAPER_TABLE_1.items():
        lines.append(f"| {dataset} | {model} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines


def _difference(test: dict) -> list[str]:
    return [f"{test['diff']:+.4f} [{test['ci95_low']:+.4f}, {test['ci95_high']:+.4f}]", f"{test['p_value']:.4f}"]


def paired_table(tests: dict[str, dict], reference: str) -> list[str]:
    """Markdown rows: per other model, reference minus it (interval, p-value) for each tested metric."""
    metrics = list(next(iter(tests.values()))) if tests else []
    head = ["vs", "users"]
    for m in metrics:
        head += [f"Δ{metric_label(m)} [95% CI]", "p"]
    head.append(f"{reference} wins / losses ({metric_label(metrics[0]) if metrics else ''})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_metric in tests.items():
        first = by_metric[metrics[0]]
        cells = [name, str(first["users"])]
        for t in by_metric.values():
            cells += _difference(t)
        cells.append(f"{first['wins']} / {first['losses']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def representation_table(tests: list[dict], results: list[ModelResult]) -> list[str]:
    """Markdown rows of `comparison.representation_tests`: model and items, what it is tested against and its
    items, users, then the model minus the other (interval, p-value) for each tested metric."""
    by_name = {r.name: r for r in results}
    metrics = list(tests[0]["tests"]) if tests else []
    head = ["model", "items", "vs", "items", "users", *(cell for m in metrics
                                                      for cell in (f"Δ{metric_label(m)} [95% CI]", "p"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in tests:
        model, against = by_name[record["model"]], by_name[record["against"]]
        cells = [row_label(model), representation(model), row_label(against), representation(against),
                 str(record["tests"][metrics[0]]["users"])]
        for m in metrics:
            cells += _difference(record["tests"][m])
        lines.append("| " + " | ".join(cells) + " |")
    if any(by_name[record[side]].metrics.get("leaky") is True for record in tests for side in ("model", "against")):
        lines += ["", LEAKY_NOTE]
    return lines


def slice_names(analysis: dict) -> list[tuple[str, str, str]]:
    """(kind, slice, column label) of every slice of `analysis` (`genrec.evaluation.slices.analyse`), in table
    order: the popularity buckets and cold, then the history buckets, each label with what the slice holds."""
    popularity, history = analysis["buckets"]["popularity"], analysis["buckets"]["history"]
    labels = {"head": f"head (≥{popularity['head_min_interactions']})",
              "torso": "torso", "tail": f"tail (≤{popularity['tail_max_interactions']})",
              "cold": f"cold (<{popularity['cold_below_interactions']})"}
    out = [("popularity", name, labels[name]) for name in ("head", "torso", "tail", "cold")]
    for name, bucket in history.items():
        span = (f"{bucket['min_length']}–{bucket['max_length']}" if bucket["min_length"] != bucket["max_length"]
                else f"{bucket['min_length']}") if bucket["users"] else "empty"
        out.append(("history", name, f"history {name} ({span})"))
    return out


def slice_table(analysis: dict, metric: str) -> list[str]:
    """Markdown rows: per model, `metric` with its 95% interval in every slice; the header row names each
    slice and how many of the compared users it holds."""
    names = slice_names(analysis)
    first = next(iter(analysis["models"].values()))
    head = ["model", *(f"{label}, {first['slices'][kind][name]['users']} users" for kind, name, label in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, result in analysis["models"].items():
        cells = [result.get("label", model)]
        for kind, name, _ in names:
            m = result["slices"][kind][name]
            value = m.get(metric)
            low, high = m.get("ci95_low", {}).get(metric), m.get("ci95_high", {}).get(metric)
            cells.append("n/a" if value is None else f"{value:.3f} [{low:.3f}, {high:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def slice_paired_table(analysis: dict, metric: str) -> list[str]:
    """Markdown rows: per other model, the reference minus it in `metric` within every slice, with the p-value."""
    names = slice_names(analysis)
    head = ["vs", *(label for _, _, label in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, tests in analysis["paired"].items():
        cells = [analysis["models"][model].get("label", model)]
        for kind, name, _ in names:
            test = tests.get(f"{kind}.{name}", {}).get(metric)
            cells.append("n/a" if test is None else f"{test['diff']:+.3f} (p {test['p_value']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


BEYOND = (("coverage", "coverage@{k}", 3), ("arp", "ARP@{k}", 1), ("novelty", "novelty@{k}", 2), ("gini", "Gini@{k}", 3))
"""The beyond-accuracy columns: key prefix, label, digits."""


def beyond_table(analysis: dict) -> list[str]:
    """Markdown rows: per model, its users and the beyond-accuracy metrics of its top-k lists."""
    first = next(iter(analysis["models"].values()))
    k = next(key for key in first["beyond"] if key.startswith("coverage_at_")).rpartition("_")[2]
    head = ["model", "users", *(label.format(k=k) for _, label, _ in BEYOND)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, result in analysis["models"].items():
        cells = [result.get("label", model), str(result["users"]),
                 *(_number(result["beyond"].get(f"{key}_at_{k}"), digits) for key, _, digits in BEYOND)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def analysis_section(analysis: dict, figure: str | None) -> list[str]:
    """The comparison's "Slices" and "Beyond accuracy" sections."""
    metric = analysis["tested"][0]
    reference = analysis["reference"]
    buckets = analysis["buckets"]["popularity"]
    parts = ["## Slices: the target's popularity, the user's history", "",
             f"Every model on {analysis['users']}, cut by the popularity of the user's {analysis['split']} item in the "
             f"training split (head: the {buckets['head']['items']:,} most popular items, "
             f"≥{buckets['head_min_interactions']} training interactions each, making the first "
             f"{buckets['head_share']:.0%} of all; tail: the {buckets['tail']['items']:,} least popular, "
             f"≤{buckets['tail_max_interactions']} each, the last {buckets['tail_share']:.0%}; cold: fewer than "
             f"{buckets['cold_below_interactions']}, overlapping the tail) and by the length of the user's training "
             f"sequence (quantile buckets over every user of the split). {metric_label(metric)} with 95% bootstrap "
             "intervals over the slice's users; definitions in docs/evaluation.md.", "",
             *slice_table(analysis, metric), ""]
    if figure:
        parts += [f"![{metric_label(metric)} by popularity slice]({figure})", ""]
    if analysis["paired"]:
        parts += [f"{reference} minus each model within each slice, {metric_label(metric)}, on the slice's users "
                  "both evaluated (paired bootstrap, two-sided p; analysis.json also holds "
                  + ", ".join(metric_label(m) for m in analysis["tested"][1:]) + "):", "",
                  *slice_paired_table(analysis, metric), ""]
    parts += ["## Beyond accuracy", "",
              "Over the same users' top-k lists: coverage (share of catalogue items recommended at least once), ARP "
              "(average training interactions of the recommended items), novelty (mean -log2 of their add-one "
              "smoothed training popularity) and the Gini index of how often each catalogue item is recommended "
              "(near 1: a few items take every slot). Definitions and references in docs/evaluation.md.", "",
              *beyond_table(analysis), ""]
    return parts


def render_markdown(results: list[ModelResult], fingerprint: str, tests: dict[str, dict], reference: str,
                    samples: int, dataset: str, figure_name: str, sample: dict | None = None,
                    all_users: list[ModelResult] | None = None, interval_samples: int | None = None,
                    representation_tests: list[dict] | None = None, analysis: dict | None = None,
                    slice_figure: str | None = None) -> str:
    """The whole comparison.md; with a `sample` (`on_reference_users`), its statement (the restricted intervals
    used `interval_samples` resamples) and an "All users" table of `all_users`, the results before it; then the
    slices and beyond-accuracy sections of `analysis` (`genrec.evaluation.slices.analyse`, its figure
    `slice_figure`) and the "Item representations" section of `representation_tests`
    (`comparison.representation_tests`)."""
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
    if analysis is not None:
        parts += ["", *analysis_section(analysis, slice_figure)[:-1]]
    parts += ["", "## Item representations", ""]
    if representation_tests:
        parts += ["How a model names items, tested pair by pair: each model against its family's default "
                  "representation, and each generative model against SASRec. Per-user outcomes of the model minus "
                  "those of the one it is tested against, on the users both evaluated; paired bootstrap over users "
                  f"({samples} resamples), two-sided p-value. A positive difference means the model is better."
                  + ("" if sample is None else " Each pair is tested on every user both of its models evaluated, "
                     f"not only {reference}'s sample (the users column)."), "",
                  *representation_table(representation_tests, all_users or results)]
    else:
        parts.append("No representation tests: no model beside its family's default representation, and no "
                     "generative model beside SASRec.")
    return "\n".join(parts) + "\n"


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


def audit_lines(audit: dict) -> list[str]:
    """The leakage audits of a dataset (its audit.json, `genrec audit`) as a list: one finding a line."""
    tripped = audit.get("tripped") or []
    head = (f"Leakage audits (audit.policy={audit.get('policy')}): "
            + (f"{len(tripped)} tripped ({', '.join(tripped)})." if tripped else "none tripped."))
    return [head, "", *(f"- {finding}" for finding in audit.get("findings") or []), ""]


def table_one(reports_dir: str | Path, links_from: str | Path = ".", reference: str = "genrec",
              samples: int = 1000, seed: int = 42) -> str:
    """One Table 1 across datasets: a block per `reports_dir/<dataset>/` holding metrics files.

    Each block: the dataset's statistics (its split_stats.json), its leakage audits (audit.json), every model of this run in the model table's
    order with its item representation and 95% intervals, the paper's figures for the matching dataset, and a
    link to the dataset's own report (paired tests), relative to `links_from` (the folder the table is written
    to). When the dataset's predictions/ folder is there and `reference` evaluated a user sample, every model is
    shown on its users (`on_reference_users`, intervals from `samples` resamples with `seed`), and the block says so.

    Raises:
        DataError: no dataset folder with metrics files under `reports_dir`.
    """
    reports_dir = Path(reports_dir)
    datasets = sorted(p.name for p in reports_dir.iterdir() if (p / "metrics").is_dir()) if reports_dir.is_dir() else []
    if not datasets:
        raise DataError("no <dataset>/metrics/ folders", path=reports_dir, fix="run the pipeline first (dvc repro)")
    lines = ["# Table 1: every dataset of this workspace", "",
             "Each block: this run's models, with how each names items, on the dataset's test users (95% bootstrap "
             "intervals over users), the paper's figures for the matching dataset (LLaMA-7B, other sizes: for "
             "orientation only), and the dataset's own report with the paired tests.", ""]
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
        audit_path = reports_dir / name / "audit.json"
        if audit_path.is_file():
            lines += audit_lines(json.loads(audit_path.read_text(encoding="utf-8")))
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
