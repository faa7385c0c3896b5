"""How many users a beam search decodes together: `eval.batch_size`, a number or `auto`.

`auto` fills the GPU's free memory with the memory one user needs, which at a 7B backbone is mostly its KV
cache: 2 (keys and values) x layers x KV heads x head dim x the dtype's bytes, a token, for the tokens one
user keeps in the cache. GenRec's search (`genrec.decoding.beam_search`) prefills the prompt once and
appends every beam's tokens to the same sequence, so a user keeps longest prompt + num_beams x
max_new_tokens tokens; a search that copies the prompt into each beam (P5's encoder states) keeps
num_beams x (input + generated) tokens. Each step also holds the beams' float32 scores over the whole
vocabulary (log-softmax, the running sums, the top-k), a few copies of num_beams x vocab x 4 bytes.
Only `AUTO_USABLE` of the free memory is planned for: activations, the allocator's fragmentation and
the LM head's output take the rest. On the CPU there is no free-memory figure to go by: `auto` is
`CPU_BATCH_SIZE`, params.yaml's default.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 32
"""`auto` on the CPU: params.yaml's default eval.batch_size."""

AUTO_MAX = 256
"""The largest batch `auto` chooses: past it a GPU is busy anyway, and the last batch's padding grows."""

AUTO_USABLE = 0.8
"""Share of the free GPU memory `auto` plans for."""

SCORE_COPIES = 4
"""float32 [num_beams, vocab] tensors a user holds at one step (log-probs, scores, masked scores, top-k input)."""


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """2 x layers x KV heads x head dim x `dtype_bytes`: one cached token of a model with HF `config`.

    A T5 config counts its decoder (`num_decoder_layers`, `num_heads`, `d_kv`); grouped-query models their
    `num_key_value_heads`.
    """
    layers = getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def auto_batch_size(free_bytes: int, kv_bytes: int, tokens_per_user: int, num_beams: int, vocab_size: int,
                    *, usable: float = AUTO_USABLE, cap: int = AUTO_MAX) -> int:
    """Users whose search fits `usable` x `free_bytes`, between 1 and `cap`.

    One user needs kv_bytes x tokens_per_user (its cache) + SCORE_COPIES x num_beams x vocab_size x 4
    (one step's float32 scores).
    """
    per_user = kv_bytes * tokens_per_user + SCORE_COPIES * num_beams * vocab_size * 4
    return max(1, min(cap, int(free_bytes * usable) // per_user))


def free_gpu_bytes(model) -> int:
    """Free memory of the GPUs `model` runs on: its device's, or, for a model whose layers are spread
    (`hf_device_map`), the least free of its GPUs times their number (the layers are spread evenly)."""
    import torch

    placed = getattr(model, "hf_device_map", None) or {}
    gpus = sorted({torch.device(d).index if not isinstance(d, int) else d for d in placed.values()
                   if isinstance(d, int) or str(d).startswith("cuda")} - {None})
    if not gpus:
        gpus = [model.device.index if model.device.index is not None else torch.cuda.current_device()]
    return min(torch.cuda.mem_get_info(g)[0] for g in gpus) * len(gpus)


def resolve_batch_size(requested: int | str, model, tokens_per_user: int, num_beams: int) -> int:
    """`eval.batch_size` as a number: itself, or for `auto` the `auto_batch_size` of `model`'s GPU memory
    (`CPU_BATCH_SIZE` on the CPU). The choice is logged."""
    if requested != "auto":
        return int(requested)
    if model.device.type != "cuda":
        log.info("eval.batch_size=auto on the %s: %d users a batch", model.device.type, CPU_BATCH_SIZE)
        return CPU_BATCH_SIZE
    dtype_bytes = next(model.parameters()).element_size()
    kv = kv_bytes_per_token(model.config, dtype_bytes)
    free = free_gpu_bytes(model)
    size = auto_batch_size(free, kv, tokens_per_user, num_beams, model.config.vocab_size)
    log.info("eval.batch_size=auto: %d users a batch (%.1f GiB free, %.1f MiB of KV cache a user: %d tokens of "
             "%d bytes)", size, free / 2**30, kv * tokens_per_user / 2**20, tokens_per_user, kv)
    return size
