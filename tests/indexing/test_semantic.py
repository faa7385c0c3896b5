"""Semantic codes: residual k-means on normalised embeddings, collisions separated, small catalogues."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.indexing.codes import check_codes
from genrec.indexing.semantic import semantic_codes


def items(n: int) -> list[str]:
    return [f"i{k:03d}" for k in range(n)]


def test_codes_are_deterministic_and_name_every_item():
    ids = items(300)
    vectors = np.random.default_rng(0).normal(size=(300, 16))
    codes = semantic_codes(ids, vectors, levels=3, codebook_size=8, seed=5)
    check_codes(codes, ids, "semantic")
    assert codes.level_sizes[:3] == (8, 8, 8) and codes.depth == 4
    assert semantic_codes(ids, vectors, levels=3, codebook_size=8, seed=5).codes == codes.codes
    settings = codes.settings
    assert (settings["levels"], settings["codebook_size"], settings["seed"]) == (3, 8, 5)
    norms = settings["residual_norm"]
    assert len(norms) == 3 and norms[0] < 1.0 and norms[-1] < norms[0]


def test_identical_embeddings_share_a_prefix_and_get_distinct_last_codes():
    ids = items(40)
    vectors = np.random.default_rng(1).normal(size=(40, 8))
    vectors[[3, 17, 29]] = vectors[3]
    codes = semantic_codes(ids, vectors, levels=2, codebook_size=4, seed=0)
    check_codes(codes, ids, "semantic")
    twins = [codes.codes[ids[k]] for k in (3, 17, 29)]
    assert len({t[:-1] for t in twins}) == 1
    assert len({t[-1] for t in twins}) == 3


def test_scale_does_not_matter_but_direction_does():
    # Two directions, each at many lengths: normalised, they are two points, one first-level code each.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2, 6))
    vectors = np.concatenate([base[0] * rng.uniform(0.1, 50, (20, 1)), base[1] * rng.uniform(0.1, 50, (20, 1))])
    codes = semantic_codes(items(40), vectors, levels=2, codebook_size=4, seed=0)
    first = [codes.codes[i][0] for i in items(40)]
    assert len(set(first[:20])) == 1 and len(set(first[20:])) == 1 and first[0] != first[20]
    assert codes.settings["residual_norm"][0] == pytest.approx(0.0, abs=1e-9)


def test_fewer_items_than_codewords():
    ids = items(5)
    codes = semantic_codes(ids, np.random.default_rng(3).normal(size=(5, 4)), levels=2, codebook_size=64, seed=0)
    check_codes(codes, ids, "semantic")
    assert codes.level_sizes == (64, 64, 1)
    assert len({codes.codes[i][0] for i in ids}) == 5  # each item its own centroid, nothing left to quantise
    assert {codes.codes[i][1] for i in ids} == {0}


def test_one_row_per_item_is_required():
    with pytest.raises(ValueError, match="one embedding row per item"):
        semantic_codes(items(3), np.zeros((4, 2)), levels=1, codebook_size=2, seed=0)
