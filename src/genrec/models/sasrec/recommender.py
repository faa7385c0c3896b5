"""SASRec as a `genrec.models.interface.Recommender`: trained on every training position, the best epoch by
validation `sasrec.select_metric` kept, the full catalogue ranked (`genrec.models.sasrec.model`).

Its model folder holds model.safetensors, config.json (architecture, dataset, split fingerprint, item order,
params) and training.json (per-epoch loss and validation scores, best epoch, training seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.config.params import SasrecParams, to_dict
from genrec.evaluation.scoring import SplitData
from genrec.io import split_fingerprint, write_json
from genrec.models.sasrec import model as sasrec


class Sasrec:
    """Self-attentive sequential recommendation (Kang & McAuley 2018) on the split."""

    name = "sasrec"

    def __init__(self, cfg: SasrecParams, exclude_history: bool, dataset: str, processed_dir: Path) -> None:
        self.cfg, self.exclude_history = cfg, exclude_history
        self.dataset, self.processed_dir = dataset, Path(processed_dir)
        self.model, self.history, self.item_ids = None, [], []

    def fit(self, data: SplitData) -> dict:
        """Train; the best validation epoch is the model kept."""
        self.model, self.history = sasrec.train_sasrec(data, self.cfg, self.exclude_history)
        self.item_ids = [str(i) for i in data.item_ids]
        best = max(self.history, key=lambda r: r[f"valid_{self.cfg.select_metric}"])
        return {"best_epoch": best["epoch"], "epochs": len(self.history)}

    def save(self, folder: Path, facts: dict) -> None:
        """model.safetensors, config.json and training.json into `folder`."""
        sasrec.save_sasrec(self.model, folder, {"dataset": self.dataset,
                                                "split_fingerprint": split_fingerprint(self.processed_dir),
                                                "item_ids": self.item_ids, "sasrec": to_dict(self.cfg)})
        write_json(folder / "training.json", {"epochs": self.history, "best_epoch": facts["best_epoch"],
                                              "train_seconds": facts["train_seconds"]})

    def rank(self, histories: list[np.ndarray], k: int, exclude_history: bool
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Scores of every item after each history (its latest `max_len` items)."""
        return sasrec.rank_with_sasrec(self.model, histories, k, exclude_history)

    def truncated(self, histories: list[np.ndarray]) -> int:
        """Histories longer than max_len lose their oldest items, as GenRec's prompts lose titles."""
        return sum(len(h) > self.cfg.max_len for h in histories)
