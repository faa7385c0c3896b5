"""Collaborative item codes (CID): a hierarchical spectral clustering of the item co-occurrence graph.

OpenP5's collaborative indexing (Hua et al. 2023, "How to Index Item IDs for Recommendation Foundation
Models", section 4.3) names items so that items consumed together share their leading codes: build a graph
whose edge weights count how often two items occur in the same user's training sequence, split it into
`clusters` groups by spectral clustering, split each group again, and after `levels` levels number the
items sharing a leaf with a last code (`separate_collisions`).

Choices, and why:
- Only TRAINING rows (split 0) build the graph. A validation or test item that shaped the codes would let
  the codes carry the answer.
- Two items co-occur when they lie at most `window` positions apart in one user's training sequence.
  OpenP5 counts every pair of a sequence; a window bounds the work at rows x window pairs instead of the
  squared sequence lengths (their sum is 41.6M for ml-latest-small's 610 users against 0.9M pairs with the
  window, and billions for ML-25M) and favours what was consumed close in time.
- The spectral step is regularised spectral clustering (Qin & Rohe 2013, "Regularized Spectral Clustering
  under the Degree-Corrected Stochastic Block Model"): the top `clusters` eigenvectors of
  D_tau^-1/2 A D_tau^-1/2 with D_tau = D + tau I, tau the mean degree, rows normalised to unit length,
  then k-means. Co-occurrence graphs are sparse with many low-degree items; without tau, small weakly
  attached sets own the leading eigenvectors and the clustering returns a few giant clusters and many tiny
  ones. On toys-p5 scikit-learn's `SpectralClustering(affinity="precomputed")` spent 111 s on the first
  level alone (shift-invert ARPACK) and put 4240 of 11710 items in one cluster; the regularised version
  takes under a second, its largest of 32 clusters holds 814 items, and 31% of the co-occurrence weight
  stays inside clusters (3% if items were spread at random).
- Items without any co-occurrence inside the group being split (never trained, or linked only to items
  that went to other groups) carry no collaborative signal: each joins the currently smallest cluster,
  in catalogue order, which keeps the leaves small and the assignment deterministic.
- A group of at most `clusters` linked items needs no clustering: its items get distinct codes 0..n-1.

Everything is seeded (the ARPACK start vector and k-means) and runs on one thread, so a seed gives the same
codes on any number of cores.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from genrec.data.sequences import Sequences
from genrec.indexing.codes import ItemCodes, separate_collisions

WINDOW = 10
"""Neighbours on each side of an item in a training sequence that count as co-occurring with it."""
DENSE_NODES = 200
"""Graphs up to this many nodes get a dense eigensolver; ARPACK is faster above (0.05 s vs 0.17 s at 1500)."""
KMEANS_INITS = 3
"""k-means restarts on the spectral embedding (the best inertia wins)."""


def cooccurrence(seqs: Sequences, window: int = WINDOW) -> sp.csr_matrix:
    """Symmetric item x item counts of two items lying within `window` positions in a user's training sequence.

    Only training rows count; repeats of one item in a sequence do not link the item to itself.

    Args:
        seqs: the split's sequences (rows sorted by user, split, position, so each user's training rows
            are contiguous and in order).
        window: the largest distance in positions that still counts (>= 1).

    Returns:
        A float64 CSR matrix [n_items x n_items], zero diagonal, entry (i, j) = (j, i) = the number of
        such pairs over all users.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(seqs.item_ids)
    train = seqs.split == 0
    item, user = seqs.item[train].astype(np.int64), seqs.user[train]
    counts = sp.csr_matrix((n, n), dtype=np.float64)
    for offset in range(1, window + 1):
        left, right = item[:-offset], item[offset:]
        keep = (user[:-offset] == user[offset:]) & (left != right)
        left, right = left[keep], right[keep]
        # One offset at a time, so memory stays at one offset's pairs plus the running sum.
        pairs = sp.csr_matrix((np.ones(2 * len(left)), (np.concatenate([left, right]), np.concatenate([right, left]))),
                              shape=(n, n))
        counts = counts + pairs
    counts.sum_duplicates()
    return counts


