"""Users' item sequences read back from the leave-one-out split, oldest first.

Two views of the same files, each read through `genrec.data.processed`:
- `load_sequences` -> `Sequences`: every user's rows as flat integer arrays sorted by (user, split,
  position), vectorised for ML-25M (162k users, 25M rows); the prompts stage and P5 build their
  records from it (`target_rows` chooses the targets of each split).
- `read_histories` (`read_user_items`) / `read_titles`: plain dicts for training in the `sequence` format, evaluation
  (the history a `sequence` prompt shows, the titles a user already has), the learning curve and
  `genrec recommend --user`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from genrec.config.layout import SPLITS
from genrec.data.processed import part_path, read_part, read_part_table
from genrec.errors import DataError

HISTORY_SPLITS = {"test": ("train", "valid"), "valid": ("train",), "train": ("train",)}
"""What a user has seen before the target of each split (the split never shows a later item)."""


def read_histories(processed_dir: Path, before: str, users: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Each user's item ids before the target of split `before`, ordered by position.

    Args:
        before: test (train + valid items), valid (train items) or train (train items: the whole
            training sequence).
        users: Only these user ids; None: every user.

    Raises:
        DataError: a missing split file or column.
    """
    return read_user_items(processed_dir, HISTORY_SPLITS[before], users)


def read_user_items(processed_dir: Path, splits: Iterable[str], users: Iterable[str] | None = None
                    ) -> dict[str, list[str]]:
    """Each user's item ids in the parts `splits` (of `SPLITS`), ordered by position.

    Args:
        users: Only these user ids; None: every user.

    Raises:
        DataError: a missing split file or column.
    """
    wanted = None if users is None else {str(u) for u in users}
    frames = []
    for name in splits:
        df = read_part(processed_dir, name, ["user_id", "item_id", "position"])
        df = df.astype({"user_id": str, "item_id": str})
        frames.append(df if wanted is None else df[df["user_id"].isin(wanted)])
    rows = pd.concat(frames).sort_values(["user_id", "position"], kind="stable")
    return rows.groupby("user_id", sort=True)["item_id"].agg(list).to_dict()


def read_titles(processed_dir: Path) -> dict[str, str]:
    """Title of every item id in the split's items table."""
    items = read_part(processed_dir, "items", ["item_id", "title"])
    return dict(zip(items["item_id"].astype(str), items["title"].astype(str)))


@dataclass
class Sequences:
    """Every user's items, sorted by (user, split, position), as flat integer arrays.

    Ids and titles stay in small per-user / per-item lists: 25M Python strings would cost GBs.
    """

    user: np.ndarray        # per row: user ordinal (users ranked by their id string)
    item: np.ndarray        # per row: index into item_ids / titles
    position: np.ndarray    # per row: position in the user's whole sequence
    split: np.ndarray       # per row: 0 train, 1 valid, 2 test
    first: np.ndarray       # per user: index of its first row
    user_ids: list[str]     # per user ordinal
    item_ids: list[str]     # per item
    titles: list[str]       # per item

    @functools.cached_property
    def quoted_user_ids(self) -> list[str]:
        """Per user ordinal: its id as a JSON string literal."""
        return [quote(u) for u in self.user_ids]

    @functools.cached_property
    def quoted_item_ids(self) -> list[str]:
        """Per item: its id as a JSON string literal."""
        return [quote(i) for i in self.item_ids]

    @functools.cached_property
    def quoted_titles(self) -> list[str]:
        """Per item: its title as a JSON string literal."""
        return [quote(t) for t in self.titles]

    @property
    def start(self) -> np.ndarray:
        """Per row: index of its user's first row."""
        return self.first[self.user]


def load_sequences(processed_dir: Path) -> Sequences:
    """Read the split and items tables into per-user sorted arrays, checking they agree.

    Ids are read dictionary-encoded (integer codes plus a small table of distinct values), so 25M
    rows never become 25M Python strings.

    Raises:
        DataError: on a missing column, an item without a title, a user without exactly one valid
            and one test item after at least one train item, or positions not increasing.
    """
    tables = [read_part_table(processed_dir, name, ["user_id", "item_id", "position"]) for name in SPLITS]
    split = np.repeat(np.arange(3, dtype=np.int8), [t.num_rows for t in tables])
    position = np.concatenate([t["position"].to_numpy().astype(np.int64) for t in tables])
    users = [_encode(t["user_id"]) for t in tables]
    # One ordinal per distinct user id that has rows, ranked by the id string so the output order does
    # not depend on the input order. A parquet dictionary may also list ids no row uses (users the
    # split's filters dropped): they are not users of the split.
    user_ids = np.unique(np.concatenate([values[np.unique(codes)] for codes, values in users]))
    index = pd.Index(user_ids)
    user = np.concatenate([index.get_indexer(values).astype(np.int32)[codes] for codes, values in users])
    item_ids, titles, item = _items(processed_dir, [_encode(t["item_id"]) for t in tables])
    del tables, users
    order = _sort_order(user, split, position)
    user, item, position, split = user[order], item[order], position[order], split[order]
    first = np.searchsorted(user, np.arange(len(user_ids)))
    seqs = Sequences(user=user, item=item, position=position, split=split, first=first,
                     user_ids=user_ids.tolist(), item_ids=item_ids, titles=titles)
    _check_sequences(processed_dir, seqs)
    return seqs


