"""The one owner of evaluation outputs: every model's metrics and predictions files, written and read here.

Writing: the seeded user sample (`sample_users`), the protocol dict (`protocol_of`), the counts and integrity
shares (`summary`), GenRec's and P5's metrics from their lists (`summarise`), and `finish`, the one call that
ends every evaluate stage (model name, the model's content hash, the split fingerprint, the predictions file's
sha256 and timings added; predictions, then metrics written atomically; HR/NDCG logged; both logged into the
model's MLflow run, or a run nested under it: `log_to_mlflow`). Reading: `load_metrics`, `check_same_split`,
`read_predictions`, `read_ranks`, `attach_ranks` (the report, Table 1, promotion and `genrec seeds`).

Evidence. A metrics file names what it measured: `model_sha256` (the evaluated model's content hash),
`split_fingerprint` and `predictions_sha256` (the sha256 of the predictions file written with it). The
predictions file stays plain JSON lines, one user a line: a hash on every row would repeat 64 characters per
user and a header line would break every JSON-lines reader, while the metrics file is already the predictions'
companion (one stage writes both, one `dvc.yaml` entry names both), so its digest binds the pair with no new
file. `genrec promote` refuses metrics or predictions that do not match its --model and --processed.
Metric names come from `eval.k` through `genrec.evaluation.metrics.metric_names`, nowhere else.
Light on purpose: no model code, so the baselines' stages depend on this module and not on the search.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from genrec.errors import DataError
from genrec.io import atomic_path, split_fingerprint, write_json
from genrec.evaluation.metrics import Rank, integrity_metrics, metric_names, ranking_metrics, target_rank
from genrec.config.params import EvalParams, Params
from genrec.models.table import order_key

log = logging.getLogger(__name__)

DVC_STAGE = "DVC_STAGE"
"""Set by DVC for every stage command it runs, to the stage's name (`evaluate@ml-latest-small`)."""
RECORD_TAG = "genrec.eval.{split}.record"
"""Run tag: what the run's `<split>.*` metrics measured (protocol, seed, split, model), as JSON."""
STAGE_TAG = "genrec.eval.{split}.stage"
"""Run tag: the DVC stage that wrote the run's `<split>.*` record ("none" outside DVC)."""
EVIDENCE = ("model", "model_sha256", "split_fingerprint", "predictions_sha256", "train_seconds", "eval_seconds")
"""The keys `finish` adds to every metrics file."""


def sample_users(records: list[dict], max_users: int | None, seed: int) -> list[dict]:
    """A seeded sample of `max_users` records (one per user), kept in file order; all when None."""
    if max_users is None or max_users >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), max_users))
    return [records[i] for i in keep]


def protocol_of(e: EvalParams, **overrides) -> dict:
    """The evaluation protocol written beside every metrics file: `eval`'s settings, then `overrides`
    (what a model does differently: a scoring model has no length penalty, P5 its own token budget)."""
    return {"split": e.split, "k": list(e.k), "num_beams": e.num_beams, "constrained": e.constrained,
            "exclude_history": e.exclude_history and e.constrained, "length_penalty": e.length_penalty,
            "early_stopping": e.early_stopping, "max_new_tokens": e.max_new_tokens, "max_users": e.max_users,
            "max_prompt_tokens": e.max_prompt_tokens, "dtype": e.dtype, "ranking": "full catalogue, generative",
            "invalid_beams": "misses" if not e.constrained else "impossible", **overrides}


def summary(ranks: Sequence[Rank], beams: Sequence[Sequence[str | None]], e: EvalParams, seconds: float, *,
            truncated: int, hopeless: int, shared_titles: int, protocol_dict: dict) -> dict:
    """HR/NDCG with intervals (the names of `metric_names(e.k)`), integrity shares, counts and the protocol.

    Args:
        ranks: per user, the target's 1-based rank (None: a miss).
        beams: per user, what makes each returned entry valid and distinct (a title, or an item id).
    """
    metrics = ranking_metrics(ranks, e.k, e.bootstrap_samples, e.seed)
    metrics.update(integrity_metrics(beams, e.num_beams))
    metrics.update({"users": len(ranks), "decode_seconds": round(seconds, 2),
                    "users_per_s": round(len(ranks) / seconds, 3) if seconds > 0 else None,
                    "prompts_truncated": truncated, "users_without_candidates": hopeless,
                    "shared_titles": shared_titles, "seed": e.seed, "protocol": protocol_dict})
    return metrics


