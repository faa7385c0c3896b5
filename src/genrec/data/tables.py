"""Low-level table reading for the readers: fast CSV via pyarrow, JSON lines, and the canonical checks.

CSV files are parsed by pyarrow in one vectorised pass. Only when that pass fails (or a vectorised
check finds a bad value) is the file scanned again, record by record, to name the first bad row, so
the common case costs nothing extra. Row numbers count the header (if any) as row 1; JSON-lines
files are numbered by physical line.
"""

from __future__ import annotations

import csv
import gzip
import html
import logging
import re
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from genrec.errors import DataError

log = logging.getLogger(__name__)

_INT = re.compile(r"\s*-?\d+\s*")
_UNTITLED_FIX = "Give it a title, or set ingest.drop_untitled=true to drop untitled items and their interactions"


def csv_header(path: Path, delimiter: str = ",") -> list[str]:
    """The column names on line 1 of `path` (a UTF-8 byte-order mark is ignored)."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("header is not UTF-8", path=path, row=1, fix="Re-save the file as UTF-8") from None
    return next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter), [])


def read_csv(path: Path, types: dict[str, pa.DataType], optional: tuple[str, ...] = ()) -> pa.Table:
    """Read the columns `types` (name -> arrow type) of a headed CSV file, in that order.

    Raises:
        DataError: a required column is missing, or a row cannot be parsed (row number named).
    """
    header = csv_header(path)
    for name in types:
        if name not in header and name not in optional:
            raise DataError("missing column", path=path, row=1, column=name,
                            fix=f"The header must name {', '.join(n for n in types if n not in optional)}")
    present = {n: t for n, t in types.items() if n in header}
    options = pacsv.ConvertOptions(column_types=present, include_columns=list(present),
                                   strings_can_be_null=False)
    try:
        return pacsv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as err:
        records = csv_records(path, header_lines=1)
        raise_first_bad_record(records, path, {header.index(n): (n, t) for n, t in present.items()},
                               len(header))
        raise DataError(f"unreadable CSV: {err}", path=path, fix="Check the file's quoting and line ends") from err


def csv_records(path: Path, header_lines: int, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each record after the header, naming the line of any undecodable byte."""
    with open(path, "rb") as f:
        lines = decoded_lines(f, path, encoding)
        reader = csv.reader(lines)
        for _ in range(header_lines):
            next(reader, None)
        for fields in reader:
            if fields:  # pyarrow skips blank lines too
                yield reader.line_num, fields


