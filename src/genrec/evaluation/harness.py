"""Train and evaluate any scoring recommender (`genrec.models.interface.Recommender`) under the shared protocol.

One function for every scoring model's stage: read the split, train with a clock, save the model atomically
(when it has weights), rank the evaluated users (the seeded sample GenRec decodes, `eval.max_users`), and end
with `genrec.evaluation.outputs.finish`: metrics and predictions files in the evaluate stage's format, and an
MLflow run of the model in the dataset's experiment (tag `genrec.family=<model>`), so the UI lists it beside
GenRec and P5.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genrec.config.params import Params
from genrec.data.processed import part_path
from genrec.evaluation import scoring
from genrec.evaluation.outputs import finish
from genrec.io import atomic_path, fingerprint
from genrec.models.interface import Recommender, save_model

log = logging.getLogger(__name__)


def evaluate_recommender(recommender: Recommender, params: Params, *, processed_dir: Path, metrics_path: Path,
                         predictions_path: Path, model_dir: Path | None = None,
                         run_params: dict | None = None) -> dict:
    """Fit `recommender` on the split in `processed_dir`, rank the evaluated users, write and log the results.

    Args:
        model_dir: folder for the trained model (written atomically through the recommender's `save`).
        run_params: the model's own settings, logged as params of its MLflow run beside the resolved params.

    Returns:
        The metrics written, plus the output paths.

    Raises:
        DataError: the split is missing or malformed.
    """
    e = params.eval
    data = scoring.read_split(processed_dir)
    start = time.perf_counter()
    facts = recommender.fit(data)
    train_seconds = round(time.perf_counter() - start, 2)
    saved = False
    if model_dir is not None:
        with atomic_path(model_dir) as tmp:
            saved = save_model(recommender, tmp, {"train_seconds": train_seconds, **facts})
            if not saved:
                tmp.mkdir(parents=True)
    # The metrics' `model_sha256`: the saved model, or for a model without weights (MostPop) what it is fitted on.
    model_sha256 = fingerprint(model_dir) if saved else fingerprint(*(part_path(processed_dir, name)
                                                                     for name in ("train", "items")))

    users = scoring.evaluation_users(data, e.max_users, e.seed)
    histories, targets = scoring.eval_cases(data, e.split, users)
    start = time.perf_counter()
    codes, values = recommender.rank(histories, e.num_beams, e.exclude_history)
    seconds = time.perf_counter() - start
    count_truncated = getattr(recommender, "truncated", None)
    metrics, predictions = scoring.evaluate_ranking(data, users, targets, codes, values, e, seconds=seconds,
                                                    truncated=count_truncated(histories) if count_truncated else 0)
    written = finish(params, metrics, predictions, model=recommender.name, model_sha256=model_sha256,
                     metrics_path=metrics_path, predictions_path=predictions_path, processed_dir=processed_dir,
                     started=start,
                     train_seconds=train_seconds, new_run={"params": run_params or {}}, **facts)
    return {**written, **({"model_dir": str(model_dir)} if model_dir is not None else {})}
