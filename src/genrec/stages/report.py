"""Report stage: every model of the run side by side, the paper's numbers beside them, paired tests.

    genrec report --metrics-dir reports/<dataset>/metrics --predictions-dir reports/<dataset>/predictions \\
        --processed data/processed/<dataset> --out reports/<dataset>/comparison.md \\
        --analysis reports/<dataset>/analysis.json --figures reports/<dataset>/figures \\
        --plots reports/<dataset>/plots/per_k.csv [--genrec-model models/<dataset>/genrec]

Reads every `<model>.json` metrics file and its `<model>.jsonl` predictions, refuses files from
different splits, restricts every model to the reference's users when it decoded a seeded sample of them
(`comparison.on_reference_users`: the comparison, curves and tests on those users; the all-users numbers in a
second table), tests every model against its family's default item representation and every generative model
against SASRec on the users each pair shares (`comparison.representation_tests`), cuts the compared users into
slices by target popularity and history length with every model's beyond-accuracy metrics
(`genrec.evaluation.slices`: the split's training counts and the predictions, no model runs), and writes the
comparison (markdown), analysis.json (the slices, the paired tests within them and the beyond-accuracy metrics: a
DVC metrics file), a bar chart with the 95% intervals (`<figures>/comparison.png`), HR@10 by popularity slice
(`<figures>/slices.png`) and per-k curves (`<figures>/per_k.png`, and a CSV with columns k, <model>_hr,
<model>_ndcg for `dvc plots`). The report and figures are logged to MLflow: into the GenRec run when its model
folder holds `mlflow_run.json`, else into a run named "report"; each model's slice and beyond-accuracy metrics into
a run nested under it (`<model>-slices`, tag `genrec.analysis.model`), reused by later reports.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from genrec.config.params import Params
from genrec.evaluation import comparison, figures, outputs, report, slices
from genrec.evaluation.metrics import metric_names, parse_metric
from genrec.io import atomic_path, write_json

log = logging.getLogger(__name__)

FIGURES = ("comparison.png", "per_k.png", "slices.png")
ANALYSIS_TAG = "genrec.analysis.model"
"""Tag of the run nested under the report's run that holds one model's slice and beyond-accuracy metrics."""


def run(params: Params, *, metrics_dir: Path, predictions_dir: Path, out_path: Path, figures_dir: Path,
        plots_path: Path, processed_dir: Path, analysis_path: Path, genrec_model_dir: Path | None = None) -> dict:
    """Write the comparison report, analysis.json, the figures and the per-k curves; log them to MLflow.

    Returns:
        Paths written, by name, the paired tests against `report.reference`, the representation tests and the
        analysis (slices, paired tests within them, beyond-accuracy metrics).

    Raises:
        DataError: no metrics files, files from different splits, missing or stale predictions (a predictions
            file whose sha256 is not its metrics file's `predictions_sha256`), or a missing split.
    """
    cfg = params.report
    results = outputs.load_metrics(metrics_dir)
    fingerprint = outputs.check_same_split(results)
    outputs.attach_ranks(results, predictions_dir)
    all_users = results
    results, sample = comparison.on_reference_users(all_users, cfg.reference, params.eval.bootstrap_samples,
                                                    params.eval.seed)
    # The paired tests: every metric at the largest cut-off of eval.k (HR@10 and NDCG@10 by default).
    tested = tuple(m for m in metric_names(params.eval.k) if parse_metric(m)[1] == max(params.eval.k))
    tests = comparison.paired_tests(results, cfg.reference, tested, cfg.paired_samples, cfg.seed)
    # Each pair on the users both of its models evaluated, not only the reference's.
    representation_tests = comparison.representation_tests(all_users, tested, cfg.paired_samples, cfg.seed)
    rows = comparison.per_k_curves(results, cfg.max_k)
    analysis = analyse(params, results, Path(processed_dir), tested, sample)

    figures_dir, out_path, plots_path = Path(figures_dir), Path(out_path), Path(plots_path)
    with atomic_path(figures_dir) as tmp:
        tmp.mkdir()
        figures.bar_chart(results, tmp / FIGURES[0])
        figures.curves_chart(rows, [r.name for r in results], tmp / FIGURES[1])
        figures.slice_chart(analysis, f"hr_at_{max(params.eval.k)}", tmp / FIGURES[2])
    figure_link = Path(_relative(figures_dir / FIGURES[0], out_path.parent)).as_posix()
    text = report.render_markdown(results, fingerprint, tests, cfg.reference, cfg.paired_samples, params.dataset,
                                  figure_link, sample=sample, all_users=all_users,
                                  interval_samples=params.eval.bootstrap_samples,
                                  representation_tests=representation_tests, analysis=analysis,
                                  slice_figure=Path(_relative(figures_dir / FIGURES[2], out_path.parent)).as_posix())
    write_json(analysis_path, analysis)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(plots_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("compared %s -> %s", ", ".join(r.name for r in results), out_path)
    written = {"report": out_path, "figures": [figures_dir / name for name in FIGURES], "plots": plots_path,
               "analysis": Path(analysis_path)}
    run_id = log_to_mlflow(params, written, genrec_model_dir)
    log_analysis(params, analysis, run_id)
    return {**written, "models": [r.name for r in results], "paired_tests": tests,
            "representation_tests": representation_tests, "sample": sample, "analysis_data": analysis}


def analyse(params: Params, results: list[outputs.ModelResult], processed_dir: Path, tested: tuple[str, ...],
            sample: dict | None) -> dict:
    """`slices.analyse` of the compared models (their lists, `outputs.attach_ranks`, on the users each is
    compared on), with what it was run on."""
    cfg = params.report
    models = {r.name: r.lists for r in results}
    facts = {r.name: {"predictions_sha256": r.metrics.get("predictions_sha256"), "label": r.label} for r in results}
    analysis = slices.analyse(models, slices.read_split(processed_dir), reference=cfg.reference, ks=params.eval.k,
                              head_share=cfg.head_share, tail_share=cfg.tail_share, cold_item_max=cfg.cold_item_max,
                              history_count=cfg.history_buckets, samples=params.eval.bootstrap_samples,
                              paired_samples=cfg.paired_samples, seed=params.eval.seed, paired_seed=cfg.seed,
                              tested=tested)
    for name, result in analysis["models"].items():
        result.update(facts[name])
    split = (results[0].metrics.get("protocol") or {}).get("split", "test")
    users = f"{sample['reference']}'s seeded sample of {sample['users']} users" if sample else "every evaluated user"
    return {"dataset": params.dataset, "split": split, "reference": cfg.reference, "users": users,
            "tested": list(tested), **analysis}


def log_analysis(params: Params, analysis: dict, parent_run_id: str) -> list[str]:
    """Each model's slice and beyond-accuracy metrics (`slices.run_metrics`) into its run nested under
    `parent_run_id`, found by tag `genrec.analysis.model` or created; returns the run ids."""
    import mlflow

    from genrec.tracking import runs as tracking

    client = tracking.mlflow_client(params)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run_ids = []
    for model, result in analysis["models"].items():
        found = client.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{ANALYSIS_TAG}` = '{model}'"))
        run_id = found[0].info.run_id if found else None
        tags = {"genrec.family": "analysis", ANALYSIS_TAG: model, "mlflow.parentRunId": parent_run_id}
        with tracking.start_or_resume_run(params, run_id=run_id, run_name=None if run_id else f"{model}-slices",
                                          tags=None if run_id else tags) as run:
            mlflow.set_tag("genrec.analysis.users", analysis["users"])
            mlflow.log_metrics(slices.run_metrics(result, analysis["split"]))
            run_ids.append(run.info.run_id)
    log.info("logged the slices of %d models to MLflow runs nested under %s", len(run_ids), parent_run_id)
    return run_ids


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def log_to_mlflow(params: Params, written: dict, genrec_model_dir: Path | None) -> str:
    """Log the report, analysis.json, figures and curves as artifacts under `report/`; returns the run id."""
    import mlflow

    from genrec.tracking import runs as tracking

    run_id = None
    if genrec_model_dir is not None and (Path(genrec_model_dir) / tracking.RUN_FILE).exists():
        run_id = tracking.read_run_id(genrec_model_dir)
    with tracking.start_or_resume_run(params, run_id=run_id, run_name=None if run_id else "report") as run:
        if run_id is None:
            mlflow.set_tag("genrec.family", "report")
        for path in (written["report"], written["analysis"], *written["figures"], written["plots"]):
            mlflow.log_artifact(str(path), artifact_path="report")
        log.info("logged the report to MLflow run %s", run.info.run_id)
        return run.info.run_id
