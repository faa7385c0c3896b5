"""k-core filtering, chronological order and leave-one-out: pure, vectorised functions, and the
split's Parquet readers and writer (`read_interactions`, `read_items`, `write_parquet`).

Frames hold the canonical interaction columns (`user_id`, `item_id`, `timestamp`, optional `rating`).
Ids may be plain strings or pandas categoricals; the split stage makes them categoricals with sorted
categories once, so that every function here works on integer codes without re-encoding 25M strings.
Users are ordered by code, which for sorted categories (or plain strings) is lexicographic id order.

Tie-break for equal timestamps: a *stable* sort on (user, timestamp) keeps the input order, which
is the source-file order (MovieLens lists a user's ratings by movieId, so ties resolve by movieId;
ml-latest-small has 23,228 ratings that share a (user, timestamp)).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.errors import DataError
from genrec.config.layout import SPLITS

log = logging.getLogger(__name__)

QUANTILES = {"p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90}


def codes(ids: pd.Series) -> tuple[np.ndarray, int]:
    """Integer codes of an id column and the number of distinct codes they index.

    Categoricals give their codes as they are (int32 for up to 2**31 ids: half the memory of
    int64); other columns are factorised in sorted order.
    """
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return ids.cat.codes.to_numpy(), len(ids.cat.categories)
    values, uniques = pd.factorize(ids, sort=True)
    return values, len(uniques)


def user_time_key(user_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """One int64 per row that sorts like (user, timestamp).

    Falls back to the timestamps' dense rank when users x timestamp span would overflow int64.
    """
    timestamps = np.asarray(timestamps, dtype=np.int64)
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = timestamps - timestamps.min()
    span = int(offset.max()) + 1
    if (int(user_codes.max()) + 1) * span >= 2**62:
        offset = np.unique(timestamps, return_inverse=True)[1].astype(np.int64)
        span = int(offset.max()) + 1
    return user_codes.astype(np.int64) * span + offset


def stable_order(key: np.ndarray) -> np.ndarray | None:
    """Permutation that stably sorts `key`, or None when it is already sorted (the common case)."""
    if len(key) < 2 or bool(np.all(key[1:] >= key[:-1])):
        return None
    return np.argsort(key, kind="stable")


def duplicate_mask(user_codes: np.ndarray, item_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """True for every row that repeats an earlier row's exact (user, item, timestamp).

    Only rows that share a (user, timestamp) can be duplicates. In (user, timestamp) order, a tie
    group whose item codes strictly increase holds no duplicate (MovieLens lists a user's ratings
    by movieId, so every group passes); only the other groups are hashed. Exact, and far cheaper
    than hashing three columns of 25M rows.
    """
    n = len(user_codes)
    mask = np.zeros(n, dtype=bool)
    if n < 2:
        return mask
    key = user_time_key(user_codes, timestamps)
    order = stable_order(key)
    if order is not None:
        key, item_codes = key[order], item_codes[order]
    tie = key[1:] == key[:-1]
    unsure = tie & (item_codes[1:] <= item_codes[:-1])
    if not unsure.any():
        return mask
    group = np.cumsum(np.r_[True, ~tie])
    flagged = np.zeros(group[-1] + 1, dtype=bool)
    flagged[group[1:][unsure]] = True
    rows = np.flatnonzero(flagged[group])
    pair = group[rows] * (int(item_codes.max()) + 1) + item_codes[rows]
    # The sort was stable, so within a group the first copy is the first in input order: keep it.
    repeated = rows[pd.Series(pair).duplicated(keep="first").to_numpy()]
    mask[repeated if order is None else order[repeated]] = True
    return mask


def k_core_mask(users: np.ndarray, items: np.ndarray, keep: np.ndarray, user_core: int,
                item_core: int) -> tuple[np.ndarray, int]:
    """Narrow `keep` until kept users have >= `user_core` and kept items >= `item_core` kept rows.

    Removing a sparse item can push a user under the threshold and vice versa, so one pass is not
    enough; the loop stops when a pass removes nothing. Returns the mask and the passes made.
    """
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    for rounds in itertools.count(1):
        user_counts = np.bincount(users[keep], minlength=n_users)
        item_counts = np.bincount(items[keep], minlength=n_items)
        still = keep & (user_counts[users] >= user_core) & (item_counts[items] >= item_core)
        if still.sum() == keep.sum():
            return keep, rounds
        keep = still


def short_user_mask(users: np.ndarray, keep: np.ndarray, min_length: int) -> tuple[np.ndarray, int]:
    """Narrow `keep` to users with >= `min_length` kept rows; returns the mask and the users dropped."""
    counts = np.bincount(users[keep], minlength=int(users.max(initial=-1)) + 1)
    short = (counts > 0) & (counts < min_length)
    return keep & ~short[users], int(short.sum())


def _select(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """Rows where `keep` holds, renumbered; no copy when every row is kept."""
    return frame.reset_index(drop=True) if keep.all() else frame.loc[keep].reset_index(drop=True)


def drop_duplicate_events(interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact repeats of (user_id, item_id, timestamp), keeping the first in input order."""
    repeated = duplicate_mask(codes(interactions["user_id"])[0], codes(interactions["item_id"])[0],
                              interactions["timestamp"].to_numpy())
    return _select(interactions, ~repeated), int(repeated.sum())