def summarise(records: list[dict], lists: list[list[dict]], e: EvalParams, seconds: float, *,
              beam_key=lambda entry: entry["title"], protocol: dict | None = None, **counts) -> dict:
    """The metrics file of a generative model from its ranked lists (one list of entries per record).

    Args:
        beam_key: what makes a beam valid and distinct (a title here; P5 passes the item id).
        protocol: entries that differ from this evaluator's protocol (P5's ranking and token budgets).
    """
    ranks = [target_rank([entry["item_ids"] for entry in entries], str(r["target_item_id"]))
             for r, entries in zip(records, lists)]
    return summary(ranks, [[beam_key(entry) for entry in entries] for entries in lists], e, seconds,
                   truncated=counts["truncated"], hopeless=counts["hopeless"], shared_titles=counts["shared_titles"],
                   protocol_dict=protocol_of(e, max_new_tokens=counts["max_new_tokens"], **(protocol or {})))


def write_predictions(path: str | Path, rows: Iterable[dict]) -> str:
    """Every model's predictions file: JSON lines, one user a line, written atomically.

    Each row is {user_id, target_item_id, target_title, ranked: [{title, item_ids, score, ...}]}.

    Returns:
        The sha256 of the bytes written (`genrec.io.sha256_file` of the file).
    """
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        for row in rows:
            line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
            digest.update(line)
            f.write(line)
    return digest.hexdigest()


def log_to_mlflow(params: Params, metrics_path: Path, predictions_path: Path, *, run_id: str | None = None,
                  new_run: dict | None = None, model: str = "genrec", processed_dir: Path | None = None) -> str:
    """Log a metrics file (prefixed by `eval.split`) and its predictions file into MLflow; returns the run id.

    Into the run `run_id` when given (a model's training run), as its `<split>.*` record when this is the stage's
    evaluation (`record_differs` is empty), else into a run nested under it; into a new run named `model` (tag
    `genrec.family=<model>`, with `new_run`'s params and tags) when `run_id` is None. The evaluated part of the
    split in `processed_dir` becomes the run's `evaluation` dataset input.
    """
    import mlflow

    from genrec.tracking import runs as tracking

    prefix = params.eval.split
    if run_id is not None and not tracking.run_exists(params, run_id):
        # The model was trained against another tracking store (or its run was deleted): a run of its own.
        log.warning("%s: MLflow run %s of the model is not in %s; logging the evaluation to a new run", model,
                    run_id, tracking.tracking_uri(params))
        new_run = {**(new_run or {}), "tags": {**(new_run or {}).get("tags", {}), "genrec.model_run": run_id}}
        run_id = None
    record = evaluation_record(json.loads(Path(metrics_path).read_text(encoding="utf-8")))
    stage = {STAGE_TAG.format(split=prefix): os.environ.get(DVC_STAGE) or "none"}
    differs = [] if run_id is None else record_differs(tracking.mlflow_client(params).get_run(run_id), prefix, record)
    new_run = new_run or {}
    if run_id is not None and not differs:
        target = {"run_id": run_id}
    elif run_id is not None:
        # Not the stage's evaluation: a run of its own under the training run, so that the training run's
        # `<split>.*` metrics and `eval/<split>` artifacts stay those of the stage.
        target = {"run_name": f"{model}-{prefix}-by-hand", "tags": {
            "genrec.family": "evaluation", "genrec.model": model, "mlflow.parentRunId": run_id,
            "genrec.eval.differs": ", ".join(differs), **stage}}
        log.info("%s: this %s evaluation differs from the record of run %s in %s; logged as a nested run", model,
                 prefix, run_id, ", ".join(differs))
    else:
        target = {"run_name": model, "tags": {"genrec.family": model, **stage, **new_run.get("tags", {})}}
    with tracking.start_or_resume_run(params, **target) as run:
        if "run_id" in target:
            mlflow.set_tags({RECORD_TAG.format(split=prefix): json.dumps(record, sort_keys=True), **stage})
        else:
            tracking.log_params(params, new_run.get("params"))
        logged = tracking.log_metrics_file(metrics_path, prefix=prefix)
        mlflow.log_artifact(str(metrics_path), artifact_path=f"eval/{prefix}")
        mlflow.log_artifact(str(predictions_path), artifact_path=f"eval/{prefix}")
        if processed_dir is not None:
            tracking.log_split_input(params, processed_dir, params.eval.split, "evaluation")
        log.info("logged %d metrics and the predictions of %s to MLflow run %s", len(logged), model, run.info.run_id)
        return run.info.run_id


