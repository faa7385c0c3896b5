"""The trained GenRec adapter as an MLflow pyfunc model in the registry, and the `champion` alias.

Each trained adapter becomes one version of the registered model `genrec-<dataset>`: a pyfunc whose
`predict` takes a DataFrame with a `history` column (titles, oldest first) and an optional `k`, and
returns the top-k catalogue titles with their beam scores (`genrec.models.genrec.recommend`).

What a version holds. Bundled as model artifacts (small): the model folder written by `genrec
train` (LoRA adapter, tokenizer, prompt template, resolved config) and the catalogue
(`items.parquet`), from which the title trie is rebuilt at load. Referenced (large): the backbone.
Bundling a 270 MB backbone (26 GB for LLaMA-7B in bf16) into every version would copy it once per
trained adapter, and a `dvc exp` sweep trains many adapters on one backbone. Referencing
`models/base` by path would break old versions as soon as an experiment rewrites that folder.
So each distinct backbone is uploaded ONCE to the tracking server's artifact store, into a run of
the experiment `<prefix>-backbones` tagged with its sha256; a version's `model_config` records that
artifact URI and the sha256, and loading checks the hash before any weight is read. A version is
therefore loadable wherever its tracking store is, and never silently runs on another backbone.

The adapter, tokenizer, template, other adapter files and catalogue are hashed at registration too, as
version tags and in the model config (`genrec.tracking.trust`). `genrec recommend` loads a version with
`load_version`: genrec's own MLmodel and entry point only, files checked against the tags, and none of the
version's code run.

Which version holds the alias `champion` (aliases replace the deprecated registry stages) is decided by
`genrec.tracking.promotion`: a paired test on validation users, never test metrics. Each version's description
is its model card (`genrec.tracking.model_card`, written by the promote stage through `describe_version`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import tempfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pandas as pd

from genrec.tracking import runs as tracking
from genrec.tracking import trust
from genrec.tracking.store import is_not_found, open_client, store_errors
from genrec.errors import DataError
from genrec.io import fingerprint
from genrec.config.params import EvalParams, Params, to_dict

log = logging.getLogger(__name__)

CHAMPION = "champion"
MUTABLE_TAGS = ("valid.", "test.", "valid_protocol")
"""Tag prefixes updated when an already registered adapter is promoted again with new metrics."""
LOGGED_MODEL_NAME = "recommender"
BACKBONE_ARTIFACT = "backbone"
REQUIREMENTS = ("torch", "transformers", "peft", "tokenizers", "safetensors", "mlflow", "pandas", "pyarrow",
                "numpy")
"""Pinned into each version's requirements; genrec itself must be installed where the model loads."""
MODEL_CODE = '''"""genrec's pyfunc entry point (MLflow models from code): GenRecModel of the installed genrec."""
import mlflow

from genrec.tracking.registry import GenRecModel

mlflow.models.set_model(GenRecModel())
'''
"""Stored in each version instead of a pickled class: loading a version unpickles nothing."""
ARCHIVED_TAG = "archived_reason"
"""Set by `genrec promote --reset` (`promotion.archive_champion`) on the version it takes the alias from."""


class GenRecModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame {history: list of titles, k: optional int} -> top-k titles with scores."""

    def load_context(self, context) -> None:
        """Check the bundled files against the hashes in the model config, then load (`load`)."""
        adapter_dir = Path(context.artifacts["adapter"])
        unchecked = self.load(adapter_dir, Path(context.artifacts["items"]), context.model_config,
                              expected=context.model_config.get("sha256") or {}, source=adapter_dir.parent)
        if unchecked:
            log.warning("%s records no %s (registered before genrec recorded them): those files load unchecked",
                        adapter_dir.parent, ", ".join(unchecked))

    def load(self, adapter_dir: Path, items_path: Path, config: dict, *, expected: dict[str, str], source) -> list[str]:
        """Verify the files against `expected` (`trust.HASH_TAGS`), resolve the backbone, build the Recommender.

        Returns:
            The hash tags `expected` lacks (a version registered before genrec recorded them): unchecked.

        Raises:
            DataError: a missing adapter, a file group whose sha256 differs, or a changed backbone.
        """
        from genrec.models.genrec.recommend import Recommender

        if not (adapter_dir / "adapter_model.safetensors").is_file():
            raise DataError("no adapter_model.safetensors in the version", path=source, fix=trust.REFUSED_FIX)
        actual = trust.content_hashes(adapter_dir, items_path, adapter_hash(adapter_dir))
        unchecked = trust.check_content(actual, expected, str(source), adapter_dir)
        backbone = resolve_backbone(config["backbone_uri"], config["backbone_sha256"])
        self.recommender = Recommender.load(backbone, adapter_dir, items_path, EvalParams(**config["eval"]))
        return unchecked

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row: titles, scores, item_ids and the unknown history titles.

        k comes from the optional `k` column (a value on every row), else from `params={"k": n}`
        (the whole batch), else `eval.num_beams`.

        Raises:
            MlflowException (INVALID_PARAMETER_VALUE, HTTP 400 when served): no `history` column, an
                empty history, a history without any catalogue title, or k outside 1..100.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "history" not in frame.columns:
            raise MlflowException("input needs a `history` column: a list of titles per row, oldest first",
                                  error_code=INVALID_PARAMETER_VALUE)
        histories = [[] if h is None else [str(t) for t in h] for h in frame["history"]]
        requested = (params or {}).get("k")  # k=0 is a request, refused below like a k column of 0
        default = self.recommender.default_k if _missing(requested) else int(requested)
        ks = [default if _missing(k) else int(k) for k in frame["k"]] if "k" in frame.columns else \
            [default] * len(histories)
        try:
            recommendations = self.recommender.recommend(histories, ks)
        except ValueError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame([r.to_dict() for r in recommendations], columns=["titles", "scores", "item_ids", "unknown"])


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def quoted(value: str) -> str:
    """`value` as a string literal of MLflow's search filter grammar (`name = <quoted(name)>`).

    The grammar has no escape character: a value is wrapped in single quotes, or in double quotes when it
    holds a single quote (a dataset named `o'neil`).

    Raises:
        DataError: a value holding both quote characters, which no filter string can express.
    """
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise DataError(f"{text!r} holds both quote characters: MLflow's search filters cannot express it",
                    fix="rename the dataset (or tracking.experiment_prefix) without one of them")


def registered_model_name(params: Params) -> str:
    """`<prefix>-<dataset>`: the registered model is named like the dataset's experiment."""
    return tracking.experiment_name(params)


def champion_uri(params: Params) -> str:
    """`models:/genrec-<dataset>@champion`: what `genrec recommend` and `mlflow models serve` load."""
    return f"models:/{registered_model_name(params)}@{CHAMPION}"


def adapter_hash(model_dir: Path) -> str:
    """sha256 over the adapter weights and config: what identifies a trained adapter."""
    return fingerprint(model_dir / "adapter_model.safetensors", model_dir / "adapter_config.json")


def protocol_hash(protocol: dict) -> str:
    """Short hash of an evaluation protocol (beams, constraints, users...): equal protocols compare."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def store_backbone(params: Params, base_dir: Path) -> tuple[str, str]:
    """Upload the backbone once per content hash; return (artifact URI, sha256).

    The upload lives in a run of the experiment `<prefix>-backbones`; a finished run tagged with
    the same sha256 is reused, so a hundred adapters on one backbone store it once.
    """
    mlc = tracking.mlflow_client(params)
    sha256 = tracking.sha256_path(Path(base_dir))
    name = f"{params.tracking.experiment_prefix}-backbones"
    experiment = mlc.get_experiment_by_name(name)
    if experiment is None:
        root = tracking.artifact_root(params, tracking.tracking_uri(params))
        experiment_id = mlc.create_experiment(name, artifact_location=(root / name).as_uri() if root else None)
    else:
        experiment_id = experiment.experiment_id
    found = mlc.search_runs([experiment_id], filter_string=f"tags.`genrec.backbone_sha256` = {quoted(sha256)} "
                            "and attributes.status = 'FINISHED'", max_results=1)
    if found:
        return f"{found[0].info.artifact_uri}/{BACKBONE_ARTIFACT}", sha256
    log.info("uploading backbone %s (sha256 %s) to the artifact store", base_dir, sha256[:12])
    with tracking.tracking_store(params), \
            mlflow.start_run(experiment_id=experiment_id, run_name=f"backbone-{sha256[:12]}",
                             tags={"genrec.family": "backbone", "genrec.backbone_sha256": sha256,
                                   "genrec.backbone_source": params.model.base}) as run, \
            tracking.ended_on_sigterm(run):
        mlflow.log_artifacts(str(base_dir), artifact_path=BACKBONE_ARTIFACT)
    return f"{run.info.artifact_uri}/{BACKBONE_ARTIFACT}", sha256


def resolve_backbone(uri: str, sha256: str) -> Path:
    """A local folder holding the backbone at `uri`, checked against `sha256`.

    Local artifact stores are read in place; remote ones are downloaded first.

    Raises:
        DataError: the backbone is gone or its content differs from what the version was built on.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(url2pathname(parsed.path))
    elif parsed.scheme == "":
        path = Path(uri)
    else:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    if not path.is_dir():
        raise DataError("the backbone this model version references is missing", path=uri,
                        fix="restore the artifact store, or re-register the adapter with `genrec promote`")
    actual = tracking.sha256_path(path)
    if actual != sha256:
        raise DataError(f"backbone sha256 {actual[:12]} differs from the registered {sha256[:12]}", path=path,
                        fix="the artifact store was modified; re-register the adapter with `genrec promote`")
    return path


