"""MostPop stage: recommend the most popular training items the user does not have yet.

    genrec mostpop --processed data/processed/<dataset> --metrics reports/<dataset>/metrics/mostpop.json \\
        --predictions reports/<dataset>/predictions/mostpop.jsonl

The floor every recommender must clear: one global ranking by training interactions (ties by
item_id), the user's history removed when `eval.exclude_history`. Same users, cut-offs, metrics and
output files as the evaluate stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genrec.evaluation import scoring as baselines
from genrec.io import split_fingerprint, write_json
from genrec.config.params import Params
from genrec.evaluation.outputs import write_predictions

log = logging.getLogger(__name__)


def run(params: Params, *, processed_dir: Path, metrics_path: Path, predictions_path: Path) -> dict:
    """Rank by popularity for every evaluated user; write metrics and predictions atomically.

    Returns:
        The metrics written, plus the two output paths.

    Raises:
        DataError: the split is missing or malformed.
    """
    e = params.eval
    data = baselines.read_split(processed_dir)
    start = time.perf_counter()
    counts = baselines.popularity(data)
    train_seconds = time.perf_counter() - start

    users = baselines.evaluation_users(data, e.max_users, e.seed)
    histories, targets = baselines.eval_cases(data, e.split, users)
    start = time.perf_counter()
    codes, values = baselines.rank_by_popularity(counts, histories, e.num_beams, e.exclude_history)
    seconds = time.perf_counter() - start
    metrics, predictions = baselines.evaluate_ranking(data, users, targets, codes, values, e, seconds=seconds)
    metrics.update({"model": "mostpop", "split_fingerprint": split_fingerprint(processed_dir),
                    "train_seconds": round(train_seconds, 2), "eval_seconds": round(time.perf_counter() - start, 2)})
    write_predictions(predictions_path, predictions)
    write_json(metrics_path, metrics)
    log.info("MostPop on %d users: HR@10 %.4f NDCG@10 %.4f -> %s", len(users), metrics.get("hr_at_10", float("nan")),
             metrics.get("ndcg_at_10", float("nan")), metrics_path)
    return {**metrics, "metrics_path": str(metrics_path), "predictions_path": str(predictions_path)}