def evaluation_record(metrics: dict) -> dict:
    """What a metrics file measured, flat: `protocol.<key>` for each protocol entry, seed, split and model hash."""
    return {**{f"protocol.{k}": v for k, v in (metrics.get("protocol") or {}).items()},
            **{k: metrics.get(k) for k in ("seed", "split_fingerprint", "model_sha256")}}


def record_differs(run, split: str, record: dict) -> list[str]:
    """The entries of `record` that differ from the MLflow `run`'s `<split>` record; [] for the stage's evaluation.

    The stage's evaluation is the one DVC runs: DVC sets `DVC_STAGE` for every stage command, so under
    `dvc repro` or `dvc exp run` the evaluate stage always writes the record. Outside DVC (a command typed by
    hand, a test) an evaluation writes it only while the run holds none for this split, or when it measured
    exactly what the record measured (protocol, seed, split fingerprint and model hash all equal).
    """
    if os.environ.get(DVC_STAGE):
        return []
    held = run.data.tags.get(RECORD_TAG.format(split=split))
    if held is None:
        return []
    held = json.loads(held)
    return sorted(k for k in set(held) | set(record) if held.get(k) != record.get(k))


def finish(params: Params, metrics: dict, predictions: Iterable[dict], *, model: str, model_sha256: str,
           metrics_path: Path, predictions_path: Path, processed_dir: Path, started: float,
           train_seconds: float | None = None, run_id: str | None = None, new_run: dict | None = None,
           **extra) -> dict:
    """End an evaluate stage: complete the metrics, write predictions then metrics, log them.

    Adds `model`, `model_sha256` (the evaluated model's content hash: GenRec's adapter as
    `registry.adapter_hash` computes it, a checkpoint folder's `genrec.io.fingerprint`, or for a model without
    weights the hash of the data it ranks from), the split fingerprint of `processed_dir`, the predictions
    file's sha256 (`predictions_sha256`), `train_seconds`, `eval_seconds` (since `started`, a
    `time.perf_counter()` value) and `extra` to `metrics`; writes the predictions file, then the metrics file
    (each atomically); logs HR/NDCG@10; and logs both files and the evaluated split into MLflow
    (`log_to_mlflow`): into the run `run_id` (the model's training run), or into a new run of the dataset's
    experiment when `new_run` is given ({"params": {...}, "tags": {...}}: a model that has no training run of
    its own), else nowhere.

    Returns:
        The metrics written, plus the two output paths.
    """
    clash = sorted(set(extra) & (set(metrics) | set(EVIDENCE)))
    if clash:
        raise ValueError(f"{model}: facts {clash} would overwrite the evaluation's own keys; rename them")
    predictions_sha256 = write_predictions(predictions_path, predictions)
    metrics.update(model=model, model_sha256=model_sha256, split_fingerprint=split_fingerprint(processed_dir),
                   predictions_sha256=predictions_sha256, train_seconds=train_seconds,
                   eval_seconds=round(time.perf_counter() - started, 2), **extra)
    write_json(metrics_path, metrics)
    log.info("%s on %d users: HR@10 %.4f NDCG@10 %.4f -> %s", model, metrics["users"],
             metrics.get("hr_at_10", float("nan")), metrics.get("ndcg_at_10", float("nan")), metrics_path)
    if run_id is not None or new_run is not None:
        log_to_mlflow(params, Path(metrics_path), Path(predictions_path), run_id=run_id, new_run=new_run,
                      model=model, processed_dir=Path(processed_dir))
    return {**metrics, "metrics_path": str(metrics_path), "predictions_path": str(predictions_path)}


@dataclass
class ModelResult:
    """One model's metrics file, and the per-user ranks from its predictions file."""

    name: str
    metrics_path: Path
    metrics: dict
    ranks: dict[str, Rank] | None = None
    lists: dict[str, tuple[str, list[list[str]]]] | None = None
    """Per user, the target and the item ids of each ranked entry (`read_predictions`), for the same users as
    `ranks`."""

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The ranking metrics of this file, from its protocol's k (HR/NDCG at 5 and 10 for older files)."""
        return metric_names((self.metrics.get("protocol") or {}).get("k") or (5, 10))

    @property
    def label(self) -> str:
        """The model's name in tables and charts, with its backbone when the file names one (P5's)."""
        backbone = self.metrics.get("backbone")
        return f"{self.name} ({backbone})" if backbone else self.name


