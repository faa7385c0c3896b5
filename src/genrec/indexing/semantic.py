"""Semantic item codes: residual k-means (RQ-KMeans) of title embeddings, then a collision code.

TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval") names each item by the
codewords of a residual quantiser of its content embedding: level 0 picks the nearest of `codebook_size`
centroids, level 1 quantises what is left (the residual), and so on; items with similar content share
leading codes, so a model can generalise from one to the next. TIGER learns the codebooks with an RQ-VAE;
MiniOneRec and OpenOneRec fit them with plain k-means per level (RQ-KMeans), which needs no training loop,
is seeded, and uses every codeword (an RQ-VAE's codebooks often collapse). genrec does the latter.

Choices, and why:
- Embeddings are L2-normalised first, so k-means compares directions (cosine similarity, the measure text
  embeddings are compared with) and a title's vector length, which follows how many and which tokens it
  has more than what it names, does not decide its cluster. Residual quantisation also needs one scale:
  level 0's error is then comparable across items and datasets (`residual_norm`, on unit vectors).
- Level l fits `KMeans(n_clusters=min(codebook_size, distinct rows), random_state=seed + l)` on the
  residuals: a catalogue smaller than a codebook, or residuals already zero, cannot fill more clusters.
- The mean residual norm after each level (the quantisation error) is recorded in `settings`, so the
  index reports how much of the embedding its codes keep.
- Items whose leading codes coincide (identical titles, for one) are told apart by `separate_collisions`.
- k-means runs on one thread: the result then does not depend on the number of cores (OpenMP threads sum
  partial centroids in a different order), and on a busy machine it is faster.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from genrec.indexing.codes import ItemCodes, separate_collisions

KMEANS_INITS = 1
"""k-means runs per level (the best inertia wins). On toys-p5's first level three runs lowered the inertia by
0.15% and took twice as long."""
DISTINCT_DECIMALS = 9
"""Decimals to which residuals are compared when counting distinct points."""


def semantic_codes(item_ids: Sequence[str], embeddings: np.ndarray, levels: int, codebook_size: int,
                   seed: int) -> ItemCodes:
    """Codes of every item: `levels` levels of residual k-means on its normalised embedding, then a collision code.

    Args:
        item_ids: the items, in the order of `embeddings`' rows.
        embeddings: [n_items, dim] content embeddings (e.g. `genrec.indexing.embeddings.embed_titles`).
        levels: residual quantisation levels (IndexParams.levels).
        codebook_size: centroids per level (IndexParams.codebook_size).
        seed: level l's k-means uses seed + l.

    Returns:
        `ItemCodes` of depth `levels + 1`, level sizes [codebook_size] * levels + [largest shared prefix].

    Raises:
        ValueError: embeddings not 2-D, or not one row per item.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) != len(item_ids):
        raise ValueError(f"expected one embedding row per item ({len(item_ids)}), got shape {embeddings.shape}")
    residual = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    prefixes = np.zeros((len(item_ids), levels), dtype=np.int64)
    residual_norms = []
    with threadpool_limits(limits=1):
        for level in range(levels):
            if len(residual):
                prefixes[:, level], centroids = residual_kmeans(residual, codebook_size, seed + level)
                residual = residual - centroids[prefixes[:, level]]
            error = float(np.linalg.norm(residual, axis=1).mean()) if len(residual) else 0.0
            residual_norms.append(round(error, 6))
    settings = {"levels": levels, "codebook_size": codebook_size, "seed": seed, "normalised": "l2",
                "residual_norm": residual_norms}
    return separate_collisions("semantic", dict(zip(item_ids, map(tuple, prefixes.tolist()))),
                               [codebook_size] * levels, settings)


def residual_kmeans(points: np.ndarray, codebook_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(label per point, centroids) of one quantisation level, with at most as many clusters as distinct points.

    Points equal up to rounding noise (1e-9 on unit-length embeddings) count as one: clustering that noise
    would spend codes on float error.
    """
    # Adding 0.0 turns -0.0 into 0.0, so the bytes of equal rows are equal.
    distinct = len({row.tobytes() for row in points.round(DISTINCT_DECIMALS) + 0.0})
    kmeans = KMeans(n_clusters=min(codebook_size, distinct), n_init=KMEANS_INITS, random_state=seed)
    labels = kmeans.fit_predict(points)
    return labels.astype(np.int64), kmeans.cluster_centers_