def decoded_lines(f, path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """Decode a binary file line by line, so that a bad byte is reported with its line number."""
    for number, raw in enumerate(f, start=1):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise DataError(f"not {encoding} (byte {raw[err.start]:#04x} at column {err.start + 1})",
                            path=path, row=number, fix=f"Re-save the file as {encoding}") from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def raise_first_bad_record(records: Iterator[tuple[int, list[str]]], path: Path,
                           columns: dict[int, tuple[str, pa.DataType]], width: int) -> None:
    """Scan `records` and raise DataError at the first one with the wrong width or an unparsable value."""
    for number, fields in records:
        if len(fields) != width:
            raise DataError(f"{len(fields)} fields where the header has {width}", path=path, row=number,
                            fix="Quote fields that contain the delimiter, or remove the stray field")
        for index, (name, kind) in columns.items():
            value = fields[index]
            if kind == pa.int64() and value.strip() and not _INT.fullmatch(value):
                raise DataError(f"{value!r} is not an integer", path=path, row=number, column=name,
                                fix="Write whole numbers (timestamps in seconds since 1970)")
            if kind == pa.float64() and value.strip() and not _is_float(value):
                raise DataError(f"{value!r} is not a number", path=path, row=number, column=name,
                                fix="Write a decimal number")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def json_lines(path: Path, parse: Callable[[str], object],
               wanted: Callable[[str], bool] = lambda line: True) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line of a .json or .json.gz file that `wanted` keeps.

    `parse` turns one line into a dict (json.loads, or ast.literal_eval for Python-literal files).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, line in enumerate(decoded_lines(f, path), start=1):
            if not line.strip() or not wanted(line):
                continue
            try:
                record = parse(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
                raise DataError(f"malformed record ({type(err).__name__}: {err})", path=path, row=number,
                                fix="Fix or remove the line (one object per line)") from None
            if not isinstance(record, dict):
                raise DataError("expected one object per line", path=path, row=number,
                                fix="Fix or remove the line") from None
            yield number, record


def first_true(mask) -> int | None:
    """Index of the first True in a boolean arrow array (nulls count as False), or None."""
    if not pc.any(mask).as_py():
        return None
    return int(np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0])


def row_of(index: int, rows: np.ndarray | None, first_row: int) -> int:
    """File row of table row `index`: from `rows` when known (JSON lines), else `index + first_row`."""
    return int(rows[index]) if rows is not None else index + first_row


def check_interactions(table: pa.Table, path: Path, rows: np.ndarray | None = None, first_row: int = 2,
                       names: dict[str, str] | None = None) -> None:
    """Refuse empty ids and missing or negative timestamps and ratings, naming the first bad row.

    `names` maps canonical column names to the file's own (e.g. item_id -> movieId) for the messages.
    """
    names = names or {}
    checks = [("user_id", pc.equal(table["user_id"], ""), "empty user id", "Fill in the user id"),
              ("item_id", pc.equal(table["item_id"], ""), "empty item id", "Fill in the item id"),
              ("timestamp", pc.is_null(table["timestamp"]), "missing timestamp", "Fill in the timestamp"),
              ("timestamp", pc.less(table["timestamp"], 0), "negative timestamp",
               "Timestamps are seconds since 1970 and cannot be negative")]
    if "rating" in table.column_names:
        finite = pc.fill_null(pc.is_finite(table["rating"]), False)
        checks.append(("rating", pc.invert(finite), "missing or non-finite rating",
                       "Fill in the rating, or drop the column if there are none"))
    for column, mask, message, fix in checks:
        index = first_true(mask)
        if index is not None:
            raise DataError(message, path=path, row=row_of(index, rows, first_row),
                            column=names.get(column, column), fix=fix)


MAX_TITLE_CHARS = 1000
"""Titles longer than this (after normalisation) are cut at the last word boundary before it, and counted.
Real catalogues stay far below it (ml-latest-small: 158 characters, Amazon Toys: 542); a title of
megabytes would otherwise be copied into every prompt that shows it."""


def truncate_titles(items: pd.DataFrame, limit: int = MAX_TITLE_CHARS) -> tuple[pd.DataFrame, int]:
    """(items with every title at most `limit` characters, how many were cut)."""
    long = items["title"].str.len() > limit
    if not long.any():
        return items, 0

    def cut(title: str) -> str:
        head = title[:limit + 1]
        return (head.rsplit(" ", 1)[0] if " " in head else head)[:limit].rstrip()

    return items.assign(title=items["title"].where(~long, items["title"][long].map(cut))), int(long.sum())


def normalise_title(title) -> str:
    """HTML entities unescaped (`&amp;` -> `&`) and runs of whitespace collapsed to one space; a title of only
    invisible characters (zero-width spaces, other format and control characters) is empty, so it is refused
    or dropped as untitled."""
    if not isinstance(title, str):
        return ""
    text = " ".join(html.unescape(title).split())
    return text if any(unicodedata.category(c)[0] not in "CZ" for c in text) else ""


def canonical(interactions: pa.Table, items: pd.DataFrame, *, interactions_path: Path, items_path: Path,
              drop_untitled: bool, interaction_rows: np.ndarray | None = None, first_row: int = 2,
              names: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check and join the raw tables into the canonical (interactions, items) frames.

    Args:
        interactions: user_id, item_id (string), timestamp (int64), optional rating (float64), file order.
        items: item_id, title (raw) and `row` (the item's row in `items_path`).
        drop_untitled: drop items with an empty title, interactions on them and on items missing
            from the item file, instead of refusing them.
        interaction_rows / first_row: how to number interaction rows in messages (see `row_of`).
        names: the files' own column names by canonical name, for messages (e.g. item_id -> movieId).

    Raises:
        DataError: empty title, duplicated item id or unknown item (unless dropped), or a bad value.
    """
    names = names or {}
    check_interactions(interactions, interactions_path, interaction_rows, first_row, names)
    items = items.assign(item_id=items["item_id"].astype(str), title=items["title"].map(normalise_title))
    for mask, message, fix in ((items["item_id"] == "", "empty item id", "Fill in the item id"),
                               (items["item_id"].duplicated(), "duplicated item id",
                                "Keep one row per item")):
        if mask.any():
            bad = items[mask].iloc[0]
            raise DataError(f"{message} {bad['item_id']!r}", path=items_path, row=int(bad["row"]),
                            column=names.get("item_id", "item_id"), fix=fix)
    untitled = items["title"] == ""
    if untitled.any() and not drop_untitled:
        bad = items[untitled].iloc[0]
        raise DataError(f"item {bad['item_id']!r} has no title", path=items_path, row=int(bad["row"]),
                        column="title", fix=_UNTITLED_FIX)
    items = items[~untitled]
    known = pc.is_in(interactions["item_id"], value_set=pa.array(items["item_id"].to_numpy(), pa.string()))
    unknown = first_true(pc.invert(known))
    if unknown is not None and not drop_untitled:
        item = interactions["item_id"][unknown].as_py()
        raise DataError(f"item {item!r} is not in {items_path.name}", path=interactions_path,
                        row=row_of(unknown, interaction_rows, first_row), column=names.get("item_id", "item_id"),
                        fix=f"Add the item to {items_path.name}, remove the row, or set ingest.drop_untitled=true")
    if unknown is not None or untitled.any():
        before = interactions.num_rows
        interactions = interactions.filter(known)
        log.warning("%s: dropped %d untitled items and %d interactions on items without a title",
                    items_path, int(untitled.sum()), before - interactions.num_rows)
    return interactions.to_pandas(), items[["item_id", "title"]].reset_index(drop=True)
