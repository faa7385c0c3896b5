"""Table stage: one Table 1 across every dataset of the workspace, also an MLflow artifact.

    genrec table --reports reports --out results/table1.md

Reads `reports/<dataset>/metrics/*.json` and `split_stats.json` for every dataset the pipeline built and writes
one markdown file with a block per dataset (`genrec.evaluation.report.table_one`): its models in the order of the
model table (`genrec.models.table`), each with how it names items (title, an item index, or id). Where GenRec
decoded a seeded user sample, every model of that dataset is shown on those users (from
`reports/<dataset>/predictions/`). It depends on the whole `reports/` folder (DVC orders it after every dataset's
stages), so its output lives outside it.

The table and each dataset's comparison.md are logged to MLflow as artifacts of one new run per execution in
the experiment `<tracking.experiment_prefix>-table` (Table 1 spans datasets, so it belongs to no dataset's
experiment): `table1.md` at the run's root, `<dataset>/comparison.md` beside it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from genrec.evaluation import report
from genrec.io import atomic_path
from genrec.config.params import Params

log = logging.getLogger(__name__)

EXPERIMENT_SUFFIX = "table"
"""The MLflow experiment of Table 1 is `<prefix>-table`, beside the per-dataset `<prefix>-<dataset>`."""


def run(params: Params, *, reports_dir: Path, out_path: Path) -> dict:
    """Write the cross-dataset Table 1 to `out_path` and log it, with each dataset's comparison.md, to MLflow.

    Returns:
        {"out_path", "run_id"}: the table written and the MLflow run holding it.

    Raises:
        DataError: no dataset folder with metrics files under `reports_dir`.
    """
    text = report.table_one(reports_dir, links_from=Path(out_path).parent, reference=params.report.reference,
                            samples=params.eval.bootstrap_samples, seed=params.eval.seed)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("Table 1 over %d dataset(s) -> %s", text.count("\n## "), out_path)
    comparisons = sorted(Path(reports_dir).glob("*/comparison.md"))
    return {"out_path": Path(out_path), "run_id": log_to_mlflow(params, Path(out_path), comparisons)}


def log_to_mlflow(params: Params, table_path: Path, comparisons: list[Path]) -> str:
    """Log Table 1 and the per-dataset reports into a new run of `<prefix>-table`; returns the run id."""
    import mlflow

    from genrec.tracking import runs as tracking

    datasets = [path.parent.name for path in comparisons]
    # tracking names the experiment <prefix>-<dataset>: "table" stands for the dataset here.
    table_params = dataclasses.replace(params, dataset=EXPERIMENT_SUFFIX)
    tags = {"genrec.family": "table", "genrec.dataset": ",".join(datasets) or "none"}
    with tracking.start_or_resume_run(table_params, run_name="table1", tags=tags) as run:
        mlflow.log_artifact(str(table_path))
        for path in comparisons:
            mlflow.log_artifact(str(path), artifact_path=path.parent.name)
        log.info("logged Table 1 and %d comparison report(s) to MLflow run %s", len(comparisons), run.info.run_id)
        return run.info.run_id
