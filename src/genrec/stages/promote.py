"""Promote stage: register the trained adapter and move the registry alias `champion` to the best version.

    genrec promote --model models/<dataset>/genrec --base models/base \\
        --processed data/processed/<dataset> --valid-metrics reports/<dataset>/metrics_valid/genrec.json \\
        --test-metrics reports/<dataset>/metrics/genrec.json --out reports/<dataset>/promotion.json

The adapter becomes (at most once) a pyfunc version of `genrec-<dataset>` tagged with its validation
and test HR/NDCG, the split fingerprint, the validation protocol, the git commit and the backbone
(`genrec.registry`). `champion` moves only to a version with a strictly better VALIDATION NDCG@10
on the same split and protocol. Without a validation NDCG@10 the stage refuses: choosing on test
metrics would tune on the test set. `reports/<dataset>/promotion.json` says who was champion, who is, and why.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from genrec import registry, tracking
from genrec.errors import DataError
from genrec.io import split_fingerprint, write_json
from genrec.params import Params
from genrec.layout import SPLITS

log = logging.getLogger(__name__)

TAGGED_METRICS = ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10")
REQUIRED_METRICS = ("hr_at_10", "ndcg_at_10")


def run(params: Params, *, model_dir: Path, base_dir: Path, processed_dir: Path, valid_metrics_path: Path,
        test_metrics_path: Path, out_path: Path) -> dict:
    """Register the adapter in `model_dir`, apply the promotion rule, write `out_path`.

    Returns:
        The promotion report written to `out_path`.

    Raises:
        DataError: a missing or malformed metrics file (in particular no validation NDCG@10), a
            metrics file of the wrong split, an adapter of another dataset, or a missing input.
    """
    model_dir, processed_dir = Path(model_dir), Path(processed_dir)
    valid = read_metrics(Path(valid_metrics_path), "valid")
    test = read_metrics(Path(test_metrics_path), "test")
    config = read_model_config(model_dir, params.dataset)
    items_path = processed_dir / "items.parquet"
    for path in [items_path, *(processed_dir / f"{name}.parquet" for name in SPLITS)]:
        if not path.exists():
            raise DataError("not found", path=path, fix="run `genrec split` first (dvc repro split)")
    tags = version_tags(valid, test, config, params,
                        split_fingerprint=split_fingerprint(processed_dir))
    version, created = registry.register_adapter(params, model_dir=model_dir, base_dir=Path(base_dir),
                                                 items_path=items_path, tags=tags)
    decision = registry.promote(params, version)
    report = promotion_report(params, version, created, decision)
    write_json(out_path, report)
    log.info("%s: champion is version %s (%s)", out_path, decision.champion, decision.reason)
    return report


def read_metrics(path: Path, split: str) -> dict:
    """A metrics file written by `genrec evaluate` on `split`, with HR@10 and NDCG@10.

    Raises:
        DataError: missing file, wrong split, or a missing/non-finite metric (never guessed).
    """
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
    for name in REQUIRED_METRICS:
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"no {split} {name} (found {value!r}): promotion refuses to guess", path=path,
                            column=name, fix=fix + " with 10 in eval.k")
    return metrics


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


def version_tags(valid: dict, test: dict, config: dict, params: Params, split_fingerprint: str) -> dict[str, str]:
    """Registry tags: metrics (exact float text, so ties are exact), lineage and comparability keys.

    `registry.register_adapter` adds adapter_sha256, backbone_sha256 and the training run's git commit.
    """
    tags = {f"{split}.{name}": repr(float(metrics[name]))
            for split, metrics in (("valid", valid), ("test", test)) for name in TAGGED_METRICS if name in metrics}
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


def promotion_report(params: Params, version, created: bool, decision: registry.Decision) -> dict:
    """Who was champion, who is, why, and every version's validation and test figures."""
    mlc = tracking.mlflow_client(params)
    name = registry.registered_model_name(params)
    versions = sorted(mlc.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    by_number = {str(v.version): v for v in versions}

    def summary(number):
        if number is None:
            return None
        v = by_number[str(number)]
        return {"version": int(v.version), "run_id": v.run_id,
                **{k: _number(v.tags.get(k)) for k in ("valid.ndcg_at_10", "valid.hr_at_10", "test.ndcg_at_10",
                                                       "test.hr_at_10")},
                "split_fingerprint": v.tags.get("split_fingerprint"), "valid_protocol": v.tags.get("valid_protocol")}

    return {"registered_model": name, "alias": registry.CHAMPION, "model_uri": registry.champion_uri(params),
            "select_metric": registry.SELECT_TAG, "rule": "best validation NDCG@10 among versions with the same "
            "split and validation protocol; ties keep the champion; never a worse version; test metrics never used",
            "this_version": {**summary(version.version), "created": created},
            "previous_champion": summary(decision.previous), "champion": summary(decision.champion),
            "moved": decision.moved, "reason": decision.reason, "versions": [summary(v.version) for v in versions]}


def _number(text: str | None) -> float | None:
    return float(text) if text is not None else None
