"""Collaborative codes: training-only co-occurrence, regularised spectral clustering, every item coded."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from genrec.data.sequences import load_sequences
from genrec.indexing import collaborative
from genrec.indexing.codes import check_codes
from genrec.indexing.collaborative import collaborative_codes, cooccurrence, spectral_labels
from tiny_genrec import write_split

COMMUNITY = 8  # items per community


def communities(swap_targets: bool = False) -> dict[str, list[str]]:
    """Users a0.. watch only items A*, users b0.. only items B* (6 items each: 4 train, valid, test).

    With `swap_targets`, user a0's valid and test items come from community B instead.
    """
    sequences = {}
    for name in "ab":
        for u in range(COMMUNITY):
            sequences[f"{name}{u}"] = [f"{name.upper()}{(u + p) % COMMUNITY}" for p in range(6)]
    if swap_targets:
        sequences["a0"][-2:] = ["B0", "B1"]
    return sequences


def load(tmp_path, sequences, extra_items=()):
    return load_sequences(write_split(tmp_path, sequences, extra_items=extra_items))


def test_cooccurrence_counts_training_pairs_within_the_window(tmp_path):
    # u1's train items are x, y, z, x (valid v, test t); u2's are y, z (valid x, test v).
    seqs = load(tmp_path, {"u1": ["x", "y", "z", "x", "v", "t"], "u2": ["y", "z", "x", "v"]})
    index = {item: i for i, item in enumerate(seqs.item_ids)}

    def count(graph, a, b):
        return graph[index[a], index[b]]

    near = cooccurrence(seqs, window=1)
    assert (near != near.T).nnz == 0 and near.diagonal().sum() == 0
    assert count(near, "x", "y") == 1 and count(near, "y", "z") == 2 and count(near, "z", "x") == 1
    wide = cooccurrence(seqs, window=3)
    # x-y: distance 1 and 2 (the repeat of x); x-z: distances 2 and 1; the x-x repeat is no self-link.
    assert count(wide, "x", "y") == 2 and count(wide, "x", "z") == 2 and count(wide, "y", "z") == 2
    for held_out in ("v", "t"):  # valid and test items never link
        assert wide[index[held_out]].nnz == 0


def test_two_communities_split_at_the_first_level(tmp_path):
    seqs = load(tmp_path, communities(), extra_items=["Z"])
    for levels in (1, 2):
        codes = collaborative_codes(seqs, levels=levels, clusters=2, seed=3)
        check_codes(codes, seqs.item_ids, tmp_path)
        first = {item: codes.codes[item][0] for item in seqs.item_ids if item != "Z"}
        a = {first[f"A{i}"] for i in range(COMMUNITY)}
        b = {first[f"B{i}"] for i in range(COMMUNITY)}
        assert len(a) == 1 and len(b) == 1 and a != b
        assert codes.depth == levels + 1 and codes.level_sizes[:levels] == (2,) * levels


def test_codes_are_deterministic_and_ignore_held_out_items(tmp_path):
    seqs = load(tmp_path / "one", communities(), extra_items=["Z"])
    codes = collaborative_codes(seqs, levels=2, clusters=3, seed=7)
    assert collaborative_codes(seqs, levels=2, clusters=3, seed=7).codes == codes.codes
    swapped = load(tmp_path / "two", communities(swap_targets=True), extra_items=["Z"])
    assert swapped.item_ids == seqs.item_ids
    assert collaborative_codes(swapped, levels=2, clusters=3, seed=7).codes == codes.codes


def test_untrained_items_are_coded(tmp_path):
    seqs = load(tmp_path, communities(), extra_items=["Z1", "Z2", "Z3"])
    codes = collaborative_codes(seqs, levels=2, clusters=2, seed=0)
    check_codes(codes, seqs.item_ids, tmp_path)
    assert codes.settings["unlinked_items"] == 3 and codes.settings["linked_items"] == 2 * COMMUNITY
    # They join the smallest clusters rather than piling into one leaf.
    assert len({codes.codes[z][:1] for z in ("Z1", "Z2", "Z3")}) == 2


def planted_partition(blocks: int, size: int, seed: int) -> sp.csr_matrix:
    """A random graph with dense blocks on the diagonal and a few edges between blocks."""
    rng = np.random.default_rng(seed)
    n = blocks * size
    block = np.arange(n) // size
    dense = rng.random((n, n)) < np.where(block[:, None] == block[None, :], 0.2, 0.005)
    dense = np.triu(dense, 1)
    return sp.csr_matrix((dense | dense.T).astype(np.float64))


def test_spectral_labels_recover_planted_blocks_with_both_eigensolvers(monkeypatch):
    graph = planted_partition(blocks=4, size=60, seed=0)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    truth = np.arange(240) // 60
    dense = spectral_labels(graph, degree, 4, seed=1)
    monkeypatch.setattr(collaborative, "DENSE_NODES", 10)
    sparse = spectral_labels(graph, degree, 4, seed=1)
    for labels in (dense, sparse):
        # Each planted block is one cluster (labels are a permutation of the blocks).
        assert len({(t, label) for t, label in zip(truth, labels)}) == 4
    np.testing.assert_array_equal(sparse, spectral_labels(graph, degree, 4, seed=1))
