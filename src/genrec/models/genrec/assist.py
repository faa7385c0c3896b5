"""A text-free assistant for the generative search (D3: Bao et al. 2024, "Decoding Matters").

A classic recommender (SASRec, trained on the same split) scores every catalogue item for a user's
history; its item probabilities, summed per title, become log-masses on the nodes of the catalogue
trie (`genrec.decoding.trie.node_log_mass`: a node's mass is the probability of the titles below it). `genrec.decoding.beam_search`
adds `weight x (log-mass of child - log-mass of parent)` to each step, which telescopes along a title
to `weight x log p_assistant(title)`: the beams are steered towards titles the assistant likes while
the LLM still spells them. Results of a search with an assistant are reported as `genrec+sasrec`,
never as GenRec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genrec.errors import DataError
from genrec.decoding.trie import Catalogue


class SasrecAssistant:
    """Title probabilities from a saved SASRec (`genrec sasrec`'s model folder)."""

    def __init__(self, model_dir: Path, catalogue: Catalogue):
        from genrec.models.sasrec.model import load_sasrec

        if not (Path(model_dir) / "model.safetensors").is_file():
            raise DataError("no SASRec model", path=model_dir, fix="run `genrec sasrec` (dvc repro sasrec) first")
        self.model, saved = load_sasrec(model_dir)
        self.code_of = {item: code for code, item in enumerate(saved["item_ids"], 1)}
        # title index of every item code (0 = padding: no title)
        self.title_of_code = np.full(len(saved["item_ids"]) + 1, -1, dtype=np.int64)
        for title, items in enumerate(catalogue.item_ids):
            for item in items:
                if item in self.code_of:
                    self.title_of_code[self.code_of[item]] = title
        if (self.title_of_code[1:] < 0).any():
            raise DataError("the SASRec model knows items the catalogue has not", path=model_dir,
                            fix="retrain SASRec on this split (dvc repro sasrec)")
        self.n_titles = len(catalogue.titles)

    @torch.no_grad()
    def title_probs(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """[users, titles] probability of each title being the next item (items of a shared title summed)."""
        from genrec.models.sasrec.model import left_pad

        codes = [np.array([self.code_of[i] for i in h if i in self.code_of], dtype=np.int64) for h in histories]
        inputs = torch.from_numpy(left_pad(codes, self.model.config.max_len))
        probs = torch.softmax(self.model.item_logits(self.model(inputs)[:, -1]).double(), dim=-1)
        out = torch.zeros((len(histories), self.n_titles), dtype=torch.float64)
        out.index_add_(1, torch.from_numpy(self.title_of_code[1:]), probs)
        return out
