"""Index stage: every item representation of `index.methods`, one folder each, checked and logged.

    genrec index --processed data/processed/<dataset> --embeddings data/embeddings/<dataset> \\
        --out data/index/<dataset> --metrics reports/<dataset>/index_stats.json

For each method (`genrec.indexing.codes`): `random` and `sequential` (one code per item), `collaborative`
(spectral clustering of the training co-occurrence graph, `genrec.indexing.collaborative`) and `semantic`
(residual k-means over the title embeddings, `genrec.indexing.semantic`), each then proved to name the
catalogue (`check_codes`: every item one tuple, every tuple one item). Only training sequences shape a code.

Writes `out_dir/<method>/codes.json` and `stats.json` atomically (all methods at once), the stats of every
method to `metrics_path` (a DVC metrics file) and to an MLflow run named "index" (params `index.*`, metrics
`<method>.<stat>`, e.g. `semantic.collision_rate`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from genrec.config.params import Params, to_dict
from genrec.data.sequences import Sequences, load_sequences
from genrec.errors import DataError
from genrec.indexing import codes as index_codes
from genrec.io import atomic_path, write_json
from genrec.stages.embed import read_embeddings
from genrec.tracking import runs as tracking

log = logging.getLogger(__name__)


def train_sequences(seqs: Sequences) -> list[list[str]]:
    """Each user's training items (oldest first), users in id order: valid and test items left out."""
    rows = np.flatnonzero(seqs.split == 0)  # sorted by (user, position)
    bounds = np.flatnonzero(np.diff(seqs.user[rows])) + 1
    return [[seqs.item_ids[c] for c in chunk] for chunk in np.split(seqs.item[rows], bounds)] if rows.size else []


def build(method: str, params: Params, seqs: Sequences, embeddings_dir: Path | None) -> index_codes.ItemCodes:
    """One method's codes over the catalogue of `seqs`."""
    cfg = params.index
    if method == "random":
        return index_codes.random_codes(seqs.item_ids, cfg.seed)
    if method == "sequential":
        return index_codes.sequential_codes(train_sequences(seqs), seqs.item_ids)
    if method == "collaborative":
        from genrec.indexing.collaborative import collaborative_codes

        return collaborative_codes(seqs, cfg.cluster_levels, cfg.clusters, cfg.seed)
    if embeddings_dir is None:
        raise DataError("the semantic index needs title embeddings", fix="pass --embeddings (genrec embed)")
    from genrec.indexing.semantic import semantic_codes

    items, vectors = read_embeddings(embeddings_dir)
    missing = sorted(set(seqs.item_ids) - set(items))
    if missing:
        raise DataError(f"the embeddings miss {len(missing)} catalogue items (e.g. {missing[0]!r})",
                        path=embeddings_dir, fix="re-embed this split (dvc repro embed@<dataset>)")
    row = {item: i for i, item in enumerate(items)}
    catalogue = sorted(seqs.item_ids)
    return semantic_codes(catalogue, vectors[[row[i] for i in catalogue]], cfg.levels, cfg.codebook_size, cfg.seed)


def run(params: Params, *, processed_dir: Path, embeddings_dir: Path | None, out_dir: Path, metrics_path: Path) -> dict:
    """Build, check and write every index of `index.methods`; log their stats.

    Returns:
        {"out_dir", "metrics", "stats": {method: stats}}.

    Raises:
        DataError: a malformed split, missing embeddings, or an index that does not name the catalogue.
    """
    import mlflow

    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    seqs = load_sequences(processed_dir)
    stats = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for method in params.index.methods:
            start = time.perf_counter()
            built = build(method, params, seqs, Path(embeddings_dir) if embeddings_dir else None)
            index_codes.check_codes(built, seqs.item_ids, out_dir / method / index_codes.CODES_FILE)
            stats[method] = index_codes.code_stats(built, time.perf_counter() - start)
            built.save(tmp / method)
            # Beside the codes, the stats without the timing: a rebuild of the same codes leaves the folder (a dep of
            # every model trained on it) byte-identical; the seconds go to metrics_path and MLflow.
            write_json(tmp / method / index_codes.STATS_FILE, {k: v for k, v in stats[method].items() if k != "seconds"})
            log.info("%s index: %d items, %d codes each, collision rate %.4f, %.1f s", method,
                     stats[method]["items"], stats[method]["depth"], stats[method]["collision_rate"],
                     stats[method]["seconds"])
    write_json(metrics_path, stats)
    with tracking.start_or_resume_run(params, run_name="index", tags={"genrec.family": "index"}):
        mlflow.log_params({k: str(v)[:tracking.MAX_PARAM_LENGTH]
                           for k, v in tracking.flatten({"index": to_dict(params.index),
                                                         "dataset": params.dataset}).items()})
        tracking.log_metrics_file(metrics_path)
    return {"out_dir": out_dir, "metrics": Path(metrics_path), "stats": stats}
