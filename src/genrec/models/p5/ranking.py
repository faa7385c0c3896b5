"""P5 inference: load a checkpoint and rank one-token items for each user, as HF's beam search would.

Every item id is one token, so a constrained beam is the item token then EOS. HF's beam search
(`generate(num_beams=K, prefix_allowed_tokens_fn=...)`) then keeps the K items of highest
log p(item), finishes each with EOS and ranks them by (log p(item) + log p(EOS | item)) / 2**length_penalty.
`rank_constrained` computes exactly that in two batched decoder calls (no beam bookkeeping);
`rank_generate` runs HF `generate`, used for the unconstrained mode and, in the tests, to show both agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from genrec.errors import DataError
from genrec.config.params import EvalParams


def load_model(model_dir: Path, dtype: str, device: str = "auto"):
    """(T5 in eval mode on `eval.device` (auto: the GPU if there is one), its tokenizer)."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from genrec.models.device import choose_device

    model_dir = Path(model_dir)
    if not any((model_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise DataError("no model.safetensors", path=model_dir,
                        fix="genrec loads safetensors weights only (never pickles); run `genrec p5_train`")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = T5ForConditionalGeneration.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                       dtype=None if dtype == "auto" else getattr(torch, dtype))
    return model.to(choose_device(device)).eval(), tokenizer


def rank_users(model, inputs: list[list[int]], item_tokens: np.ndarray, excluded, e: EvalParams,
               tokenizer) -> list[list[tuple]]:
    """Beams per user, best first, `eval.batch_size` users at a time (see `rank_constrained`, `rank_generate`)."""
    from tqdm import tqdm

    out = []
    for begin in tqdm(range(0, len(inputs), e.batch_size), desc="p5 beam search", unit="batch"):
        chunk = inputs[begin:begin + e.batch_size]
        chunk_excluded = excluded[begin:begin + e.batch_size] if excluded is not None else None
        if e.constrained:
            out += rank_constrained(model, chunk, item_tokens, chunk_excluded, e.num_beams, e.length_penalty,
                                    tokenizer.pad_token_id, tokenizer.eos_token_id)
        else:
            out += rank_generate(model, chunk, item_tokens, None, e.num_beams, e.length_penalty,
                                 tokenizer.pad_token_id, tokenizer.eos_token_id, constrained=False,
                                 max_new_tokens=e.max_new_tokens or 2)
    return out


def pad(inputs: Sequence[Sequence[int]], pad_id: int, device):
    """Right-padded input ids and attention mask (T5's encoder uses relative positions, so side is free)."""
    import torch

    width = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, x in enumerate(inputs):
        ids[row, :len(x)], mask[row, :len(x)] = torch.tensor(list(x)), 1
    return ids.to(device), mask.to(device)


def allowed_mask(vocab_size: int, item_tokens: np.ndarray, excluded, users: int, device):
    """[users, vocab] bool: item tokens, minus each user's excluded ones."""
    import torch

    allowed = torch.zeros((users, vocab_size), dtype=torch.bool, device=device)
    allowed[:, torch.as_tensor(item_tokens, device=device)] = True
    for row, tokens in enumerate(excluded or []):
        allowed[row, list(tokens)] = False
    return allowed


def rank_constrained(model, inputs, item_tokens: np.ndarray, excluded, num_beams: int, length_penalty: float,
                     pad_id: int, eos_id: int) -> list[list[tuple[int, float, list[int]]]]:
    """HF's constrained beam search for one-token items, computed directly (see the module docstring).

    Every beam finishes at the second step, so HF's stopping rules (`early_stopping`) cannot change the result.

    Returns:
        Per user, up to `num_beams` (item token, score, generated tokens) triples, best first; fewer
        when fewer items are allowed.
    """
    import torch

    with torch.inference_mode():
        ids, mask = pad(inputs, pad_id, model.device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = torch.full((len(inputs), 1), model.config.decoder_start_token_id, device=model.device)
        first = model(encoder_outputs=(encoded,), attention_mask=mask, decoder_input_ids=start).logits[:, -1]
        log_probs = torch.log_softmax(first.float(), dim=-1)
        allowed = allowed_mask(log_probs.shape[-1], item_tokens, excluded, len(inputs), model.device)
        top = log_probs.masked_fill(~allowed, -torch.inf).topk(min(num_beams, len(item_tokens)), dim=-1)
        k = top.indices.shape[1]
        decoder = torch.cat([start.repeat_interleave(k, 0), top.indices.reshape(-1, 1)], dim=1)
        second = model(encoder_outputs=(encoded.repeat_interleave(k, 0),), attention_mask=mask.repeat_interleave(k, 0),
                       decoder_input_ids=decoder).logits[:, -1]
        eos = torch.log_softmax(second.float(), dim=-1)[:, eos_id].view(len(inputs), k)
        scores = (top.values + eos) / 2 ** length_penalty
    out = []
    for row_tokens, row_scores in zip(top.indices.tolist(), scores.tolist()):
        beams = [(t, s, [t]) for t, s in zip(row_tokens, row_scores) if np.isfinite(s)]
        out.append(sorted(beams, key=lambda b: -b[1]))
    return out


def rank_generate(model, inputs, item_tokens: np.ndarray, excluded, num_beams: int, length_penalty: float,
                  pad_id: int, eos_id: int, constrained: bool = True,
                  max_new_tokens: int = 2) -> list[list[tuple[int | None, float, list[int]]]]:
    """HF `generate` beam search, constrained to an allowed item token + EOS, or free (`constrained=False`).

    Returns:
        Per user, `num_beams` (item token, or None when the beam is not exactly one item + EOS; score;
        generated tokens without EOS and padding) triples, best first.
    """
    import torch

    items = set(int(t) for t in item_tokens)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        if len(sent) > 1:  # after the decoder start token and one item: only EOS
            return [eos_id]
        return sorted(items - set(excluded[batch_id])) if excluded else sorted(items)

    ids, mask = pad(inputs, pad_id, model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams, num_return_sequences=num_beams,
                             do_sample=False, max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                             early_stopping=False, output_scores=True, return_dict_in_generate=True,
                             prefix_allowed_tokens_fn=allowed if constrained else None,
                             eos_token_id=eos_id, pad_token_id=pad_id)
    sequences, scores = out.sequences[:, 1:].tolist(), out.sequences_scores.tolist()
    beams = []
    for seq, score in zip(sequences, scores):
        body = [t for t in seq if t != pad_id]
        ok = len(body) == 2 and body[1] == eos_id and body[0] in items
        beams.append((body[0] if ok else None, score, [t for t in body if t != eos_id]))
    return [beams[i:i + num_beams] for i in range(0, len(beams), num_beams)]


def ranked_entries(beams, item_of_token: dict[int, str], titles: dict[str, str], tokenizer) -> list[dict]:
    """Beams as the evaluate stage's list entries {title, item_ids, score}; title None marks a non-item beam."""
    entries = []
    for token, score, generated in beams:
        item = item_of_token.get(token) if token is not None else None
        entries.append({"title": titles[item] if item else None, "item_ids": [item] if item else [],
                        "score": round(score, 6), **({} if item else {"text": tokenizer.decode(generated)})})
    return entries
