"""MostPop: one global ranking by training interactions (ties by item code), the user's history removed.

The floor every recommender must clear. A `genrec.models.interface.Recommender`.
"""

from __future__ import annotations

import numpy as np

from genrec.evaluation.scoring import SplitData, popularity, rank_by_popularity


class MostPop:
    """Recommends the most popular training items the user does not have yet."""

    name = "mostpop"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, data: SplitData) -> dict:
        """Count training interactions per item."""
        self.counts = popularity(data)
        return {}

    def rank(self, histories: list[np.ndarray], k: int, exclude_history: bool
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The same popularity scores for every user, minus its history."""
        return rank_by_popularity(self.counts, histories, k, exclude_history)