def k_core_filter(interactions: pd.DataFrame, user_core: int, item_core: int) -> tuple[pd.DataFrame, int]:
    """Iterative k-core (see `k_core_mask`): the filtered frame, input order kept, and the passes made."""
    keep = np.ones(len(interactions), dtype=bool)
    keep, rounds = k_core_mask(codes(interactions["user_id"])[0], codes(interactions["item_id"])[0], keep,
                               user_core, item_core)
    return _select(interactions, keep), rounds


def drop_short_users(interactions: pd.DataFrame, min_length: int) -> tuple[pd.DataFrame, int]:
    """Drop users with fewer than `min_length` interactions; returns the frame and the users dropped."""
    keep, short = short_user_mask(codes(interactions["user_id"])[0], np.ones(len(interactions), bool), min_length)
    return _select(interactions, keep), short


def filter_interactions(interactions: pd.DataFrame, user_core: int, item_core: int, min_rating: float | None,
                        min_sequence_length: int) -> tuple[pd.DataFrame, dict]:
    """The whole filtering policy: min rating, exact duplicates, k-core, then short users.

    Dropping short users can take an item under `item_core`, so k-core and the short-user rule
    alternate until neither removes anything: the result satisfies both. Works on one row mask and
    copies the frame once, at the end.

    Returns:
        The filtered frame (input order kept) and a summary: `dropped` counts rows removed by
        `min_rating`, `duplicates` and `k_core` (k-core and short users together) and the number of
        `short_users`; `k_core_rounds` counts k-core passes.
    """
    users, items = codes(interactions["user_id"])[0], codes(interactions["item_id"])[0]
    keep = np.ones(len(interactions), dtype=bool)
    if min_rating is not None:
        if "rating" not in interactions.columns:
            raise ValueError("split.min_rating is set but the interactions have no rating column")
        keep &= interactions["rating"].to_numpy() >= min_rating
    dropped = {"min_rating": int(len(keep) - keep.sum())}
    timestamps = interactions["timestamp"].to_numpy()
    if keep.all():  # skip three 25M-row copies in the usual case
        repeated = np.flatnonzero(duplicate_mask(users, items, timestamps))
    else:
        rows = np.flatnonzero(keep)
        repeated = rows[duplicate_mask(users[rows], items[rows], timestamps[rows])]
    keep[repeated] = False
    dropped["duplicates"] = len(repeated)
    before, rounds, dropped["short_users"] = int(keep.sum()), 0, 0
    while True:
        keep, passes = k_core_mask(users, items, keep, user_core, item_core)
        keep, short = short_user_mask(users, keep, min_sequence_length)
        rounds += passes
        dropped["short_users"] += short
        if short == 0:
            break
    dropped["k_core"] = before - int(keep.sum())
    log.info("dropped %d rows below min_rating, %d exact duplicates, %d rows by k-core (%d passes) "
             "including %d users shorter than %d", dropped["min_rating"], dropped["duplicates"],
             dropped["k_core"], rounds, dropped["short_users"], min_sequence_length)
    return _select(interactions, keep), {"dropped": dropped, "k_core_rounds": rounds}


