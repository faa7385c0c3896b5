"""Report stage: every model of the run side by side, the paper's numbers beside them, paired tests.

    genrec report --metrics-dir reports/<dataset>/metrics --predictions-dir reports/<dataset>/predictions \\
        --out reports/<dataset>/comparison.md --figures reports/<dataset>/figures \\
        --plots reports/<dataset>/plots/per_k.csv [--genrec-model models/<dataset>/genrec]

Reads every `<model>.json` metrics file and its `<model>.jsonl` predictions, refuses files from
different splits, restricts every model to the reference's users when it decoded a seeded sample of them
(`comparison.on_reference_users`: the comparison, curves and tests on those users; the all-users numbers in a
second table), tests every model against its family's default item representation and every generative model
against SASRec on the users each pair shares (`comparison.representation_tests`), and writes the comparison
table (markdown), a bar chart with the 95% intervals (`<figures>/comparison.png`) and per-k curves
(`<figures>/per_k.png`, and a CSV with columns k, <model>_hr, <model>_ndcg for `dvc plots`). The report and
figures are logged to MLflow: into the GenRec run when its model folder holds `mlflow_run.json`, else into a run
named "report".
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from genrec.config.params import Params
from genrec.evaluation import comparison, figures, outputs, report
from genrec.evaluation.metrics import metric_names, parse_metric
from genrec.io import atomic_path

log = logging.getLogger(__name__)

FIGURES = ("comparison.png", "per_k.png")


def run(params: Params, *, metrics_dir: Path, predictions_dir: Path, out_path: Path, figures_dir: Path,
        plots_path: Path, genrec_model_dir: Path | None = None) -> dict:
    """Write the comparison report, its figures and the per-k curves; log them to MLflow.

    Returns:
        Paths written, by name, the paired tests against `report.reference` and the representation tests.

    Raises:
        DataError: no metrics files, files from different splits, or missing/stale predictions.
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

    figures_dir, out_path, plots_path = Path(figures_dir), Path(out_path), Path(plots_path)
    with atomic_path(figures_dir) as tmp:
        tmp.mkdir()
        figures.bar_chart(results, tmp / FIGURES[0])
        figures.curves_chart(rows, [r.name for r in results], tmp / FIGURES[1])
    figure_link = Path(_relative(figures_dir / FIGURES[0], out_path.parent)).as_posix()
    text = report.render_markdown(results, fingerprint, tests, cfg.reference, cfg.paired_samples, params.dataset,
                                  figure_link, sample=sample, all_users=all_users,
                                  interval_samples=params.eval.bootstrap_samples,
                                  representation_tests=representation_tests)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(plots_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("compared %s -> %s", ", ".join(r.name for r in results), out_path)
    written = {"report": out_path, "figures": [figures_dir / name for name in FIGURES], "plots": plots_path}
    log_to_mlflow(params, written, genrec_model_dir)
    return {**written, "models": [r.name for r in results], "paired_tests": tests,
            "representation_tests": representation_tests, "sample": sample}


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def log_to_mlflow(params: Params, written: dict, genrec_model_dir: Path | None) -> str:
    """Log the report, figures and curves as artifacts under `report/`; returns the run id."""
    import mlflow

    from genrec.tracking import runs as tracking

    run_id = None
    if genrec_model_dir is not None and (Path(genrec_model_dir) / tracking.RUN_FILE).exists():
        run_id = tracking.read_run_id(genrec_model_dir)
    with tracking.start_or_resume_run(params, run_id=run_id, run_name=None if run_id else "report") as run:
        if run_id is None:
            mlflow.set_tag("genrec.family", "report")
        for path in (written["report"], *written["figures"], written["plots"]):
            mlflow.log_artifact(str(path), artifact_path="report")
        log.info("logged the report to MLflow run %s", run.info.run_id)
        return run.info.run_id
