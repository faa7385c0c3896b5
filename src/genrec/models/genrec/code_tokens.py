"""GenRec on an item index: the index's code tokens join the backbone's vocabulary and train with the adapter.

With an item view of the split (`genrec item_view`: the same interactions, each item's "title" its code text,
e.g. "<a_12><b_7><c_3>"), GenRec generates codes instead of titles, as LC-Rec (Zheng et al. 2024) and
MiniOneRec do. Every code is one added token: `add_code_tokens` adds the index's vocabulary to the tokenizer and
resizes the embeddings (new rows start at the mean of the old ones, transformers' `mean_resizing`), and
`trainable_tokens` names those rows for PEFT's `trainable_token_indices`: only the new rows train, beside the
LoRA matrices, and PEFT saves them in the adapter file. With tied embeddings (SmolLM2) the LM head rows are the
same weights; PEFT ties its trainable-token layer on the head to the embedding's. Chosen over
`modules_to_save=["embed_tokens"]`, which would train and save the whole embedding matrix (49k x 576 floats for
SmolLM2, 113 MB per adapter) for a few hundred new rows.

`resize_for_adapter` gives a backbone the adapter's vocabulary size before PEFT loads it (evaluation, the
registry, `genrec recommend`): the tokenizer saved beside the adapter carries the added tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genrec.indexing.codes import CODES_FILE, ItemCodes

log = logging.getLogger(__name__)


def view_codes(processed_dir: Path | None) -> ItemCodes | None:
    """The item index of an item view (its codes.json), or None for a plain split (GenRec on titles)."""
    if processed_dir is None or not (Path(processed_dir) / CODES_FILE).is_file():
        return None
    return ItemCodes.load(processed_dir)


def add_code_tokens(model, tokenizer, codes: ItemCodes) -> list[int]:
    """Add every code token of `codes` to the tokenizer (whole tokens) and resize the model's embeddings.

    Returns:
        The token ids of the code vocabulary, in `codes.vocabulary()` order.
    """
    from tokenizers import AddedToken

    vocabulary = codes.vocabulary()
    added = tokenizer.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in vocabulary])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    ids = tokenizer.convert_tokens_to_ids(vocabulary)
    log.info("%s index: %d code tokens added (%d new), vocabulary %d", codes.method, len(vocabulary), added,
             len(tokenizer))
    return ids


def trainable_tokens(model, token_ids: list[int]) -> dict[str, list[int]]:
    """PEFT's `trainable_token_indices`: the code rows of the input embedding, by the embedding's module name."""
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding).rsplit(".", 1)[-1]
    return {name: sorted(token_ids)}


FULL_EMBEDDING = ".token_adapter.base_layer."
"""In an adapter file, the whole (resized) embedding and LM head PEFT saves beside the trained rows."""


def slim_adapter(path: Path) -> int:
    """Drop the whole embedding and LM head PEFT writes into an adapter whose vocabulary grew; keep the trained rows.

    PEFT saves the resized embedding matrix (and the tied head again) whenever the vocabulary size differs from
    the backbone's (49k x 576 x 2 for SmolLM2); loading needs only the trained code rows (`trainable_tokens_delta`,
    which replace those rows at merge) on a backbone resized by `resize_for_adapter`.

    Returns:
        How many tensors were dropped (0: nothing to do, the file is untouched).
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    kept = {k: v for k, v in tensors.items() if FULL_EMBEDDING not in k}
    if len(kept) < len(tensors):
        save_file(kept, path, metadata={"format": "pt"})
    return len(tensors) - len(kept)


def resize_for_adapter(model, tokenizer) -> None:
    """Grow the backbone's embeddings to the adapter's tokenizer (code tokens added at training)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # PEFT then loads the trained rows
