"""Split stage: filter the interactions, order them in time, leave one out, validate, write.

    genrec split --interim data/interim/<dataset> --out data/processed/<dataset> \\
        --report reports/<dataset>/data_validation --metrics reports/<dataset>/split_stats.json

Reads the canonical `interactions.parquet` and `items.parquet`; writes `train/valid/test.parquet`
(user_id, item_id, timestamp, position, rating if present; sorted by user_id, position) and the
catalogue `items.parquet` restricted to items in the split. The great-expectations results and data
docs always go to the report folder; the split itself is written only when every check passes.
Outputs are byte-identical for the same input: fixed row order, no index, no timestamps in metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genrec.data import split
from genrec.data import validation
from genrec.errors import DataError
from genrec.io import atomic_path, write_json
from genrec.config.layout import SPLITS
from genrec.config.params import Params

log = logging.getLogger(__name__)

def run(params: Params, *, interim_dir: Path, out_dir: Path, report_dir: Path, metrics_path: Path) -> dict:
    """Filter, order, split and validate `interim_dir`'s interactions; write the split and its report.

    Raises:
        DataError: input missing or malformed, nothing left after filtering, or a validation check
            failed (then the report is written and `out_dir` is left untouched).

    Returns:
        Paths written, by name.
    """
    interim_dir, out_dir, report_dir = Path(interim_dir), Path(out_dir), Path(report_dir)
    cfg = params.split
    source = interim_dir / "interactions.parquet"
    interactions = split.read_interactions(source)
    items = split.read_items(interim_dir / "items.parquet")
    log.info("read %d interactions and %d items from %s", len(interactions), len(items), interim_dir)
    try:
        # Sort once up front: every filter keeps row order, so the final ordering needs no second sort.
        filtered, filtering = split.filter_interactions(
            split.sort_chronologically(interactions), cfg.user_core, cfg.item_core, cfg.min_rating,
            cfg.min_sequence_length)
    except ValueError as err:
        raise DataError(str(err), path=source, column="rating", fix="unset split.min_rating") from None
    del interactions  # 25M rows: free them before the split copies its parts
    if filtered.empty:
        raise DataError("no interactions left after filtering", path=source,
                        fix="lower split.user_core / split.item_core or unset split.min_rating")
    ordered = split.order_chronologically(filtered)
    parts = split.leave_one_out(ordered)
    kept_items = split.catalogue(items, ordered)

    validation_path, docs_dir = report_dir / "validation.json", report_dir / "data_docs"
    with atomic_path(report_dir) as tmp:
        tmp.mkdir()
        results = validation.validate_split(
            ordered, parts, kept_items, min_user_rows=max(cfg.user_core, cfg.min_sequence_length),
            item_core=cfg.item_core, docs_dir=tmp / docs_dir.name)
        write_json(tmp / validation_path.name, results)
    log.info("validation results in %s, data docs at %s", validation_path, docs_dir / "index.html")
    if not results["success"]:
        lines = validation.failures(results)
        raise DataError(f"the split failed {len(lines)} great-expectations check(s):\n  - " + "\n  - ".join(lines),
                        path=validation_path, fix=f"see {docs_dir / 'index.html'}; nothing was written to {out_dir}")

    written = {name: out_dir / f"{name}.parquet" for name in (*SPLITS, "items")}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in SPLITS:
            split.write_parquet(parts[name][[c for c in split.SPLIT_COLUMNS if c in parts[name].columns]],
                                tmp / written[name].name)
        split.write_parquet(kept_items, tmp / written["items"].name)
    metrics = split.stats(ordered, parts, filtering)
    write_json(metrics_path, metrics)
    log.info("split %d users, %d items: %d train, %d valid, %d test rows -> %s", metrics["users"], metrics["items"],
             metrics["train_rows"], metrics["valid_rows"], metrics["test_rows"], out_dir)
    return {**written, "metrics": Path(metrics_path), "validation": validation_path,
            "data_docs": docs_dir / "index.html"}
