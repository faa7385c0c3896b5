"""P5 inference: load a checkpoint and rank items for each user with a beam search over their code tuples.

An item is its index's code tokens then EOS (one code for random or sequential ids, a tuple for the
collaborative and semantic indexes), every item the same number of tokens. `rank_constrained` runs the
beam search HF's `generate(num_beams=K, prefix_allowed_tokens_fn=<the code trie>)` runs, batched over users
with the encoder run once per user: at every step the K best (beam, allowed code) continuations by summed
log-probability go on; every path reaches EOS at the same step, so the finished beams are the last K, scored
sum(log p) / (depth + 1)**length_penalty. The trie (`genrec.decoding.trie`, as GenRec's titles use) has one
leaf per item, and a user's history items are closed to them (`excluded_node_keys`), so a beam is always an
item the user does not have. `rank_generate` runs HF `generate`: the unconstrained mode and, in the tests,
the reference the batched search must equal.
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


def rank_users(model, inputs: list[list[int]], code_ids: np.ndarray, excluded, e: EvalParams,
               tokenizer) -> list[list[tuple]]:
    """Beams per user, best first, `eval.batch_size` users at a time (see `rank_constrained`, `rank_generate`).

    `auto` sizes the batch by `genrec.decoding.memory`: every beam holds the user's encoded input and its
    generated codes, num_beams x (longest input + depth + 1) tokens a user.

    Args:
        code_ids: [items, depth] code token ids of each catalogue item (its ordinal = its leaf in the trie).
        excluded: per user, catalogue ordinals it may not be recommended (constrained only), or None.
    """
    from tqdm import tqdm

    from genrec.decoding.memory import resolve_batch_size
    from genrec.decoding.trie import build_title_trie

    trie = build_title_trie(code_ids.tolist(), tokenizer.eos_token_id).to(model.device) if e.constrained else None
    batch_size = resolve_batch_size(e.batch_size, model, e.num_beams * (max(map(len, inputs), default=0)
                                                                        + code_ids.shape[1] + 1), e.num_beams)
    out = []
    for begin in tqdm(range(0, len(inputs), batch_size), desc="p5 beam search", unit="batch"):
        chunk = inputs[begin:begin + batch_size]
        chunk_excluded = excluded[begin:begin + batch_size] if excluded is not None else None
        if e.constrained:
            out += rank_constrained(model, chunk, trie, chunk_excluded, e.num_beams, e.length_penalty,
                                    tokenizer.pad_token_id)
        else:
            out += rank_generate(model, chunk, code_ids, None, e.num_beams, e.length_penalty,
                                 tokenizer.pad_token_id, tokenizer.eos_token_id, constrained=False,
                                 max_new_tokens=e.max_new_tokens or code_ids.shape[1] + 1)
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


def rank_constrained(model, inputs, trie, excluded, num_beams: int, length_penalty: float,
                     pad_id: int) -> list[list[tuple[int, float, list[int]]]]:
    """HF's beam search constrained to the code trie, batched (see the module docstring).

    Args:
        trie: `build_title_trie` over every item's code tokens (leaf i = catalogue ordinal i), on the model's device.
        excluded: per user, catalogue ordinals closed to it, or None.

    Returns:
        Per user, up to `num_beams` (catalogue ordinal, score, generated tokens without EOS) triples, best
        first; fewer when fewer items are open to the user.
    """
    import torch

    from genrec.decoding.trie import advance, allowed_tokens, excluded_node_keys

    users, device = len(inputs), model.device
    closed = excluded_node_keys(trie, excluded).to(device) if excluded is not None else None
    with torch.inference_mode():
        ids, mask = pad(inputs, pad_id, device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = model.config.decoder_start_token_id
        # Per user `width` beams (1 at the root); a beam's score is -inf where it does not exist.
        tokens = torch.empty((users, 1, 0), dtype=torch.long, device=device)
        scores = torch.zeros((users, 1), device=device)
        nodes = torch.zeros((users, 1), dtype=torch.long, device=device)
        for _ in range(trie.max_length):
            width = tokens.shape[1]
            flat = tokens.reshape(users * width, -1)
            decoder = torch.cat([torch.full((flat.shape[0], 1), start, device=device), flat], dim=1)
            logits = model(encoder_outputs=(encoded.repeat_interleave(width, 0),),
                           attention_mask=mask.repeat_interleave(width, 0), decoder_input_ids=decoder).logits[:, -1]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            user_of = torch.arange(users, device=device).repeat_interleave(width)
            rows, allowed = allowed_tokens(trie, nodes.flatten(), user_of, closed)
            vocab = log_probs.shape[-1]
            candidates = torch.full_like(log_probs, -torch.inf)
            candidates[rows, allowed] = scores.flatten()[rows] + log_probs[rows, allowed]
            top = candidates.view(users, width * vocab).topk(min(num_beams, width * vocab), dim=-1)
            beam, token = top.indices // vocab, top.indices % vocab
            tokens = torch.cat([torch.gather(tokens, 1, beam.unsqueeze(-1).expand(-1, -1, tokens.shape[2])),
                                token.unsqueeze(-1)], dim=2)
            nodes = advance(trie, torch.gather(nodes, 1, beam).flatten(), token.flatten()).view(users, -1)
            scores = top.values
    final = (scores / trie.max_length ** length_penalty).tolist()
    leaves = trie.node_title[nodes.flatten()].view(users, -1).tolist()
    out = []
    for user_leaves, user_scores, user_tokens in zip(leaves, final, tokens[:, :, :-1].tolist()):
        out.append([(leaf, score, generated) for leaf, score, generated in zip(user_leaves, user_scores, user_tokens)
                    if np.isfinite(score) and leaf >= 0])
    return out


def rank_generate(model, inputs, code_ids: np.ndarray, excluded, num_beams: int, length_penalty: float,
                  pad_id: int, eos_id: int, constrained: bool = True,
                  max_new_tokens: int | None = None) -> list[list[tuple[int | None, float, list[int]]]]:
    """HF `generate` beam search, constrained to the code tuples of allowed items + EOS, or free.

    Returns:
        Per user, `num_beams` (catalogue ordinal, or None when the beam is not exactly one item's codes + EOS;
        score; generated tokens without EOS and padding) triples, best first.
    """
    import torch

    item_of = {tuple(codes): item for item, codes in enumerate(code_ids.tolist())}
    depth = code_ids.shape[1]
    allowed_next: dict[tuple[int, ...], set[int]] = {}
    for codes in item_of:
        for level in range(depth):
            allowed_next.setdefault(codes[:level], set()).add(codes[level])

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        prefix = tuple(sent[1:].tolist())  # after the decoder start token
        if len(prefix) == depth:
            return [eos_id]
        closed = {tuple(code_ids[i].tolist()) for i in excluded[batch_id]} if excluded else set()
        return sorted(c for c in allowed_next.get(prefix, ())
                      if any(codes[:len(prefix) + 1] == prefix + (c,) and codes not in closed for codes in item_of))

    ids, mask = pad(inputs, pad_id, model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams, num_return_sequences=num_beams,
                             do_sample=False, max_new_tokens=max_new_tokens or depth + 1,
                             length_penalty=length_penalty, early_stopping=False, output_scores=True,
                             return_dict_in_generate=True, prefix_allowed_tokens_fn=allowed if constrained else None,
                             eos_token_id=eos_id, pad_token_id=pad_id)
    sequences, scores = out.sequences[:, 1:].tolist(), out.sequences_scores.tolist()
    beams = []
    for seq, score in zip(sequences, scores):
        body = [t for t in seq if t != pad_id]
        ok = len(body) == depth + 1 and body[-1] == eos_id and tuple(body[:-1]) in item_of
        beams.append((item_of[tuple(body[:-1])] if ok else None, score, [t for t in body if t != eos_id]))
    return [beams[i:i + num_beams] for i in range(0, len(beams), num_beams)]


def ranked_entries(beams, item_ids: Sequence[str], titles: dict[str, str], tokenizer) -> list[dict]:
    """Beams as the evaluate stage's list entries {title, item_ids, score}; title None marks a non-item beam."""
    entries = []
    for ordinal, score, generated in beams:
        item = item_ids[ordinal] if ordinal is not None else None
        entries.append({"title": titles[item] if item else None, "item_ids": [item] if item else [],
                        "score": round(score, 6), **({} if item else {"text": tokenizer.decode(generated)})})
    return entries
