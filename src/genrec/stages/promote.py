"""Promote stage: register the trained adapter, write its model card, and decide who holds `champion`.

    genrec promote --model models/<dataset>/genrec --base models/base --processed data/processed/<dataset> \\
        --valid-metrics reports/<dataset>/metrics_valid/genrec.json \\
        --valid-predictions reports/<dataset>/predictions_valid/genrec.jsonl \\
        --test-metrics reports/<dataset>/metrics/genrec.json --out reports/<dataset>/promotion.json
    genrec promote --set dataset=<dataset> --reset --reason "protocol changed: 20 beams"

The adapter becomes (at most once) a pyfunc version of `genrec-<dataset>` tagged with its validation
and test HR/NDCG, the split fingerprint, the validation protocol, the git commit and the backbone
(`genrec.tracking.registry`). Its per-user validation ranks are stored with it, and its description is a model
card built from its lineage (`genrec.tracking.model_card`, with the baselines' test metrics found beside the test
metrics file). `champion` moves only to a version that scores higher on VALIDATION `promote.metric` on the
same split and protocol AND wins a paired bootstrap over the validation users at `promote.alpha`
(`genrec.tracking.promotion`; `alpha: null`: higher is enough; a test over fewer than `promote.min_users` users
decides nothing), among versions that name items the same way (tag `genrec.items`, from the metrics files'
`index`, else "title"): a champion of another item representation stops the stage, unless
`promote.across_representations` is true. Without validation metrics the stage refuses: choosing on test
metrics would tune on the test set. Nor does it register numbers of something else: the metrics files must
carry --model's adapter hash and --processed's split fingerprint, and the validation predictions must be the
file whose sha256 the validation metrics record (`check_evidence`). `reports/<dataset>/promotion.json` says who
was champion, who is, why, and the test that decided. `--reset` archives the champion (when the split or
protocol changed, it can be compared with nothing new) so that the next promotion starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from genrec.tracking import model_card
from genrec.tracking import promotion
from genrec.tracking import registry
from genrec.tracking import runs as tracking
from genrec.errors import DataError
from genrec.io import sha256_file, split_fingerprint, write_json
from genrec.config.layout import SPLITS
from genrec.evaluation.metrics import Rank, metric_names, parse_metric
from genrec.config.params import Params, to_dict
from genrec.evaluation.outputs import read_ranks

log = logging.getLogger(__name__)



def run(params: Params, *, model_dir: Path, base_dir: Path, processed_dir: Path, valid_metrics_path: Path,
        valid_predictions_path: Path, test_metrics_path: Path, out_path: Path, analysis_path: Path | None = None) -> dict:
    """Register the adapter in `model_dir`, store its validation ranks and card, apply the rule, write `out_path`.

    With `analysis_path` (the report's analysis.json), the card lists this version's test slices and
    beyond-accuracy metrics (`read_slices`).

    Returns:
        The promotion report written to `out_path`.

    Raises:
        DataError: a missing or malformed metrics or predictions file (in particular no validation NDCG@10),
            a metrics file of the wrong split, validation and test metrics of different item representations,
            an adapter of another dataset, a missing input, or metrics and predictions that are not the
            evaluation of `model_dir` on `processed_dir` (`check_evidence`), or an analysis.json that is not
            of the test metrics' evaluation (`read_slices`).
        promotion.RepresentationMismatch: the champion names items otherwise than this version and
            `promote.across_representations` is false (the version is registered, the champion kept).
    """
    model_dir, processed_dir, base_dir = Path(model_dir), Path(processed_dir), Path(base_dir)
    valid = read_metrics(Path(valid_metrics_path), "valid", params.promote.metric)
    test = read_metrics(Path(test_metrics_path), "test", params.promote.metric)
    ranks = read_valid_ranks(Path(valid_predictions_path), valid, Path(valid_metrics_path))
    items = item_representation(valid, test, Path(test_metrics_path))
    config = read_model_config(model_dir, params.dataset)
    items_path = processed_dir / "items.parquet"
    for path in [items_path, *(processed_dir / f"{name}.parquet" for name in SPLITS)]:
        if not path.exists():
            raise DataError("not found", path=path, fix="run `genrec split` first (dvc repro split)")
    fingerprint = split_fingerprint(processed_dir)
    adapter = registry.adapter_hash(model_dir)
    check_evidence(valid, Path(valid_metrics_path), "valid", adapter=adapter, fingerprint=fingerprint,
                   predictions_path=Path(valid_predictions_path))
    check_evidence(test, Path(test_metrics_path), "test", adapter=adapter, fingerprint=fingerprint)
    slices = None if analysis_path is None else read_slices(Path(analysis_path), test, Path(test_metrics_path))
    tags = {**version_tags(valid, test, config, params, split_fingerprint=fingerprint), promotion.ITEMS_TAG: items}
    version, created = registry.register_adapter(params, model_dir=model_dir, base_dir=base_dir,
                                                 items_path=items_path, tags=tags)
    promotion.store_valid_ranks(params, version, ranks)
    version = tracking.mlflow_client(params).get_model_version(version.name, version.version)
    card = model_card.model_card(
        name=version.name, version=str(version.version), tags=version.tags, config=config,
        adapter=read_json(model_dir / "adapter_config.json"), template=read_json(model_dir / "template.json"),
        valid=valid, test=test,
        baselines=read_baselines(Path(test_metrics_path), fingerprint), slices=slices,
        data_hashes=data_hashes(params, version.run_id, base_dir, processed_dir), run_id=version.run_id)
    registry.describe_version(params, version, card)
    decision = promotion.promote(params, version)
    report = promotion_report(params, version, created, decision)
    write_json(out_path, report)
    log.info("%s: champion is version %s (%s)", out_path, decision.champion, decision.reason)
    return report


def reset(params: Params, *, reason: str) -> dict:
    """Archive the current champion with `reason` (`promotion.archive_champion`); the next promotion starts afresh.

    Returns:
        What was archived ({"archived": null} when there was no champion).
    """
    archived = promotion.archive_champion(params, reason)
    log.info("next: promote the new adapter (dvc repro -f promote@%s, or genrec promote with its paths)",
             params.dataset)
    return {"archived": archived}


def read_metrics(path: Path, split: str, metric: str = "ndcg_at_10") -> dict:
    """A metrics file written by `genrec evaluate` on `split`, with a finite `metric` (`promote.metric`).

    Raises:
        DataError: missing file, wrong split, an unknown metric name (one genrec cannot recompute per user,
            e.g. `mrr_at_10`), or a missing/non-finite metric (never guessed).
    """
    try:
        parse_metric(metric)
    except ValueError as err:
        raise DataError(f"promote.metric: {err}", path=path, column=metric,
                        fix="set promote.metric to a metric of this file (its names follow eval.k)") from None
    fix = (f"run the evaluate stage with eval.split={split} (dvc repro "
           f"{'evaluate_valid' if split == 'valid' else 'evaluate'})")
    if not path.exists():
        raise DataError(f"no {split} metrics: promotion refuses to choose without them", path=path, fix=fix)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"not JSON ({err.msg})", path=path, fix=fix) from None
    found = (metrics.get("protocol") or {}).get("split")
    if found != split:
        raise DataError(f"metrics of split {found!r} where {split!r} was expected", path=path, fix=fix)
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        k = metric.rpartition("_at_")[2]
        raise DataError(f"no {split} {metric} (found {value!r}): promotion refuses to guess", path=path,
                        column=metric, fix=fix + f" with {k} in eval.k")
    return metrics


def check_evidence(metrics: dict, path: Path, split: str, *, adapter: str, fingerprint: str,
                   predictions_path: Path | None = None) -> None:
    """Check that a metrics file measured this adapter on this split, and that the predictions are its own.

    The metrics file's `model_sha256` must be the adapter's hash (`registry.adapter_hash`), its `split_fingerprint`
    the fingerprint of --processed, and its `predictions_sha256` the sha256 of `predictions_path` (the file the
    same evaluation wrote). A file without them was written before genrec recorded them: refused, not guessed.

    Raises:
        DataError: one line naming the file, the field and both values.
    """
    stage = "evaluate_valid" if split == "valid" else "evaluate"
    fix = f"evaluate --model on --processed (dvc repro {stage}) and pass the files that evaluation wrote"
    for key, expected, source in (("model_sha256", adapter, "--model's adapter"),
                                  ("split_fingerprint", fingerprint, "--processed's split")):
        found = metrics.get(key)
        if not found:
            raise DataError(f"{split} metrics without {key} (written before genrec recorded what an evaluation "
                            "measured): promotion refuses to guess", path=path, column=key, fix=fix)
        if found != expected:
            raise DataError(f"{split} metrics of another {'model' if key == 'model_sha256' else 'split'}: "
                            f"{key} {found[:12]}..., but {source} is {expected[:12]}...", path=path, column=key,
                            fix=fix)
    if predictions_path is None:
        return
    recorded, actual = metrics.get("predictions_sha256"), sha256_file(predictions_path)
    if recorded != actual:
        raise DataError(f"not the predictions of {path} (sha256 {actual[:12]}..., the metrics record "
                        f"{str(recorded)[:12]}...)", path=predictions_path, fix=fix)


def item_representation(valid: dict, test: dict, test_path: Path) -> str:
    """How the evaluated model names items: the metrics files' `index` ("title" when they name none).

    Raises:
        DataError: the validation and test metrics name different representations.
    """
    ours, theirs = (str(metrics.get("index") or promotion.DEFAULT_ITEMS) for metrics in (valid, test))
    if ours != theirs:
        raise DataError(f"test metrics of item representation {theirs!r} beside validation metrics of {ours!r}",
                        path=test_path, column="index", fix="evaluate the same model on both splits")
    return ours


def read_model_config(model_dir: Path, dataset: str) -> dict:
    """config.json beside the adapter, checked to belong to this dataset."""
    path = model_dir / "config.json"
    if not path.exists() or not (model_dir / "adapter_model.safetensors").exists():
        raise DataError("no trained adapter here", path=model_dir, fix="run `genrec train` first (dvc repro train)")
    config = json.loads(path.read_text(encoding="utf-8"))
    trained_on = (config.get("params") or {}).get("dataset")
    if trained_on is not None and trained_on != dataset:
        raise DataError(f"the adapter was trained on dataset {trained_on!r}, not {dataset!r}", path=path,
                        fix="promote it with --set dataset=" + str(trained_on))
    return config


def read_valid_ranks(path: Path, valid: dict, metrics_path: Path) -> dict[str, Rank]:
    """Per-user validation ranks from the predictions file, checked to be the metrics file's users.

    Raises:
        DataError: a missing or malformed file, or another number of users than the metrics file's.
    """
    ranks = read_ranks(path)
    if valid.get("users") is not None and valid["users"] != len(ranks):
        raise DataError(f"{len(ranks)} users, but {metrics_path} reports {valid['users']}", path=path,
                        fix="rerun the evaluate_valid stage, which writes both (dvc repro evaluate_valid)")
    return ranks


def read_slices(path: Path, test: dict, test_metrics_path: Path) -> dict:
    """The test metrics' model in the report's analysis.json, with the analysis' buckets and users.

    Raises:
        DataError: the file is missing or not JSON, does not hold the model, or holds slices of another
            evaluation (its `predictions_sha256` is not the test metrics').
    """
    fix = "rerun the report stage on these test metrics (dvc repro report)"
    if not path.exists():
        raise DataError("not found", path=path, fix=fix)
    try:
        analysis = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"not JSON ({err.msg})", path=path, fix=fix) from None
    model = str(test.get("model") or test_metrics_path.stem)
    found = (analysis.get("models") or {}).get(model) if isinstance(analysis, dict) else None
    if found is None:
        raise DataError(f"no slices of {model!r}", path=path, column=f"models.{model}", fix=fix)
    if found.get("predictions_sha256") != test.get("predictions_sha256"):
        raise DataError(f"the slices of {model!r} are of predictions {str(found.get('predictions_sha256'))[:12]}, the "
                        f"test metrics of {str(test.get('predictions_sha256'))[:12]} ({test_metrics_path}): another "
                        "evaluation", path=path, column=f"models.{model}.predictions_sha256", fix=fix)
    return {**found, "buckets": analysis.get("buckets") or {}, "users_note": analysis.get("users"),
            "split": analysis.get("split")}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_baselines(test_metrics_path: Path, fingerprint: str) -> dict[str, dict]:
    """Other models' test metrics beside `test_metrics_path` computed on the same split, by model name."""
    found = {}
    for path in sorted(test_metrics_path.parent.glob("*.json")):
        if path.resolve() == test_metrics_path.resolve():
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (isinstance(metrics, dict) and "ndcg_at_10" in metrics and metrics.get("split_fingerprint") == fingerprint
                and (metrics.get("protocol") or {}).get("split") == "test"):
            found[str(metrics.get("model") or path.stem)] = metrics
    return found


def data_hashes(params: Params, run_id: str, base_dir: Path, processed_dir: Path) -> dict[str, str]:
    """The training run's recorded input hashes (`data.*` params) and those of this stage's inputs (dvc.lock)."""
    logged = tracking.mlflow_client(params).get_run(run_id).data.params
    hashes = {f"{logged.get(f'data.{name}_path', name)} (training)": logged[f"data.{name}"]
              for name in ("base", "prompts") if f"data.{name}" in logged}
    return {**hashes, **tracking.data_hashes([base_dir, processed_dir])}


def version_tags(valid: dict, test: dict, config: dict, params: Params, split_fingerprint: str) -> dict[str, str]:
    """Registry tags: metrics (exact float text, so ties are exact), lineage and comparability keys.

    `registry.register_adapter` adds adapter_sha256, backbone_sha256 and the training run's git commit.
    """
    tags = {f"{split}.{name}": repr(float(metrics[name])) for split, metrics in (("valid", valid), ("test", test))
            for name in metric_names((metrics.get("protocol") or {}).get("k") or (5, 10)) if name in metrics}
    tags.update({f"{split}.users": str(metrics.get("users")) for split, metrics in (("valid", valid), ("test", test))})
    base = config.get("base_model") or {}
    tags.update({
        "split_fingerprint": split_fingerprint,
        "valid_protocol": registry.protocol_hash(valid["protocol"]),
        "backbone": str(((config.get("params") or {}).get("model") or {}).get("base") or params.model.base),
        "backbone_model_type": str(base.get("model_type")),
        "dataset": params.dataset,
    })
    return tags


def promotion_report(params: Params, version, created: bool, decision: promotion.Decision) -> dict:
    """Who was champion, who is, why, the test that decided, and every version's validation and test figures."""
    mlc = tracking.mlflow_client(params)
    name = registry.registered_model_name(params)
    versions = sorted(mlc.search_model_versions(f"name = {registry.quoted(name)}"), key=lambda v: int(v.version))
    by_number = {str(v.version): v for v in versions}

    def summary(number):
        if number is None:
            return None
        v = by_number[str(number)]
        shown = dict.fromkeys([promotion.select_tag(params.promote.metric), "valid.ndcg_at_10", "valid.hr_at_10",
                               "test.ndcg_at_10", "test.hr_at_10"])
        return {"version": int(v.version), "run_id": v.run_id, **{k: _number(v.tags.get(k)) for k in shown},
                "split_fingerprint": v.tags.get("split_fingerprint"), "valid_protocol": v.tags.get("valid_protocol"),
                "items": promotion.items_of(v),
                "archived_reason": v.tags.get(promotion.ARCHIVED_TAG)}

    rule = ("best validation score among versions with the same split and validation protocol"
            + ("" if params.promote.across_representations else " and item representation")
            + "; a challenger must "
            + (f"also win a paired bootstrap over at least {params.promote.min_users} validation users (two-sided "
               "p < alpha, positive difference)"
               if params.promote.alpha is not None else "only score higher (promote.alpha: null)")
            + "; ties, non-significant wins and tests over too few users keep the champion; test metrics never used")
    return {"registered_model": name, "alias": registry.CHAMPION, "model_uri": registry.champion_uri(params),
            "select_metric": promotion.select_tag(params.promote.metric), "promote": to_dict(params.promote),
            "rule": rule, "this_version": {**summary(version.version), "created": created},
            "previous_champion": summary(decision.previous), "champion": summary(decision.champion),
            "moved": decision.moved, "reason": decision.reason, "test": decision.test,
            "versions": [summary(v.version) for v in versions]}


def _number(text: str | None) -> float | None:
    return float(text) if text is not None else None
