"""SASRec stage: train the self-attentive sequential baseline on the split, evaluate it like GenRec.

    genrec sasrec --processed data/processed/<dataset> --model models/<dataset>/sasrec \\
        --metrics reports/<dataset>/metrics/sasrec.json --predictions reports/<dataset>/predictions/sasrec.jsonl

Trains on every position of the training sequences (cross-entropy over the full catalogue), keeps
the epoch with the best validation `sasrec.select_metric`, then ranks the full catalogue for the
evaluated users (history excluded when `eval.exclude_history`). The model folder holds
model.safetensors, config.json (architecture, dataset, split fingerprint, item order, params) and
training.json (per-epoch loss and validation scores); it is written atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genrec.evaluation import scoring as baselines
from genrec.models.sasrec import model as sasrec
from genrec.io import atomic_path, split_fingerprint, write_json
from genrec.config.params import Params, to_dict
from genrec.evaluation.outputs import write_predictions

log = logging.getLogger(__name__)


def run(params: Params, *, processed_dir: Path, model_dir: Path, metrics_path: Path, predictions_path: Path) -> dict:
    """Train SASRec, save it to `model_dir`, evaluate it; write metrics and predictions atomically.

    Returns:
        The metrics written, plus the output paths.

    Raises:
        DataError: the split is missing or malformed.
    """
    e, cfg = params.eval, params.sasrec
    data = baselines.read_split(processed_dir)
    fingerprint = split_fingerprint(processed_dir)
    start = time.perf_counter()
    model, history = sasrec.train_sasrec(data, cfg, e.exclude_history)
    train_seconds = time.perf_counter() - start
    best = max(history, key=lambda r: r[f"valid_{cfg.select_metric}"])
    with atomic_path(model_dir) as tmp:
        sasrec.save_sasrec(model, tmp, {"dataset": params.dataset, "split_fingerprint": fingerprint,
                                           "item_ids": [str(i) for i in data.item_ids], "sasrec": to_dict(cfg)})
        write_json(tmp / "training.json", {"epochs": history, "best_epoch": best["epoch"],
                                           "train_seconds": round(train_seconds, 2)})

    users = baselines.evaluation_users(data, e.max_users, e.seed)
    histories, targets = baselines.eval_cases(data, e.split, users)
    start = time.perf_counter()
    codes, values = sasrec.rank_with_sasrec(model, histories, e.num_beams, e.exclude_history)
    seconds = time.perf_counter() - start
    # Histories longer than max_len lose their oldest items, as GenRec's prompts lose titles.
    truncated = sum(len(h) > cfg.max_len for h in histories)
    metrics, predictions = baselines.evaluate_ranking(data, users, targets, codes, values, e, seconds=seconds,
                                                      truncated=truncated)
    metrics.update({"model": "sasrec", "split_fingerprint": fingerprint, "train_seconds": round(train_seconds, 2),
                    "eval_seconds": round(time.perf_counter() - start, 2), "best_epoch": best["epoch"],
                    "epochs": len(history)})
    write_predictions(predictions_path, predictions)
    write_json(metrics_path, metrics)
    log.info("SASRec (best epoch %d of %d, %.0fs) on %d users: HR@10 %.4f NDCG@10 %.4f -> %s", best["epoch"],
             len(history), train_seconds, len(users), metrics.get("hr_at_10", float("nan")),
             metrics.get("ndcg_at_10", float("nan")), metrics_path)
    return {**metrics, "model_dir": str(model_dir), "metrics_path": str(metrics_path),
            "predictions_path": str(predictions_path)}
