"""Split stage: filter the interactions, order them in time, leave one out, validate, write.

    genrec split --interim data/interim/<dataset> --out data/processed/<dataset> \\
        --report reports/data_validation --metrics reports/split_stats.json

Reads the canonical `interactions.parquet` and `items.parquet`; writes `train/valid/test.parquet`
(user_id, item_id, timestamp, position, rating if present; sorted by user_id, position) and the
catalogue `items.parquet` restricted to items in the split. The great-expectations results and data
docs always go to the report folder; the split itself is written only when every check passes.
Outputs are byte-identical for the same input: fixed row order, no index, no timestamps in metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec import split, validation
from genrec.errors import DataError
from genrec.io import atomic_path, write_json
from genrec.params import Params

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
SPLIT_COLUMNS = ("user_id", "item_id", "timestamp", "position", "rating")


def _require(table: pa.Table, path: Path, columns: tuple[str, ...]) -> None:
    """Fail with the file, column and first bad row when a required column is missing or has nulls."""
    for column in columns:
        if column not in table.column_names:
            raise DataError("missing column", path=path, column=column,
                            fix="re-run `genrec ingest`, which writes the canonical columns")
        if table[column].null_count:
            row = int(np.argmax(table[column].is_null().to_numpy(zero_copy_only=False)))
            raise DataError("empty value", path=path, row=row, column=column,
                            fix="re-run `genrec ingest`, which rejects rows without ids or timestamps")


def _sorted_categorical(column: pa.ChunkedArray, numeric_first: bool = False) -> pd.Categorical:
    """An Arrow id column as a pandas Categorical whose categories are the sorted ids.

    Parquet stores ids dictionary-encoded, so reading them as dictionaries never materialises
    25M Python strings. Sorted categories make code order equal id order (how users are ordered).
    With `numeric_first`, all-digit ids sort by number ("9" < "10"): the order MovieLens files
    list a user's items in, which lets `split.duplicate_mask` skip hashing tied rows.
    """
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    column = column.unify_dictionaries().combine_chunks() if column.num_chunks > 1 else column.chunk(0)
    labels = column.dictionary.cast(pa.string()).to_pylist()
    numeric = numeric_first and all(label.isdigit() for label in labels)
    order = np.array(sorted(range(len(labels)), key=lambda j: (len(labels[j]), labels[j]) if numeric else labels[j]),
                     dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return pd.Categorical.from_codes(rank[column.indices.to_numpy(zero_copy_only=False)],
                                     categories=pd.Index(np.asarray(labels, dtype=object)[order], dtype=object))


def read_interactions(path: Path) -> pd.DataFrame:
    """Canonical interactions, ids as categoricals with sorted categories, in file order."""
    if not path.exists():
        raise DataError("not found", path=path, fix="run `genrec ingest` first")
    names = pq.read_schema(path).names
    columns = [c for c in SPLIT_COLUMNS if c in names and c != "position"]
    table = pq.read_table(path, columns=columns, memory_map=True,
                          read_dictionary=[c for c in ("user_id", "item_id") if c in names])
    _require(table, path, INTERACTION_COLUMNS)
    # Users sort as text: that is the order of the written split. Item order is internal only.
    frame = {"user_id": _sorted_categorical(table["user_id"]),
             "item_id": _sorted_categorical(table["item_id"], numeric_first=True),
             "timestamp": table["timestamp"].to_numpy().astype(np.int64)}
    if "rating" in columns:
        frame["rating"] = table["rating"].to_numpy().astype(np.float64)
    return pd.DataFrame(frame, copy=False)


def read_items(path: Path) -> pd.DataFrame:
    """Canonical item catalogue (item_id, title)."""
    if not path.exists():
        raise DataError("not found", path=path, fix="run `genrec ingest` first")
    table = pq.read_table(path)
    _require(table, path, ("item_id",))
    if "title" not in table.column_names:
        raise DataError("missing column", path=path, column="title", fix="re-run `genrec ingest`")
    return table.select(["item_id", "title"]).to_pandas().astype({"item_id": str})


def catalogue(items: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """The catalogue rows of items that occur in `interactions`, sorted by item_id."""
    used = interactions["item_id"].unique()
    kept = items[items["item_id"].isin(np.asarray(used, dtype=object))]
    return kept.sort_values("item_id", kind="stable").reset_index(drop=True)


def _arrow(column: pd.Series) -> pa.Array:
    if isinstance(column.dtype, pd.CategoricalDtype):
        # Hand Parquet the dictionary as it is: no 25M Python strings, no re-encoding.
        ids = pa.array(column.cat.categories.to_numpy(dtype=object), type=pa.string())
        return pa.DictionaryArray.from_arrays(pa.array(column.cat.codes.to_numpy()), ids)
    if column.dtype.kind in "iuf":
        return pa.array(column.to_numpy())
    return pa.array(column.to_numpy(dtype=object), type=pa.string())


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Plain Arrow table, no pandas index or metadata: the same frame gives the same bytes.

    `store_schema=False` drops the Arrow schema, so readers see plain string ids rather than the
    dictionary type used to write them (the file stores strings dictionary-encoded either way).
    """
    table = pa.table({name: _arrow(frame[name]) for name in frame.columns})
    pq.write_table(table, path, store_schema=False)


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
    interactions = read_interactions(source)
    items = read_items(interim_dir / "items.parquet")
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
    kept_items = catalogue(items, ordered)

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

    written = {name: out_dir / f"{name}.parquet" for name in (*split.SPLITS, "items")}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in split.SPLITS:
            write_parquet(parts[name][[c for c in SPLIT_COLUMNS if c in parts[name].columns]],
                          tmp / written[name].name)
        write_parquet(kept_items, tmp / written["items"].name)
    metrics = split.stats(ordered, parts, filtering)
    write_json(metrics_path, metrics)
    log.info("split %d users, %d items: %d train, %d valid, %d test rows -> %s", metrics["users"], metrics["items"],
             metrics["train_rows"], metrics["valid_rows"], metrics["test_rows"], out_dir)
    return {**written, "metrics": Path(metrics_path), "validation": validation_path,
            "data_docs": docs_dir / "index.html"}
