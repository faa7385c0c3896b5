"""The one reader of the split the `split` stage writes: <processed_dir>/{train,valid,test,items}.parquet.

Every view of those files reads them here, so a missing file or column raises the same `DataError`
(the file, the column and the fix) wherever it is found:
- `genrec.data.sequences`: `load_sequences` (flat arrays, from `read_part_table`), `read_histories`,
  `read_user_items` and `read_titles` (plain dicts, from `read_part`);
- `genrec.evaluation.scoring.read_split`: items coded 1..N for the scoring models and MostPop;
- `genrec.models.genrec.recommend.user_history` (from `read_user_items` and `read_titles`) and
  `genrec.models.genrec.evaluation.user_exclusions` (from `read_part`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config.layout import SPLITS
from genrec.errors import DataError

PARTS = (*SPLITS, "items")
"""The files of a split: the leave-one-out parts, then the catalogue of the items they use."""

RERUN_SPLIT = "run `genrec split` first (dvc repro split)"
"""The fix for a split file that is not there."""


def part_path(processed_dir: str | Path, name: str) -> Path:
    """The file of part `name` (one of `PARTS`) of the split in `processed_dir`."""
    if name not in PARTS:
        raise ValueError(f"unknown part {name!r}; expected one of {PARTS}")
    return Path(processed_dir) / f"{name}.parquet"


def read_part(processed_dir: str | Path, name: str, columns: Sequence[str], *, fix: str = RERUN_SPLIT
              ) -> pd.DataFrame:
    """`columns` of part `name` as a pandas frame, in file order, types as stored.

    Args:
        fix: What the error says to do when the file is missing.

    Raises:
        DataError: the file or one of `columns` is missing.
    """
    path = _checked(processed_dir, name, columns, fix)
    return pd.read_parquet(path, columns=list(columns))


def read_part_table(processed_dir: str | Path, name: str, columns: Sequence[str]) -> pa.Table:
    """`columns` of part `name` as an Arrow table, string columns dictionary-encoded.

    Ids read this way are integer codes plus a small table of distinct values, so 25M rows never
    become 25M Python strings.

    Raises:
        DataError: the file or one of `columns` is missing, or a column has missing values.
    """
    path = _checked(processed_dir, name, columns, RERUN_SPLIT)
    schema = pq.read_schema(path)
    strings = [c for c in columns if pa.types.is_string(schema.field(c).type)
               or pa.types.is_large_string(schema.field(c).type)]
    table = pq.read_table(path, columns=list(columns), read_dictionary=strings)
    for c in columns:
        if table[c].null_count:
            raise DataError(f"{table[c].null_count} missing values", path=path, column=c,
                            fix="every row needs a value; rerun the stage that wrote it")
    return table


def _checked(processed_dir: str | Path, name: str, columns: Sequence[str], fix: str) -> Path:
    """The path of part `name`, once it is known to exist and to hold `columns`."""
    path = part_path(processed_dir, name)
    if not path.exists():
        raise DataError("not found", path=path, fix=fix)
    missing = [c for c in columns if c not in pq.read_schema(path).names]
    if missing:
        raise DataError(f"missing columns {missing}", path=path, column=missing[0],
                        fix=f"expected columns {list(columns)}; rerun `genrec split` (dvc repro split)")
    return path
