"""SASRec stage: train the self-attentive sequential baseline on the split, evaluate it like GenRec.

    genrec sasrec --processed data/processed/<dataset> --model models/<dataset>/sasrec \\
        --metrics reports/<dataset>/metrics/sasrec.json --predictions reports/<dataset>/predictions/sasrec.jsonl

Trains on every position of the training sequences (cross-entropy over the full catalogue), keeps the epoch
with the best validation `sasrec.select_metric`, then ranks the full catalogue for the evaluated users
(history excluded when `eval.exclude_history`), under the shared protocol (`genrec.evaluation.harness`). The
model folder (`genrec.models.sasrec.recommender`) is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from genrec.config.params import Params
from genrec.evaluation.harness import evaluate_recommender
from genrec.models.sasrec.recommender import Sasrec


def run(params: Params, *, processed_dir: Path, model_dir: Path, metrics_path: Path, predictions_path: Path) -> dict:
    """Train SASRec, save it to `model_dir`, evaluate it; write metrics and predictions atomically; log a run.

    Raises:
        DataError: the split is missing or malformed.
    """
    recommender = Sasrec(params.sasrec, params.eval.exclude_history, params.dataset, processed_dir)
    return evaluate_recommender(recommender, params, processed_dir=processed_dir, metrics_path=metrics_path,
                                predictions_path=predictions_path, model_dir=model_dir,
                                run_params={"model": "sasrec"})
