"""What a scoring recommender implements to join the comparison (MostPop, SASRec, or a new one).

A model that scores every catalogue item for a history needs two methods and, if it keeps weights, a third;
`genrec.evaluation.harness.evaluate_recommender` does the rest with the shared protocol: reads the split,
times `fit`, draws the evaluated users (the same seeded sample as GenRec's), ranks them, writes the metrics
and predictions files, and logs an MLflow run of the model. Generative models (GenRec, P5) run a beam search
instead and write the same files through `genrec.evaluation.outputs.finish`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from genrec.evaluation.scoring import SplitData


class Recommender(Protocol):
    """A recommender trained on the split that ranks the full catalogue for item-code histories.

    Items are coded 1..N as in `SplitData` (0 = padding). Optional: `save(folder, facts)` writes the trained
    model (called when the stage has a model folder) and `truncated(histories)` counts histories the model
    reads only in part (reported as `prompts_truncated`).
    """

    name: str
    """The `model` key of its metrics file (and the stem of its files)."""

    def fit(self, data: SplitData) -> dict:
        """Train on `data` (its training sequences; the validation item may select epochs).

        Returns:
            Facts to record in the metrics file (e.g. {"best_epoch": 3}); {} when none.
        """

    def rank(self, histories: list[np.ndarray], k: int, exclude_history: bool
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per history, the k best item codes and their scores (best first; fewer when fewer candidates).

        With `exclude_history`, codes of the history are never returned; ties are broken by item code.
        """


def save_model(recommender: Recommender, folder: Path, facts: dict) -> bool:
    """Call the recommender's `save` if it has one; True when it saved."""
    save = getattr(recommender, "save", None)
    if save is None:
        return False
    save(folder, facts)
    return True
