"""MostPop stage: recommend the most popular training items the user does not have yet.

    genrec mostpop --processed data/processed/<dataset> --metrics reports/<dataset>/metrics/mostpop.json \\
        --predictions reports/<dataset>/predictions/mostpop.jsonl

The floor every recommender must clear (`genrec.models.mostpop`), under the shared protocol
(`genrec.evaluation.harness`): same users, cut-offs, metrics and output files as the evaluate stage, and an
MLflow run of its own.
"""

from __future__ import annotations

from pathlib import Path

from genrec.config.params import Params
from genrec.evaluation.harness import evaluate_recommender
from genrec.models.mostpop import MostPop


def run(params: Params, *, processed_dir: Path, metrics_path: Path, predictions_path: Path) -> dict:
    """Rank by popularity for every evaluated user; write metrics and predictions atomically; log a run.

    Raises:
        DataError: the split is missing or malformed.
    """
    return evaluate_recommender(MostPop(), params, processed_dir=processed_dir, metrics_path=metrics_path,
                                predictions_path=predictions_path)
