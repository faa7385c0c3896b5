"""Seconds `genrec recommend` spends suggesting catalogue titles for unknown history titles (difflib).

    python bench/unknown_titles.py --items $GENREC_DATA_MIRROR/ml-latest-small/movies.csv   # the whole catalogue
    python bench/unknown_titles.py --items data/processed/<dataset>/items.parquet --unknown 200

A history of one known title and N misspelt ones ("<title> x", lower-cased) is matched to the catalogue with
`recommend.resolve_history`, as a request is before any model runs; the table gives the seconds per history
and per unknown title, and how many unknown titles got suggestions.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from genrec.decoding.trie import Catalogue
from genrec.models.genrec.recommend import resolve_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, default=Path("data/processed/ml-latest-small/items.parquet"))
    parser.add_argument("--unknown", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    if args.items.suffix == ".csv":  # MovieLens movies.csv: movieId, title
        items = pd.read_csv(args.items).rename(columns={"movieId": "item_id"})[["item_id", "title"]]
    else:
        items = pd.read_parquet(args.items)
    catalogue = Catalogue.from_items(items)
    print(f"{args.items}: {len(catalogue.titles)} titles; load average {os.getloadavg()[0]:.2f}")
    print("| unknown titles | s per history | s per unknown title | with suggestions |")
    print("|---:|---:|---:|---:|")
    for n in args.unknown:
        history = [catalogue.titles[0]] + [f"{t.lower()} x" for t in catalogue.titles[1:n + 1]]
        start = time.perf_counter()
        resolved = resolve_history(history, catalogue)
        seconds = time.perf_counter() - start
        suggested = sum(bool(u.suggestions) for u in resolved.unknown)
        print(f"| {n} | {seconds:.3f} | {seconds / n:.4f} | {suggested} |")


if __name__ == "__main__":
    main()
