"""Title embeddings for semantic IDs: the mean of a language model's last hidden states over each title's tokens.

TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval") quantises a content embedding
of every item into its semantic ID; MiniOneRec and OpenOneRec embed item text with a language model the same
way. genrec embeds the title with the project's own backbone by default (models/base, offline), so the
semantic codes need no extra download.

Choices, and why:
- Mean pooling over the attention mask (Reimers & Gurevych 2019, Sentence-BERT): a decoder's last token
  sees the whole title too, but its state is shaped to predict the next token; the mean over all tokens
  is the steadier title summary and works for encoders as well.
- float32 weights and `torch.inference_mode()`: the embeddings feed a clustering, so half-precision
  rounding would move items across cluster borders from one machine to another.
- Right padding, titles sorted by token count: in a causal model a real token never attends to padding
  that comes after it and keeps its positions 0..n-1, so a title's vector does not depend on its batch
  (left padding would shift the positions); sorting keeps the padding, and the wasted work, small.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_TOKENS = 128
"""Tokens of a title that are embedded; longer titles are truncated (the longest toys-p5 title has 167)."""


def embed_titles(titles: Sequence[str], model_dir_or_id: str, batch_size: int, progress: bool = True,
                 max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """Embed each title as the attention-mask-weighted mean of the model's last hidden states.

    Args:
        titles: the texts, in catalogue order.
        model_dir_or_id: a local model folder (works offline) or an HF model id; loaded with `AutoModel`,
            so a causal LM checkpoint gives its base model.
        batch_size: titles per forward pass.
        progress: show a tqdm bar over titles.
        max_tokens: truncate longer titles to this many tokens.

    Returns:
        float32 array [len(titles), hidden size], row i the embedding of titles[i].
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir_or_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(model_dir_or_id, dtype=torch.float32).eval()
    token_ids = tokenizer(list(titles), truncation=True, max_length=max_tokens)["input_ids"]
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    out = np.zeros((len(titles), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), tqdm(total=len(titles), desc="embedding titles", unit="title",
                                      disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).float().numpy()
            bar.update(len(rows))
    return out