def parse_model_uri(model_uri: str) -> tuple[str, str]:
    """(registered model, version number or alias) of `models:/<name>/<version>` or `models:/<name>@<alias>`.

    Raises:
        DataError: any other URI (a run, a path, a served http(s) endpoint): genrec serves registry versions only.
    """
    fix = "pass a registry version, models:/<name>/<version> or models:/<name>@<alias>"
    if not model_uri.startswith("models:/"):
        scheme = urlparse(model_uri).scheme
        what = "a served model's http(s) endpoint" if scheme in ("http", "https") else "not a registry version"
        raise DataError(f"cannot load model {model_uri}: {what}; genrec loads only versions of its registry",
                        fix=fix)
    rest = model_uri.removeprefix("models:/").strip("/")
    name, alias_sep, alias = rest.partition("@")
    if not alias_sep:
        name, _, alias = rest.rpartition("/")
    if not name or not alias or "/" in name or not (alias_sep or alias.isdigit()):
        raise DataError(f"cannot load model {model_uri}: expected a version number or an alias", fix=fix)
    return name, alias


def load_version(params: Params, model_uri: str, eval_overrides: dict | None = None):
    """A registry version built by genrec, checked and loaded without running any code it holds.

    The version is downloaded to a temporary folder, `trust.check_built_by_genrec` accepts its MLmodel and
    entry point, `GenRecModel.load` checks its files against the version's hash tags and builds the model
    from them. `eval_overrides` replace settings of the version's stored `eval` section.

    Returns:
        (GenRecModel, ModelVersion, warnings: one line each).

    Raises:
        DataError: a URI that is not a version, a missing version, an unreadable store, a version genrec did
            not build, or files that differ from their hashes (one line each).
    """
    from mlflow.exceptions import MlflowException

    name, reference = parse_model_uri(model_uri)
    uri = tracking.tracking_uri(params)
    mlc = open_client(params)
    with store_errors(uri, f"read {model_uri}"):
        try:
            version = (mlc.get_model_version(name, reference) if reference.isdigit()
                       else mlc.get_model_version_by_alias(name, reference))
        except MlflowException as err:
            if not is_not_found(err):
                raise
            raise DataError(f"cannot load model {model_uri}: {err.message.splitlines()[0]}",
                            fix="run `genrec promote` (dvc repro promote) first, or pass --model with an "
                                "existing URI") from None
    source = f"{model_uri} (version {version.version})"
    warnings = []
    if ARCHIVED_TAG in version.tags:
        warnings.append(f"{source} was archived ({version.tags[ARCHIVED_TAG]}) and is served anyway: the alias "
                        f"was set on it by hand")
    with tempfile.TemporaryDirectory() as tmp:
        with store_errors(uri, f"download {source}"), tracking.tracking_store(params):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}",
                                                             dst_path=tmp))
        pyfunc = trust.check_built_by_genrec(local, MODEL_CODE, source)
        config = pyfunc["config"]
        config = {**config, "eval": {**config["eval"], **(eval_overrides or {})}}
        adapter_dir, items_path = (local / pyfunc["artifacts"][key]["path"] for key in trust.ARTIFACTS)
        model = GenRecModel()
        expected = {tag: version.tags[tag] for tag in trust.HASH_TAGS if tag in version.tags}
        with tracking.tracking_store(params):  # a backbone in a remote artifact store downloads from it
            unchecked = model.load(adapter_dir, items_path, config, expected=expected, source=source)
    if unchecked:
        warnings.append(f"{source} records no {', '.join(unchecked)} (registered before genrec recorded them): "
                        "those files were loaded unchecked")
    return model, version, warnings


