"""Title embeddings with the project's backbone: shape, dtype, and independence from batching and order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec.indexing.embeddings import embed_titles

BACKBONE = Path(__file__).resolve().parents[2] / "models" / "base"
TITLES = ["Toy Story (1995)", "Heat (1995)", "LEGO Creator Expert Roller Coaster Building Kit with Lights",
          "Toy Story (1995)", "Nerf Vortex Vigilon Blaster", "Go"]

pytestmark = pytest.mark.skipif(not (BACKBONE / "config.json").is_file(),
                                reason=f"no backbone at {BACKBONE} (dvc repro base_model)")


@pytest.fixture(scope="module")
def embedded() -> np.ndarray:
    return embed_titles(TITLES, str(BACKBONE), batch_size=len(TITLES), progress=False)


def test_one_float32_row_per_title(embedded):
    assert embedded.shape == (len(TITLES), 576) and embedded.dtype == np.float32
    assert np.isfinite(embedded).all()
    np.testing.assert_allclose(embedded[0], embedded[3], rtol=0, atol=1e-5)  # the same title twice
    assert not np.allclose(embedded[0], embedded[1], atol=1e-2)


def test_batching_and_order_do_not_change_an_embedding(embedded):
    one_by_one = embed_titles(TITLES, str(BACKBONE), batch_size=1, progress=False)
    # Padding changes the matrix shapes and so the float rounding, nothing else; states reach ~50 in size.
    np.testing.assert_allclose(one_by_one, embedded, rtol=1e-5, atol=1e-5)
    reversed_rows = embed_titles(TITLES[::-1], str(BACKBONE), batch_size=4, progress=False)[::-1]
    np.testing.assert_allclose(reversed_rows, embedded, rtol=1e-5, atol=1e-5)


def test_deterministic(embedded):
    np.testing.assert_array_equal(embed_titles(TITLES, str(BACKBONE), batch_size=len(TITLES), progress=False),
                                  embedded)
