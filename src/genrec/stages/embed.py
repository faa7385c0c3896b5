"""Embed stage: a content vector per catalogue item, from its title, once per dataset.

    genrec embed --processed data/processed/<dataset> --base models/base --out data/embeddings/<dataset>

The semantic index (genrec.indexing.semantic) quantises these vectors into code tuples. Each vector is
the mean of the last hidden states over the title's tokens (`genrec.indexing.embeddings.embed_titles`),
from `index.embedding_model`: by default the project's backbone (models/base, offline); an HF id of a
sentence-embedding model, or its local folder, where a hub is reachable.

Writes `out_dir` atomically: `embeddings.npy` (float32, one row per item, in `items.json`'s order, the
catalogue sorted by item id) and `embeddings.json` (model, rows, width, seconds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from genrec.config.params import Params
from genrec.data.sequences import read_titles
from genrec.io import atomic_path, write_json

log = logging.getLogger(__name__)

VECTORS_FILE = "embeddings.npy"
ITEMS_FILE = "items.json"
META_FILE = "embeddings.json"


def run(params: Params, *, processed_dir: Path, base_dir: Path, out_dir: Path) -> dict:
    """Embed every catalogue title of the split in `processed_dir`; write the vectors to `out_dir`.

    Returns:
        {"out_dir", "items", "width", "seconds"}.

    Raises:
        DataError: the split's items table is missing or malformed.
    """
    from genrec.indexing.embeddings import embed_titles

    titles = read_titles(Path(processed_dir))
    items = sorted(titles)
    model = params.index.embedding_model or str(base_dir)
    start = time.perf_counter()
    vectors = embed_titles([titles[i] for i in items], model, params.index.embedding_batch)
    seconds = time.perf_counter() - start
    meta = {"model": params.index.embedding_model or "models/base (model.base: " + params.model.base + ")",
            "pooling": "mean of the last hidden states over the title's tokens", "items": len(items),
            "width": int(vectors.shape[1]), "seconds": round(seconds, 2)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / VECTORS_FILE, vectors.astype(np.float32), allow_pickle=False)
        write_json(tmp / ITEMS_FILE, items)
        write_json(tmp / META_FILE, meta)
    log.info("embedded %d titles (width %d) in %.0f s -> %s", len(items), vectors.shape[1], seconds, out_dir)
    return {"out_dir": Path(out_dir), **meta}


def read_embeddings(folder: Path) -> tuple[list[str], np.ndarray]:
    """(item ids, [items, width] float32 vectors) written by `run`."""
    import json

    from genrec.errors import DataError

    folder = Path(folder)
    if not (folder / VECTORS_FILE).is_file() or not (folder / ITEMS_FILE).is_file():
        raise DataError("no embeddings.npy / items.json", path=folder, fix="run `genrec embed` (dvc repro embed)")
    items = json.loads((folder / ITEMS_FILE).read_text(encoding="utf-8"))
    return [str(i) for i in items], np.load(folder / VECTORS_FILE, allow_pickle=False)