def find_version(mlc, name: str, adapter_sha256: str):
    """The version of `name` registered for this adapter (tag `adapter_sha256`), or None."""
    for version in mlc.search_model_versions(f"name = {quoted(name)}"):
        if version.tags.get("adapter_sha256") == adapter_sha256:
            return version
    return None


def register_adapter(params: Params, *, model_dir: Path, base_dir: Path, items_path: Path, tags: dict[str, str]):
    """Register the adapter in `model_dir` as a pyfunc version of `genrec-<dataset>`, once.

    The pyfunc is logged into the adapter's own training run (its id is in mlflow_run.json); the
    version's `git_commit` is that run's commit, and the sha256 of each group of files it serves from
    (`trust.content_hashes`) is both a tag and part of its model config. An adapter already registered (same
    adapter_sha256 tag) gets no new version; only its evaluation tags (MUTABLE_TAGS) are updated if they changed.

    Returns:
        (ModelVersion, created: bool).
    """
    mlc = open_client(params)
    name = registered_model_name(params)
    tags = {**tags, "adapter_sha256": adapter_hash(model_dir)}
    with store_errors(tracking.tracking_uri(params), f"search the versions of {name}"):
        existing = find_version(mlc, name, tags["adapter_sha256"])
    if existing is not None:
        # Lineage stays as registered; only evaluation results may change (e.g. re-evaluated metrics).
        changed = {k: v for k, v in tags.items() if k.startswith(MUTABLE_TAGS) and existing.tags.get(k) != v}
        for key, value in changed.items():
            mlc.set_model_version_tag(name, existing.version, key, value)
        log.info("adapter already registered as %s version %s%s", name, existing.version,
                 f"; updated tags {sorted(changed)}" if changed else "")
        return mlc.get_model_version(name, existing.version), False
    run_id = tracking.read_run_id(model_dir)
    if not tracking.run_exists(params, run_id):
        raise DataError(f"MLflow run {run_id} is not in the tracking store {tracking.tracking_uri(params)}",
                        path=model_dir / tracking.RUN_FILE, fix="use the tracking URI the model was trained with "
                        "(tracking.uri or MLFLOW_TRACKING_URI), or retrain")
    backbone_uri, backbone_sha256 = store_backbone(params, base_dir)
    trained_at = mlc.get_run(run_id).data.tags.get("mlflow.source.git.commit")
    hashes = trust.content_hashes(model_dir, items_path, tags["adapter_sha256"])
    tags.update(hashes, backbone_sha256=backbone_sha256,
                git_commit=trained_at or tracking.git_commit() or "unknown")
    with tracking.start_or_resume_run(params, run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        # Models from code: the version stores this three-line entry point, not a pickle of the class.
        code = Path(tmp) / "genrec_model.py"
        code.write_text(MODEL_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, python_model=str(code),
            artifacts={"adapter": str(model_dir), "items": str(items_path)},
            model_config={"backbone_uri": backbone_uri, "backbone_sha256": backbone_sha256,
                          "eval": to_dict(params.eval), "dataset": params.dataset, "sha256": hashes},
            signature=signature(params.eval.num_beams), pip_requirements=requirements())
    with tracking.tracking_store(params):
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    log.info("registered %s version %s from run %s", name, version.version, run_id)
    return version, True


def signature(default_k: int):
    """Input columns history (array of strings) and optional k (on every row or none); param k for a
    whole batch; output ranked titles and scores (plus item_ids and unknown, not enforced)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(Array(DataType.string), "history"), ColSpec(DataType.long, "k", required=False)])
    outputs = Schema([ColSpec(Array(DataType.string), "titles"), ColSpec(Array(DataType.double), "scores")])
    params = ParamSchema([ParamSpec("k", DataType.long, default_k)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def requirements() -> list[str]:
    return [f"{package}=={importlib.metadata.version(package)}" for package in REQUIREMENTS]


def describe_version(params: Params, version, text: str) -> bool:
    """Set the version's description (markdown, shown on its page in the MLflow UI) if it differs.

    Returns:
        Whether it changed.
    """
    if (version.description or "") == text:
        return False
    tracking.mlflow_client(params).update_model_version(registered_model_name(params), version.version,
                                                        description=text)
    return True