def positions(sorted_user_codes: np.ndarray) -> np.ndarray:
    """0-based index of each row within its user's run of a user-sorted code array."""
    n = len(sorted_user_codes)
    starts = np.flatnonzero(np.r_[True, sorted_user_codes[1:] != sorted_user_codes[:-1]]) if n else np.zeros(0, int)
    return np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, n]))


def sort_chronologically(interactions: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (user, timestamp), ties kept in input order; skips the sort when already sorted."""
    users, _ = codes(interactions["user_id"])
    order = stable_order(user_time_key(users, interactions["timestamp"].to_numpy()))
    return interactions.reset_index(drop=True) if order is None else interactions.take(order).reset_index(drop=True)


def order_chronologically(interactions: pd.DataFrame) -> pd.DataFrame:
    """`sort_chronologically`, plus each row's `position` (0-based) in its user's sequence.

    Filters keep row order, so sorting once before them (`sort_chronologically`) makes this final
    call skip the sort.
    """
    interactions = sort_chronologically(interactions)
    interactions["position"] = positions(codes(interactions["user_id"])[0])
    return interactions


def leave_one_out(ordered: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per user: last interaction = test, second-last = valid, the rest = train.

    Args:
        ordered: output of `order_chronologically` (rows grouped by user, `position` set). Users need
            at least 3 interactions to appear in all three parts; filter short users first.

    Returns:
        {"train": ..., "valid": ..., "test": ...}, each sorted by (user, position).
    """
    users, n_users = codes(ordered["user_id"])
    length = np.bincount(users, minlength=n_users)[users]
    position = ordered["position"].to_numpy()
    parts = {"train": position < length - 2, "valid": position == length - 2, "test": position == length - 1}
    return {name: ordered.loc[rows].reset_index(drop=True) for name, rows in parts.items()}


def repeat_targets(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Users whose valid / test item is already in the history before it (a re-consumption).

    Repeats are kept: they are real events. With `eval.exclude_history` a constrained search can never
    recommend such a target, so these counts bound the reachable hit ratio; they are reported, not hidden.
    """
    parts = pd.concat([splits[name][["user_id", "item_id"]] for name in SPLITS], ignore_index=True)
    users, _ = codes(parts["user_id"])
    items, n_items = codes(parts["item_id"])
    key = users.astype(np.int64) * n_items + items
    n_train, n_valid = len(splits["train"]), len(splits["valid"])
    train, valid, test = key[:n_train], key[n_train:n_train + n_valid], key[n_train + n_valid:]
    return {"valid_targets_in_history": int(np.isin(valid, train).sum()),
            "test_targets_in_history": int(np.isin(test, key[:n_train + n_valid]).sum())}


def stats(ordered: pd.DataFrame, splits: dict[str, pd.DataFrame], filtering: dict) -> dict:
    """Split statistics for the DVC metrics file.

    Args:
        ordered: the filtered interactions.
        splits: output of `leave_one_out`.
        filtering: the summary from `filter_interactions` (dropped counts, k-core passes).

    `history_length` is the number of interactions per kept user (train + valid + test);
    `sparsity` is 1 - user-item pairs / (users x items), counting a pair once however often the user came
    back to the item (repeated interactions would otherwise push it below 0).
    """
    users, _ = codes(ordered["user_id"])
    items, item_codes = codes(ordered["item_id"])
    lengths = np.bincount(users)
    lengths = lengths[lengths > 0]
    n_users, n_items = len(lengths), int(np.count_nonzero(np.bincount(items)))
    pairs = len(np.unique(users.astype(np.int64) * item_codes + items))
    history = {name: float(np.quantile(lengths, q)) if n_users else 0.0 for name, q in QUANTILES.items()}
    history["max"] = int(lengths.max()) if n_users else 0
    return {
        "users": n_users,
        "items": n_items,
        "interactions": len(ordered),
        **{f"{name}_rows": len(splits[name]) for name in SPLITS},
        **filtering,
        **repeat_targets(splits),
        "history_length": history,
        "sparsity": 1.0 - pairs / (n_users * n_items) if n_users and n_items else 1.0,
    }


# Parquet files of the split stage: canonical input, split output.

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
