"""What every model's evaluation shares (GenRec, P5, MostPop, SASRec), so that their files compare.

The seeded user sample (`sample_users`), the metrics file (`summarise`: HR/NDCG with intervals,
integrity shares, counts and the protocol), the predictions file (`write_predictions`) and the logging
of both into a model's MLflow run (`log_to_mlflow`). Light on purpose: no model code, so the baselines'
stages depend on this module and not on the generative search.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Iterable

from genrec.io import atomic_path
from genrec.evaluation.metrics import integrity_metrics, ranking_metrics, target_rank
from genrec.config.params import EvalParams, Params

log = logging.getLogger(__name__)


def sample_users(records: list[dict], max_users: int | None, seed: int) -> list[dict]:
    """A seeded sample of `max_users` records (one per user), kept in file order; all when None."""
    if max_users is None or max_users >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), max_users))
    return [records[i] for i in keep]


def summarise(records: list[dict], lists: list[list[dict]], e: EvalParams, seconds: float, *,
              beam_key=lambda entry: entry["title"], protocol: dict | None = None, **counts) -> dict:
    """Metrics, integrity shares, counts and the protocol, as written to every model's metrics file.

    Args:
        beam_key: what makes a beam valid and distinct (a title here; P5 passes the item id).
        protocol: entries that differ from this evaluator's protocol (P5's ranking and token budgets).
    """
    ranks = [target_rank([entry["item_ids"] for entry in entries], str(r["target_item_id"]))
             for r, entries in zip(records, lists)]
    metrics = ranking_metrics(ranks, e.k, e.bootstrap_samples, e.seed)
    metrics.update(integrity_metrics([[beam_key(entry) for entry in entries] for entries in lists], e.num_beams))
    metrics.update({"users": len(records), "decode_seconds": round(seconds, 2),
                    "users_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
                    "prompts_truncated": counts["truncated"], "users_without_candidates": counts["hopeless"],
                    "shared_titles": counts["shared_titles"], "seed": e.seed,
                    "protocol": {"split": e.split, "k": list(e.k), "num_beams": e.num_beams,
                                 "constrained": e.constrained, "exclude_history": e.exclude_history and e.constrained,
                                 "length_penalty": e.length_penalty, "early_stopping": e.early_stopping,
                                 "max_new_tokens": counts["max_new_tokens"], "max_users": e.max_users,
                                 "max_prompt_tokens": e.max_prompt_tokens, "dtype": e.dtype,
                                 "ranking": "full catalogue, generative",
                                 "invalid_beams": "misses" if not e.constrained else "impossible",
                                 **(protocol or {})}})
    return metrics


def write_predictions(path: str | Path, rows: Iterable[dict]) -> None:
    """Every model's predictions file: JSON lines, one user a line, written atomically.

    Each row is {user_id, target_item_id, target_title, ranked: [{title, item_ids, score, ...}]}.
    """
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def log_to_mlflow(params: Params, model_dir: Path, metrics_path: Path, predictions_path: Path,
                  prefix: str | None = None, processed_dir: Path | None = None) -> None:
    """Log the metrics (prefixed by the split, or `prefix`) and the predictions file into the model's run,
    and the evaluated part of the split in `processed_dir` as the run's `evaluation` dataset input."""
    import mlflow

    from genrec.tracking import runs as tracking

    prefix = prefix or params.eval.split
    with tracking.start_or_resume_run(params, run_id=tracking.read_run_id(model_dir)):
        logged = tracking.log_metrics_file(metrics_path, prefix=prefix)
        mlflow.log_artifact(str(metrics_path), artifact_path=f"eval/{prefix}")
        mlflow.log_artifact(str(predictions_path), artifact_path=f"eval/{prefix}")
        if processed_dir is not None:
            tracking.log_split_input(params, processed_dir, params.eval.split, "evaluation")
    log.info("logged %d metrics and the predictions to MLflow run %s", len(logged), tracking.read_run_id(model_dir))