def collaborative_codes(seqs: Sequences, levels: int, clusters: int, seed: int, window: int = WINDOW) -> ItemCodes:
    """Codes of every catalogue item: `levels` levels of regularised spectral clustering, then a collision code.

    Args:
        seqs: the split's sequences; only training rows are read.
        levels: clustering levels before the last code (IndexParams.cluster_levels).
        clusters: groups per split (IndexParams.clusters).
        seed: seeds the eigensolver's start vector and k-means.
        window: co-occurrence window (see `cooccurrence`).

    Returns:
        `ItemCodes` of depth `levels + 1`, level sizes [clusters] * levels + [largest leaf].
    """
    graph = cooccurrence(seqs, window)
    prefixes = np.zeros((graph.shape[0], levels), dtype=np.int64)
    groups = [np.arange(graph.shape[0])]
    # Each split is small (hundreds of nodes below the first level): BLAS and OpenMP threads cost more in
    # synchronisation than they save, and on a busy 2-core machine they stretched toys-p5 from 3 s to 50 s.
    with threadpool_limits(limits=1):
        for level in range(levels):
            children = []
            for members in groups:
                labels = split_group(graph[members][:, members], clusters, seed)
                prefixes[members, level] = labels
                children += [members[labels == c] for c in np.unique(labels)]
            groups = children
    degree = np.asarray(graph.sum(axis=1)).ravel()
    settings = {"levels": levels, "clusters": clusters, "seed": seed, "window": window,
                "linked_items": int((degree > 0).sum()), "unlinked_items": int((degree == 0).sum())}
    return separate_collisions("collaborative", dict(zip(seqs.item_ids, map(tuple, prefixes.tolist()))),
                               [clusters] * levels, settings)


def split_group(graph: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """Labels 0..k-1 of a group's items from its co-occurrence subgraph.

    At most k items: distinct labels 0..n-1. Otherwise items with co-occurrences inside the group are
    clustered (`spectral_labels`, or distinct labels if there are at most k of them) and the others each
    join the smallest cluster so far, in order.
    """
    n = graph.shape[0]
    if n <= k:
        return np.arange(n)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    linked = np.flatnonzero(degree > 0)
    labels = np.zeros(n, dtype=np.int64)
    if len(linked) > k:
        labels[linked] = spectral_labels(graph[linked][:, linked], degree[linked], k, seed)
    else:
        labels[linked] = np.arange(len(linked))
    sizes = np.bincount(labels[linked], minlength=k)
    for item in np.flatnonzero(degree == 0):
        smallest = int(np.argmin(sizes))
        labels[item] = smallest
        sizes[smallest] += 1
    return labels


def spectral_labels(graph: sp.csr_matrix, degree: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Regularised spectral clustering (Qin & Rohe 2013) of a graph without isolated nodes into at most k clusters.

    Args:
        graph: symmetric non-negative weights, more than k nodes, every node with positive degree.
        degree: its row sums.
    """
    n = graph.shape[0]
    scale = sp.diags(1.0 / np.sqrt(degree + degree.mean()))
    operator = (scale @ graph @ scale).astype(np.float64)
    if n <= DENSE_NODES:
        _, vectors = scipy.linalg.eigh(operator.toarray(), subset_by_index=[n - k, n - 1])
    else:
        start = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        _, vectors = eigsh(operator, k=k, which="LA", v0=start, tol=1e-6)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    # k-means cannot find more clusters than distinct points (e.g. a group of disjoint item pairs).
    distinct = len(np.unique(vectors.round(10), axis=0))
    return KMeans(n_clusters=min(k, distinct), n_init=KMEANS_INITS, random_state=seed).fit_predict(vectors)