def read_metrics(path: str | Path) -> dict:
    """One metrics file.

    Raises:
        DataError: the file is missing or not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("not found", path=path, fix="rerun the stage that writes it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"not JSON ({err.msg})", path=path, fix="rerun the stage that wrote it") from None
    if not isinstance(data, dict):
        raise DataError("not a JSON object", path=path, fix="rerun the stage that wrote it")
    return data


def load_metrics(metrics_dir: str | Path) -> list[ModelResult]:
    """Every metrics file in `metrics_dir` that holds ranking metrics, in the order of `genrec.models.table`.

    Raises:
        DataError: a file is not JSON, or no file holds ranking metrics.
    """
    metrics_dir = Path(metrics_dir)
    results = []
    for path in sorted(metrics_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"not JSON ({err.msg})", path=path, fix="rerun the stage that wrote it") from None
        if not isinstance(data, dict) or not any(
                m in data for m in metric_names((data.get("protocol") or {}).get("k") or (5, 10))):
            log.info("%s holds no ranking metrics; left out of the report", path)
            continue
        results.append(ModelResult(name=str(data.get("model") or path.stem), metrics_path=path, metrics=data))
    if not results:
        raise DataError("no metrics files with HR/NDCG", path=metrics_dir,
                        fix="run the evaluation stages first (dvc repro)")
    return sorted(results, key=lambda r: order_key(r.name))


def check_same_split(results: list[ModelResult]) -> str:
    """The one split fingerprint (and evaluated split) all metrics files share.

    Raises:
        DataError: a file has no fingerprint, or two files were computed on different splits
            (naming both files); comparing them would be meaningless.
    """
    for result in results:
        if not result.metrics.get("split_fingerprint"):
            raise DataError("no split_fingerprint", path=result.metrics_path,
                            fix="rerun the stage that wrote it with this version of genrec")
    first = results[0]
    for other in results[1:]:
        for key, what in (("split_fingerprint", "split"), ("protocol.split", "evaluated split")):
            ours, theirs = _get(first.metrics, key), _get(other.metrics, key)
            if ours != theirs:
                raise DataError(f"computed on another {what} than {first.metrics_path} ({key} {theirs!r} vs "
                                f"{ours!r}): refusing to compare", path=other.metrics_path,
                                fix="rerun every model's evaluation on the same split (dvc repro)")
    return first.metrics["split_fingerprint"]


def _get(data: dict, dotted: str):
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def read_predictions(path: str | Path, expected_sha256: str | None = None) -> dict[str, tuple[str, list[list[str]]]]:
    """Per user_id of a predictions file: (target item id, the item ids of each ranked entry, in rank order).

    Args:
        expected_sha256: the metrics file's `predictions_sha256`; None checks nothing (a file written before
            metrics files recorded it).

    Raises:
        DataError: the file is missing, a line is not a well-formed prediction, or its sha256 is not
            `expected_sha256` (the file is not the evaluation its metrics file measured).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("not found", path=path, fix="rerun the stage that writes this model's predictions")
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise DataError("its sha256 is not the predictions_sha256 of its metrics file: the two come from different "
                        "evaluations", path=path, fix="rerun the stage that writes both (dvc repro)")
    lists = {}
    for row, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            lists[str(record["user_id"])] = (str(record["target_item_id"]),
                                             [[str(i) for i in entry["item_ids"]] for entry in record["ranked"]])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"not a prediction record ({err})", path=path, row=row,
                            fix="rerun the stage that wrote it") from None
    return lists


def ranks_of(lists: dict[str, tuple[str, list[list[str]]]]) -> dict[str, Rank]:
    """Per user, the 1-based rank of the target in its list (`read_predictions`'s), None for a miss."""
    return {user: target_rank(entries, target) for user, (target, entries) in lists.items()}


def read_ranks(path: str | Path) -> dict[str, Rank]:
    """Per user_id, the 1-based rank of the target in a predictions file (None: a miss).

    Raises:
        DataError: the file is missing, or a line is not a well-formed prediction.
    """
    return ranks_of(read_predictions(path))


def attach_ranks(results: list[ModelResult], predictions_dir: str | Path) -> None:
    """Read `<predictions_dir>/<metrics file stem>.jsonl` for each result (its `lists` and `ranks`), checked
    against its metrics file.

    Raises:
        DataError: a predictions file is missing, is not the one its metrics file records
            (`predictions_sha256`), or evaluates another number of users than its metrics file (a stale file).
    """
    for result in results:
        path = Path(predictions_dir) / f"{result.metrics_path.stem}.jsonl"
        result.lists = read_predictions(path, result.metrics.get("predictions_sha256"))
        result.ranks = ranks_of(result.lists)
        expected = result.metrics.get("users")
        if expected is not None and expected != len(result.ranks):
            raise DataError(f"{len(result.ranks)} users, but {result.metrics_path} reports {expected}", path=path,
                            fix="rerun the stage that writes both, so they come from the same evaluation")
