"""Scale benchmark: a synthetic MovieLens-25M-shaped dataset through ingest -> split -> prompts.

Prints seconds and peak RSS per stage. Target on a 2-core machine: <= 120 s in all, <= 8 GB peak RSS.

    python bench/scale_data.py                 # ML-25M shape: 162,541 users, 62,423 items, 25,000,095 ratings
    python bench/scale_data.py --scale 0.01    # a quick look at 1% of that

Each stage runs as its own `genrec` process (as under `dvc repro`), so its peak RSS is its own
(`os.wait4` reports the child's ru_maxrss). Generating the CSVs is not timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

USERS, ITEMS, RATINGS = 162_541, 62_423, 25_000_095


def user_lengths(rng: np.random.Generator, users: int, ratings: int, minimum: int = 20) -> np.ndarray:
    """Heavy-tailed history lengths (lognormal), each >= `minimum` (as in ML-25M), summing to `ratings`."""
    raw = rng.lognormal(mean=0.0, sigma=1.2, size=users)
    lengths = minimum + np.floor(raw / raw.sum() * (ratings - minimum * users)).astype(np.int64)
    lengths[: ratings - lengths.sum()] += 1  # hand out the rounding remainder
    return lengths


def write_dataset(folder: Path, scale: float, seed: int = 0) -> int:
    """Write MovieLens-format ratings.csv and movies.csv with power-law (Zipf-like) item popularity."""
    rng = np.random.default_rng(seed)
    users, items, ratings = int(USERS * scale), int(ITEMS * scale), int(RATINGS * scale)
    lengths = user_lengths(rng, users, ratings)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    item_ids = rng.permutation(items) + 1  # popularity rank -> movieId
    chosen = item_ids[rng.choice(items, size=ratings, p=popularity / popularity.sum())]
    user_ids = np.repeat(np.arange(1, users + 1), lengths)
    timestamps = rng.integers(789_652_009, 1_574_327_703, size=ratings)
    table = pa.table({
        "userId": user_ids, "movieId": chosen,
        "rating": rng.integers(1, 11, size=ratings) / 2.0, "timestamp": timestamps,
    })
    pacsv.write_csv(table, folder / "ratings.csv")
    movies = pa.table({
        "movieId": np.arange(1, items + 1),
        "title": [f"Synthetic Film {i}, Part {i % 7} ({1900 + i % 120})" for i in range(1, items + 1)],
        "genres": ["Drama"] * items,
    })
    pacsv.write_csv(movies, folder / "movies.csv")
    return ratings


def run_stage(args: list[str]) -> tuple[float, float]:
    """Run one `genrec` stage as a child process; return (seconds, peak RSS in GB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {args[0]} failed")
    return seconds, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the ML-25M shape")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="genrec-scale-"))
    dataset = "synthetic-ml25m"
    raw = work / "data/raw" / dataset
    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = write_dataset(raw, args.scale)
    print(f"generated {n:,} ratings in {time.perf_counter() - t0:.1f} s under {work}", file=sys.stderr)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["dataset"] = dataset
    params["ingest"]["format"] = "movielens"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    p = ["--params", str(work / "params.yaml")]
    d = work / "data"
    stages = {
        "ingest": ["ingest", *p, "--raw", str(raw), "--out", str(d / "interim" / dataset)],
        "split": ["split", *p, "--interim", str(d / "interim" / dataset), "--out", str(d / "processed" / dataset),
                  "--report", str(work / "reports/data_validation"), "--metrics", str(work / "reports/split.json")],
        "prompts": ["prompts", *p, "--processed", str(d / "processed" / dataset), "--out", str(d / "prompts" / dataset)],
    }
    rows = [(name, *run_stage(cmd)) for name, cmd in stages.items()]
    total = sum(r[1] for r in rows)
    print(f"\n{n:,} ratings (scale {args.scale}), {os.cpu_count()} CPUs")
    print(f"| stage   | seconds | peak RSS (GB) |\n|---------|--------:|--------------:|")
    for name, seconds, rss in rows:
        print(f"| {name:<7} | {seconds:7.1f} | {rss:13.2f} |")
    print(f"| total   | {total:7.1f} | {max(r[2] for r in rows):13.2f} |")
    print(f"target: <= 120 s in all, <= 8 GB peak RSS -> {'met' if total <= 120 and max(r[2] for r in rows) <= 8 else 'NOT met'}")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