def _sort_order(user: np.ndarray, split: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Row order by (user, split, position).

    Packed into one int64 key and sorted with timsort, which merges the already sorted runs that
    the split stage writes in linear time (a 3-key lexsort of 25M rows takes seconds).
    """
    if len(position) and (position.min() < 0 or position.max() >= 2**31):
        return np.lexsort((position, split, user))
    key = (user.astype(np.int64) << 33) | (split.astype(np.int64) << 31) | position
    return np.argsort(key, kind="stable")


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(per-row codes, distinct values as str) of a column, dictionary-encoding it if needed."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    column = pa.table({"c": column}).unify_dictionaries()["c"]
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32), np.array([], dtype=object)
    values = column.chunk(0).dictionary.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
    codes = np.concatenate([c.indices.to_numpy() for c in column.chunks]).astype(np.int32)
    return codes, values


def _items(processed_dir: Path, split_items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list, list, np.ndarray]:
    """(item ids, titles, per-row index into them) from items.parquet, for the split's item columns."""
    path = part_path(processed_dir, "items")
    items = read_part_table(processed_dir, "items", ["item_id", "title"]).to_pandas()
    items = items.astype({"item_id": str, "title": str})
    dup = items["item_id"].duplicated()
    if dup.any():
        raise DataError(f"item_id {items['item_id'][dup].iat[0]!r} appears twice", path=path,
                        row=int(np.flatnonzero(dup)[0]), column="item_id", fix="item ids must be unique")
    bad = items["title"].str.strip().eq("") | items["title"].str.contains("\n", regex=False)
    if bad.any():
        raise DataError("empty or multi-line title", path=path, row=int(np.flatnonzero(bad)[0]), column="title",
                        fix="titles must be non-empty and whitespace-normalised (rerun ingest)")
    index = pd.Index(items["item_id"])
    rows = []
    for name, (codes, values) in zip(SPLITS, split_items):
        idx = index.get_indexer(values)
        # A parquet dictionary may list values no row uses (categories dropped by the k-core filter).
        unknown = np.intersect1d(np.flatnonzero(idx < 0), codes)
        if unknown.size:
            raise DataError(f"item {values[unknown[0]]!r} has no title in {path.name}",
                            path=path.parent / f"{name}.parquet", column="item_id",
                            fix="items.parquet must hold every item of the split")
        rows.append(idx.astype(np.int32)[codes])
    return items["item_id"].tolist(), items["title"].tolist(), np.concatenate(rows)


def _check_sequences(processed_dir: Path, seqs: Sequences) -> None:
    """Each user: >= 1 train row, then exactly one valid and one test row, positions increasing."""
    per_user = np.stack([np.bincount(seqs.user[seqs.split == s], minlength=len(seqs.first)) for s in range(3)], 1)
    bad = np.flatnonzero((per_user[:, 0] < 1) | (per_user[:, 1] != 1) | (per_user[:, 2] != 1))
    if len(bad):
        n_train, n_valid, n_test = per_user[bad[0]]
        raise DataError(f"user {seqs.user_ids[bad[0]]!r} has {n_train} train, {n_valid} valid and {n_test} test rows "
                        f"({len(bad)} such users)", path=processed_dir,
                        fix="expected >= 1 train row and exactly one valid and one test row per user; rerun the split")
    same_user = seqs.user[1:] == seqs.user[:-1]
    decreasing = np.flatnonzero(same_user & (seqs.position[1:] <= seqs.position[:-1]))
    if len(decreasing):
        raise DataError(f"user {seqs.user_ids[seqs.user[decreasing[0]]]!r}: positions do not increase from train to "
                        "valid to test", path=processed_dir, column="position",
                        fix="positions must number each user's whole sequence; rerun the split")


def target_rows(seqs: Sequences, name: str, train_targets: int | str) -> np.ndarray:
    """Row indices of the targets of split `name`, in (user, position) order."""
    if name != "train":
        return np.flatnonzero(seqs.split == SPLITS.index(name))
    offset = np.arange(len(seqs.split)) - seqs.start
    keep = (seqs.split == 0) & (offset >= 1)
    if train_targets != "all":
        n_train = np.bincount(seqs.user[seqs.split == 0], minlength=len(seqs.first))
        keep &= offset >= n_train[seqs.user] - int(train_targets)
    return np.flatnonzero(keep)


def quote(text: str) -> str:
    """`text` as a JSON string literal, exactly as json.dumps(text, ensure_ascii=False) writes it."""
    return encode_basestring(text)
