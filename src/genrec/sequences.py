"""Users' item sequences read back from the leave-one-out split, oldest first.

Shared by training in the `sequence` format (documents of training titles), evaluation (the
history a `sequence` prompt shows and the titles a user already has) and the learning curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

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
    wanted = None if users is None else {str(u) for u in users}
    frames = []
    for name in HISTORY_SPLITS[before]:
        path = Path(processed_dir) / f"{name}.parquet"
        if not path.exists():
            raise DataError("not found", path=path, fix="run `genrec split` first (dvc repro split)")
        try:
            df = pd.read_parquet(path, columns=["user_id", "item_id", "position"])
        except (KeyError, ValueError) as err:
            raise DataError(f"unreadable or missing columns ({err})", path=path,
                            fix="expected user_id, item_id, position; rerun `genrec split`") from None
        df = df.astype({"user_id": str, "item_id": str})
        frames.append(df if wanted is None else df[df["user_id"].isin(wanted)])
    rows = pd.concat(frames).sort_values(["user_id", "position"], kind="stable")
    return rows.groupby("user_id", sort=True)["item_id"].agg(list).to_dict()


def read_titles(processed_dir: Path) -> dict[str, str]:
    """Title of every item id in the split's items table."""
    path = Path(processed_dir) / "items.parquet"
    if not path.exists():
        raise DataError("not found", path=path, fix="run `genrec split` first (dvc repro split)")
    items = pd.read_parquet(path, columns=["item_id", "title"])
    return dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
