"""MLflow run handling and lineage, shared by train, evaluate and promote.

One MLflow run per trained model: training opens it, saves its id beside the model
(`mlflow_run.json`), and later stages log into the same run via `start_or_resume_run(params,
run_id=read_run_id(model_dir))`, so the UI's compare view shows every model with its metrics.

The tracking URI comes from `tracking.uri` (default `sqlite:///mlflow.db`, relative to the working
directory) unless the environment sets MLFLOW_TRACKING_URI. Each experiment (`<prefix>-<dataset>`) is
created with an explicit artifact location, `mlartifacts/<experiment>` beside a SQLite database, so
artifacts never land in an unexpected `./mlruns`.

Training runs also record system metrics (`system/*`, sampled every `tracking.system_metrics_interval`
seconds by MLflow's monitor), and every run that trains or evaluates on a split logs it as an MLflow
dataset input (`log_split_input`), so the runs table's Dataset column and filter tell splits apart.

Nothing here changes MLflow's global state for longer than a call: clients get the URI explicitly, and
MLflow's fluent API (`mlflow.log_*` in the stages) points at the store only inside `tracking_store` or
`start_or_resume_run`, which put the previous tracking URI and environment back on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from genrec.io import sha256_file, split_fingerprint, write_json
from genrec.config.params import Params, to_dict

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
DVC_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
URI_ENV = "MLFLOW_TRACKING_URI"  # `mlflow.set_tracking_uri` exports it for subprocesses
TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"  # MLflow checks it before each telemetry event
# MLflow's system-metrics monitor reads its sampling interval only from here (start_run has no argument).
INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
DIGEST_LENGTH = 36  # MLflow's limit on a dataset digest (MAX_DATASET_DIGEST_SIZE)


def tracking_uri(params: Params) -> str:
    """The tracking URI: env MLFLOW_TRACKING_URI if set, else `tracking.uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def experiment_name(params: Params) -> str:
    """`<tracking.experiment_prefix>-<dataset>`: the experiment, and the registered model's name."""
    return f"{params.tracking.experiment_prefix}-{params.dataset}"


def artifact_root(params: Params, uri: str) -> Path | None:
    """Where artifacts go: `tracking.artifact_root`, else `mlartifacts/` beside a SQLite database.

    None for other stores (an MLflow server decides itself).
    """
    if params.tracking.artifact_root:
        return Path(params.tracking.artifact_root).resolve()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
    return None


def mlflow_client(params: Params):
    """An MlflowClient on the project's tracking store; MLflow's global tracking URI is left alone."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(params))


@contextlib.contextmanager
def tracking_store(params: Params) -> Iterator[str]:
    """Point MLflow's fluent API (`mlflow.start_run`, `mlflow.log_*`) at the project's store for a block.

    Telemetry is off inside the block unless MLFLOW_DISABLE_TELEMETRY says otherwise, and system metrics
    are sampled every `tracking.system_metrics_interval` seconds unless
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise. On exit the previous tracking URI and those
    three variables are restored exactly (`mlflow.set_tracking_uri` exports the URI to the environment,
    where `tracking_uri` would read it).

    Yields:
        The tracking URI in use.
    """
    import mlflow

    saved_env = {name: os.environ.get(name) for name in (URI_ENV, TELEMETRY_ENV, INTERVAL_ENV)}
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    uri = tracking_uri(params)
    os.environ.setdefault(TELEMETRY_ENV, "true")
    os.environ.setdefault(INTERVAL_ENV, str(params.tracking.system_metrics_interval))
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)  # None: back to "not set", and the variable unset
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_experiment(params: Params) -> str:
    """The id of this dataset's experiment in the project's store, created if needed."""
    mlc = mlflow_client(params)
    name = experiment_name(params)
    experiment = mlc.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root(params, tracking_uri(params))
    location = (root / name).as_uri() if root is not None else None
    return mlc.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def start_or_resume_run(params: Params, run_id: str | None = None, run_name: str | None = None,
                        tags: dict[str, str] | None = None, system_metrics: bool = False):
    """Start a new run in the dataset's experiment, or reopen `run_id`; use it as a context manager.

    A new run is tagged `genrec.family=genrec`, `genrec.dataset=<dataset>` and `genrec.git_commit`
    (HEAD, `-dirty` when tracked files changed, `none` outside a repository), `genrec.dvc_experiment`
    under `dvc exp run` (DVC's DVC_EXP_NAME), then with `tags` (which may override them, e.g.
    `{"genrec.family": "p5"}`). Under `dvc exp run` the experiment's name is appended to `run_name`.
    Inside the block MLflow's fluent API logs to the project's store (`tracking_store`). With
    `system_metrics` (the training stages pass `tracking.system_metrics`), MLflow's monitor logs CPU,
    memory, disk and network use, and GPU use where nvidia-ml-py sees one, until the block ends; a
    resumed run continues the series at the next step. Without it, MLflow's own switch decides
    (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, off unless set).

    Yields:
        mlflow.ActiveRun. The run ends on leaving the `with` block: FINISHED, FAILED if the block raised, KILLED
        if it was interrupted (Ctrl-C, or SIGTERM: `ended_on_sigterm`); never left RUNNING.
    """
    import mlflow

    with tracking_store(params):
        experiment_id = ensure_experiment(params)
        if run_id is not None:
            with mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics or None) as run, \
                    ended_on_sigterm(run):
                yield run
            return
        defaults = {"genrec.family": "genrec", "genrec.dataset": params.dataset,
                    "genrec.git_commit": git_commit() or "none"}
        experiment = os.environ.get(DVC_EXP_NAME)
        if experiment:
            defaults["genrec.dvc_experiment"] = experiment
            run_name = f"{run_name}-{experiment}" if run_name else experiment
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={**defaults, **(tags or {})},
                              log_system_metrics=system_metrics or None) as run, ended_on_sigterm(run):
            yield run


class Terminated(BaseException):
    """SIGTERM arrived while an MLflow run was open (raised by `ended_on_sigterm`'s handler)."""


@contextlib.contextmanager
def ended_on_sigterm(run) -> Iterator[None]:
    """Inside an open `mlflow.start_run` block: end the run KILLED on Ctrl-C or SIGTERM, then die as the signal would.

    MLflow's own block ends a run FAILED on any exception, KeyboardInterrupt included, and SIGTERM (what
    `kill`, DVC, schedulers and `accelerate launch` send) ends the process without running it at all, leaving
    the run RUNNING forever. So while the block runs in the main thread with SIGTERM at its default action,
    SIGTERM raises `Terminated`; either interruption ends the run KILLED; after the run ended, SIGTERM is
    delivered again with its default action, so the exit status is the one a plain SIGTERM gives.
    """
    import signal
    import threading

    import mlflow

    install = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)

    def terminate(signum, frame):
        raise Terminated(f"signal {signum}")

    if install:
        signal.signal(signal.SIGTERM, terminate)
    terminated = False
    try:
        yield
    except (KeyboardInterrupt, Terminated) as err:
        terminated = isinstance(err, Terminated)
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id:
            mlflow.end_run("KILLED")
        raise
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if terminated:
                signal.raise_signal(signal.SIGTERM)


def log_split_input(params: Params, processed_dir: str | Path, part: str, context: str) -> None:
    """Log the split as an MLflow dataset input of the active run: what the UI's Dataset column shows.

    Named `<dataset>/<part>` (part: train, valid or test), with source the processed folder as given
    (`data/processed/<dataset>` under DVC) and digest the split fingerprint cut to MLflow's 36
    characters; the full fingerprint and the part's row count are input tags. MLflow keeps one input
    per (name, digest) and run, so the part is in the name: a run trained on `train` and evaluated on
    `valid` and `test` shows three inputs, each with its context (`training` or `evaluation`).
    """
    import warnings

    import mlflow
    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    fingerprint = split_fingerprint(processed_dir)
    with warnings.catch_warnings():  # the local source is registered twice ("file" and ""): same class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(processed_dir))
    dataset = MetaDataset(source, name=f"{params.dataset}/{part}", digest=fingerprint[:DIGEST_LENGTH])
    rows = pq.ParquetFile(Path(processed_dir) / f"{part}.parquet").metadata.num_rows
    mlflow.log_input(dataset, context=context, tags={"genrec.split_fingerprint": fingerprint, "genrec.rows": str(rows)})


def run_exists(params: Params, run_id: str) -> bool:
    """Whether `run_id` is a live (not deleted) run in the project's tracking store."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client(params).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def write_run_file(path: str | Path, run) -> Path:
    """Save {run_id, experiment_id, tracking_uri} of an active run as JSON (the lineage link).

    Call it inside `start_or_resume_run`, where MLflow's tracking URI is the run's store.
    """
    import mlflow

    return write_json(path, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                             "tracking_uri": mlflow.get_tracking_uri()})


def read_run_id(model_dir: str | Path) -> str:
    """The MLflow run id saved beside a model by the stage that trained it.

    Raises:
        FileNotFoundError: naming the missing file and the stage that writes it.
    """
    path = Path(model_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no MLflow run id; rerun the training stage that writes {RUN_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))["run_id"]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to {"a.b.c": value}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def log_params(params: Params, extra: dict[str, Any] | None = None) -> None:
    """Log the resolved params (flattened, e.g. `train.lora.r`) plus `extra` to the active run."""
    import mlflow

    flat = flatten(to_dict(params))
    flat.update(flatten(extra or {}))
    mlflow.log_params({k: str(v)[:MAX_PARAM_LENGTH] for k, v in flat.items()})


def log_metrics_file(path: str | Path, prefix: str = "", step: int | None = None) -> dict[str, float]:
    """Log every number in a JSON metrics file (nested keys joined by '.') to the active run.

    Returns:
        The metrics logged, by name.
    """
    import mlflow

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    flat = flatten(data, prefix.rstrip(".")) if prefix else flatten(data)
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_metrics(metrics, step=step)
    return metrics


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit hash, with `-dirty` if tracked files changed; None outside a repo or before a commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def data_hashes(paths: Iterable[str | Path], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """A content hash per input path: DVC's md5 from `lock_path` when it records the path as an out,
    else a sha256 computed here (over the sorted relative names and contents of a directory).

    Returns:
        {path as given: "md5:<hex>" or "sha256:<hex>"}.
    """
    recorded = _dvc_lock_hashes(Path(lock_path))
    out = {}
    for path in paths:
        key = os.path.normpath(str(path))
        rel = os.path.normpath(os.path.relpath(Path(path).resolve(), Path(lock_path).resolve().parent))
        out[str(path)] = recorded.get(rel) or recorded.get(key) or f"sha256:{sha256_path(Path(path))}"
    return out


def _dvc_lock_hashes(lock_path: Path) -> dict[str, str]:
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    hashes = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                hashes[os.path.normpath(out["path"])] = f"md5:{out['md5']}"
    return hashes


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's sorted (relative name, file sha256) pairs.

    Not `io.fingerprint`, on purpose: that one streams base names and bytes into one digest. This
    value is recorded as backbone_sha256 on registry versions and as `sha256:` data hashes in MLflow
    params and config.json, fingerprint's as every metrics file's split_fingerprint; one function for
    both would change one of the recorded values.
    """
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
