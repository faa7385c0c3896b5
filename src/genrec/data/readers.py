"""Readers: each raw dataset format -> the canonical `(interactions, items)` frames.

interactions: user_id (str), item_id (str), timestamp (int64 seconds), rating (float64, where the
format has one), in the source file's row order (the split stage breaks timestamp ties by it).
items: item_id (str), title (str, HTML entities unescaped, whitespace normalised).

Every reader takes the interaction file and the item file and refuses bad input with a `DataError`
naming the file, the row and the fix (see `genrec.data.tables`). Items without a title (and items missing
from the item file) are refused unless `drop_untitled` is set: the Amazon metadata leaves some
products untitled, and a model that generates titles cannot recommend those, so dropping them is an
explicit, logged choice rather than a silent one.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from genrec.errors import DataError
from genrec.data.tables import canonical, decoded_lines, json_lines, raise_first_bad_record, read_csv

CSV_FILES = {
    "movielens": ("ratings.csv", "movies.csv"),
    "movielens-dat": ("ratings.dat", "movies.dat"),
    "generic": ("interactions.csv", "items.csv"),
}
REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime", "overall")
MOVIELENS_NAMES = {"user_id": "userId", "item_id": "movieId"}
DAT_NAMES = {"user_id": "UserID", "item_id": "MovieID", "timestamp": "Timestamp", "rating": "Rating"}
AMAZON_NAMES = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime", "rating": "overall"}
# The top-level asin of a metadata line, found without parsing it (2014: 'asin': '...', 2018: "asin": "...").
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


def _items(ids, titles, rows) -> pd.DataFrame:
    return pd.DataFrame({"item_id": np.asarray(ids, dtype=object), "title": np.asarray(titles, dtype=object),
                         "row": np.asarray(rows, dtype=np.int64)})


def read_movielens(ratings_path: Path, movies_path: Path, *, drop_untitled: bool = False):
    """MovieLens CSV (ml-latest-small, ml-20m, ml-25m, ml-32m): ratings.csv + movies.csv."""
    ratings = read_csv(ratings_path, {"userId": pa.string(), "movieId": pa.string(),
                                      "timestamp": pa.int64(), "rating": pa.float64()})
    ratings = ratings.rename_columns(["user_id", "item_id", "timestamp", "rating"])
    movies = read_csv(movies_path, {"movieId": pa.string(), "title": pa.string()})
    items = _items(movies["movieId"].to_pylist(), movies["title"].to_pylist(), np.arange(2, movies.num_rows + 2))
    return canonical(ratings, items, interactions_path=ratings_path, items_path=movies_path,
                     drop_untitled=drop_untitled, names=MOVIELENS_NAMES)


def read_generic(interactions_path: Path, items_path: Path, *, drop_untitled: bool = False):
    """Generic CSV: interactions.csv (user_id,item_id,timestamp[,rating]) + items.csv (item_id,title)."""
    interactions = read_csv(interactions_path, {"user_id": pa.string(), "item_id": pa.string(),
                                                "timestamp": pa.int64(), "rating": pa.float64()},
                            optional=("rating",))
    table = read_csv(items_path, {"item_id": pa.string(), "title": pa.string()})
    items = _items(table["item_id"].to_pylist(), table["title"].to_pylist(), np.arange(2, table.num_rows + 2))
    return canonical(interactions, items, interactions_path=interactions_path, items_path=items_path,
                     drop_untitled=drop_untitled)


def read_movielens_dat(ratings_path: Path, movies_path: Path, *, drop_untitled: bool = False):
    """MovieLens 1M: ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat `MovieID::Title::Genres`.

    Both files are read as latin-1, not UTF-8: ML-1M predates MovieLens' UTF-8 releases and its titles
    hold ISO-8859-1 bytes (e.g. 0xE9 for "é") that are invalid UTF-8. Every byte is a latin-1
    character, so this format has no "non-UTF-8" refusal.
    """
    ratings = _read_ratings_dat(ratings_path)
    ids, titles, rows = [], [], []
    with open(movies_path, "rb") as f:
        for number, line in enumerate(decoded_lines(f, movies_path, "latin-1"), start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("::")
            if len(parts) < 3:
                raise DataError(f"{len(parts)} fields where MovieID::Title::Genres has 3", path=movies_path,
                                row=number, fix="Separate the fields with '::'")
            ids.append(parts[0].strip())
            titles.append("::".join(parts[1:-1]))
            rows.append(number)
    return canonical(ratings, _items(ids, titles, rows), interactions_path=ratings_path,
                     items_path=movies_path, drop_untitled=drop_untitled, first_row=1, names=DAT_NAMES)


def _read_ratings_dat(path: Path) -> pa.Table:
    # pyarrow accepts only one-character delimiters: split on ':' and require the fields between each
    # '::' pair to be empty, which keeps the 1M-row file a vectorised read.
    names = ["user_id", "_1", "item_id", "_2", "rating", "_3", "timestamp"]
    types = {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(), "timestamp": pa.int64(),
             "_1": pa.string(), "_2": pa.string(), "_3": pa.string()}
    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, encoding="latin-1"),
            parse_options=pacsv.ParseOptions(delimiter=":", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False))
        separators_ok = all(set(table[n].unique().to_pylist()) <= {""} for n in ("_1", "_2", "_3"))
    except pa.ArrowInvalid:
        separators_ok = False
    if not separators_ok:
        with open(path, "rb") as f:
            records = ((n, line.rstrip("\r\n").split("::"))
                       for n, line in enumerate(decoded_lines(f, path, "latin-1"), start=1) if line.strip())
            raise_first_bad_record(records, path, {0: ("UserID", pa.string()), 1: ("MovieID", pa.string()),
                                                   2: ("Rating", pa.float64()), 3: ("Timestamp", pa.int64())}, 4)
        raise DataError("unreadable ratings file", path=path, fix="Use UserID::MovieID::Rating::Timestamp lines")
    return table.select(["user_id", "item_id", "timestamp", "rating"])


def read_amazon_2014(reviews_path: Path, meta_path: Path, *, drop_untitled: bool = False):
    """Amazon 2014: 5-core reviews (strict JSON lines) + metadata whose lines are Python literals.

    The metadata is parsed with `ast.literal_eval`, never `eval`: the file is data, not code.
    """
    return _read_amazon(reviews_path, meta_path, ast.literal_eval, drop_untitled, keep_first=False)


def read_amazon_2018(reviews_path: Path, meta_path: Path, *, drop_untitled: bool = False):
    """Amazon 2018: reviews and metadata both strict JSON lines.

    The 2018 metadata repeats some products on several identical lines (a known upstream issue), so
    the first line of each asin is kept instead of refusing the duplicate.
    """
    return _read_amazon(reviews_path, meta_path, json.loads, drop_untitled, keep_first=True)


def _read_amazon(reviews_path: Path, meta_path: Path, parse_meta, drop_untitled: bool, keep_first: bool):
    interactions, rows = _read_reviews(reviews_path)
    needed = set(interactions["item_id"].unique().to_pylist())
    items = _read_meta(meta_path, parse_meta, needed)
    if keep_first:
        items = items.drop_duplicates("item_id", keep="first")
    return canonical(interactions, items, interactions_path=reviews_path, items_path=meta_path,
                     drop_untitled=drop_untitled, interaction_rows=rows, names=AMAZON_NAMES)


def _read_reviews(path: Path) -> tuple[pa.Table, np.ndarray]:
    columns: dict[str, list] = {f: [] for f in REVIEW_FIELDS}
    rows = []
    for number, record in json_lines(path, json.loads):
        for field in REVIEW_FIELDS:
            value = record.get(field)
            if value is None:
                raise DataError("missing field", path=path, row=number, column=field,
                                fix=f"Each review needs {', '.join(REVIEW_FIELDS)}")
            columns[field].append(value)
        _check_review_types(record, path, number)
        rows.append(number)
    table = pa.table({"user_id": pa.array(columns["reviewerID"], pa.string()),
                      "item_id": pa.array(columns["asin"], pa.string()),
                      "timestamp": pa.array(columns["unixReviewTime"], pa.int64()),
                      "rating": pa.array(columns["overall"], pa.float64())})
    return table, np.asarray(rows, dtype=np.int64)


def _check_review_types(record: dict, path: Path, number: int) -> None:
    checks = (("reviewerID", str, "a string"), ("asin", str, "a string"),
              ("unixReviewTime", int, "an integer"), ("overall", (int, float), "a number"))
    for field, kind, name in checks:
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{value!r} is not {name}", path=path, row=number, column=field,
                            fix="Fix the record or remove the line")


def _read_meta(path: Path, parse, needed: set[str]) -> pd.DataFrame:
    """Titles of the reviewed products; other products' lines are skipped before parsing them.

    The metadata covers every product of a category, most never reviewed in the 5-core file, and
    parsing a Python-literal line is slow; so each line's asin is matched first and only the lines
    of reviewed products (or lines where no asin is found) are parsed and checked.
    """
    def wanted(line: str) -> bool:
        match = _ASIN.search(line)
        return match is None or match.group(1) in needed

    ids, titles, rows = [], [], []
    for number, record in json_lines(path, parse, wanted):
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataError("missing asin", path=path, row=number, column="asin",
                            fix="Each metadata line needs the product's asin")
        if asin in needed:
            ids.append(asin)
            titles.append(record.get("title"))
            rows.append(number)
    return _items(ids, titles, rows)


READERS = {
    "movielens": read_movielens,
    "movielens-dat": read_movielens_dat,
    "generic": read_generic,
    "amazon-2014": read_amazon_2014,
    "amazon-2018": read_amazon_2018,
}


def dataset_files(folder: Path, fmt: str = "auto") -> tuple[str, Path, Path] | None:
    """The format and the (interaction file, item file) pair in `folder`, or None if they are not there.

    `auto` tries MovieLens CSV, MovieLens 1M, generic CSV, then Amazon (a `meta_*.json[.gz]` file and
    one other `*.json[.gz]`: 2014 if it is named `reviews_*`, else 2018).

    Raises:
        DataError: several candidate Amazon review or metadata files, so the choice would be a guess.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for name, (interactions, items) in CSV_FILES.items():
        if fmt in ("auto", name) and (folder / interactions).is_file() and (folder / items).is_file():
            return name, folder / interactions, folder / items
    if fmt not in ("auto", "amazon-2014", "amazon-2018"):
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz")))
    meta = [p for p in found if p.name.startswith("meta_")]
    reviews = [p for p in found if not p.name.startswith("meta_")]
    if not meta and not reviews:
        return None
    if len(meta) != 1 or len(reviews) != 1:
        raise DataError(f"expected one reviews file and one meta_* file, found {[p.name for p in found]}",
                        path=folder, fix="Keep one Amazon category per dataset folder")
    if fmt == "auto":
        fmt = "amazon-2014" if reviews[0].name.startswith("reviews_") else "amazon-2018"
    return fmt, reviews[0], meta[0]
