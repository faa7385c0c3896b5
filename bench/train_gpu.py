"""GPU training-throughput benchmark: non-padding tokens/s of LoRA SFT, GenRec's regime vs packed ones.

    python bench/train_gpu.py                       # one H100/H200: SmolLM2-135M and LLaMA-7B shapes
    python bench/train_gpu.py --shapes llama-7b --tokens 16384 --steps 20
    python bench/train_gpu.py --tiny                # CPU, a 2-layer model: every branch that runs without CUDA

Needs only torch, transformers and peft (no downloads, no genrec): the backbones are random-init
(throughput does not depend on the weights) and the data are random token ids with GenRec-like
lengths (prompt 96-240 tokens, completion 6-16 tokens + EOS). Same LoRA everywhere (r 8, alpha 16,
dropout 0.05 on q_proj/v_proj) and AdamW; a step is forward + backward + optimizer step.

Regimes:
  reference    GenRec's (alpaca-lora's): micro-batch 4 padded to its longest sequence, bf16 weights and
               bf16 autocast, logits over every position and the model's own loss.
  packed       sequences concatenated into one row of about --tokens tokens (no padding),
               position ids restarting at each sequence, attention kept inside each sequence by
               variable-length flash attention (torch.nn.attention.varlen, registered as a transformers
               attention function), LM head and loss on completion positions only.
  packed-sdpa  the same rows through transformers' own packed-sequence detection (a block-diagonal
               mask for SDPA): what `genrec train` runs today (train.format: sequence, PackedCollator),
               on GPUs and CPUs. `packed` (varlen flash attention) is not wired into the train stage yet.

Every regime steps fused AdamW. Before timing, every packed regime's loss on a fixed batch must match the
reference loss on the same sequences (bf16 weights under bf16 autocast: 2e-2 relative; --tiny also checks
float32 at 1e-5), and the varlen kernel must match per-sequence causal SDPA on random inputs, so the
speed-up is not bought with sequences attending to each other. If a packed step runs out of memory, its
tokens per step are halved and it is timed again (--tiny simulates one such failure per packed regime).

TARGETS (non-padding tok/s on one H200, printed beside each packed row) are the only copy of the training
targets; on an H200 GenRec's regime measured 2,530 tok/s at the 7B shape. --tiny runs on CPU in the GPU's
precision (bf16 weights, bf16 autocast, fused AdamW); its timings are meaningless, the point is the checks,
and it prints the branches that only CUDA reaches (CUDA_ONLY).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
DEFAULT_TOKENS = {"smollm2-135m": 32768, "llama-7b": 8192, "tiny": 2048}
VARLEN = "genrec_varlen"
TARGETS = {"smollm2-135m": 150_000, "llama-7b": 15_000}
"""Non-padding tok/s that genrec's packed regimes should reach on one H200, per shape."""
CUDA_ONLY = (
    "varlen flash attention (torch.nn.attention.varlen.varlen_attn; CPU runs per-sequence SDPA instead)",
    "torch.cuda.synchronize around the timed steps",
    "peak GPU memory (torch.cuda.reset_peak_memory_stats, max_memory_allocated)",
)
"""Branches of this script that --tiny cannot reach on a CPU; everything else runs there."""


@dataclass
class Sequence:
    ids: torch.Tensor
    prompt_len: int


def make_sequences(n: int, vocab: int, seed: int) -> list[Sequence]:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt, completion = rng.randint(96, 240), rng.randint(6, 16) + 1  # + EOS
        out.append(Sequence(torch.randint(1, vocab, (prompt + completion,), generator=gen), prompt))
    return out


def padded_batch(seqs: list[Sequence], device) -> dict:
    """Right-padded micro-batch with HF-style labels (prompt and padding -100; the model shifts them)."""
    length = max(len(s.ids) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(seqs):
        ids[i, :len(s.ids)], mask[i, :len(s.ids)] = s.ids, 1
        labels[i, s.prompt_len:len(s.ids)] = s.ids[s.prompt_len:]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "n_tokens": int(mask.sum())}


def packed_batch(seqs: list[Sequence], device) -> dict:
    """One row, no padding: position ids restart per sequence; targets are shifted within each sequence."""
    lengths = [len(s.ids) for s in seqs]
    targets = []
    for s in seqs:
        t = torch.full_like(s.ids, -100)
        t[s.prompt_len - 1:-1] = s.ids[s.prompt_len:]  # position j predicts token j + 1 of the same sequence
        targets.append(t)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"input_ids": torch.cat([s.ids for s in seqs])[None].to(device),
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None].to(device),
            "targets": torch.cat(targets)[None].to(device), "cu_seq_lens": cu.to(device),
            "max_length": max(lengths), "n_tokens": sum(lengths)}


def fill(seqs: list[Sequence], start: int, tokens: int) -> tuple[list[Sequence], int]:
    """Sequences from `start` while they fit in `tokens` (at least one)."""
    end, total = start, 0
    while end < len(seqs) and (end == start or total + len(seqs[end].ids) <= tokens):
        total += len(seqs[end].ids)
        end += 1
    return seqs[start:end], end


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each packed sequence: flash varlen on CUDA, per-sequence SDPA elsewhere."""
    cu, max_len = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q, k, v = (t.squeeze(0).transpose(0, 1).contiguous() for t in (query, key, value))  # (tokens, heads, dim)
    gqa = q.size(1) != k.size(1)
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, window_size=(-1, 0), enable_gqa=gqa)
    else:
        bounds = cu.tolist()
        out = torch.cat([F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scaling,
            enable_gqa=gqa).transpose(0, 1) for a, b in zip(bounds, bounds[1:])])
    return out.unsqueeze(0), None


def register_varlen() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, lambda *args, **kwargs: None)  # the cu_seq_lens are the mask


def check_varlen_kernel(device, heads: int = 8, kv_heads: int = 4, dim: int = 64) -> float:
    """`varlen_attention` against per-sequence causal SDPA on random inputs; returns the max abs difference.

    A kernel that let tokens see the future or the previous sequence would differ by O(1), far above
    bf16 rounding, which the loss comparison of a random-init model could miss.
    """
    gen = torch.Generator().manual_seed(1)
    lengths = [37, 200, 5, 130, 64]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, h, sum(lengths), dim, generator=gen).to(device, dtype) for h in (heads, kv_heads, kv_heads))
    out, _ = varlen_attention(None, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu.to(device),
                              max_length_q=max(lengths))
    bounds = cu.tolist()
    expected = torch.cat([F.scaled_dot_product_attention(
        q[..., a:b, :].float(), k[..., a:b, :].float(), v[..., a:b, :].float(), is_causal=True, enable_gqa=True)
        for a, b in zip(bounds, bounds[1:])], dim=2).transpose(1, 2)
    diff = (out.float() - expected).abs().max().item()
    if diff > (2e-2 if dtype == torch.bfloat16 else 1e-5):
        raise AssertionError(f"varlen attention differs from per-sequence causal SDPA by {diff:.3g}")
    return diff


def reference_loss(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def packed_loss(model, batch) -> torch.Tensor:
    """Backbone over the packed row, then LM head + cross-entropy on completion positions only."""
    causal_lm = model.get_base_model()
    extra = {}
    if causal_lm.config._attn_implementation == VARLEN:
        extra = {"cu_seq_lens_q": batch["cu_seq_lens"], "cu_seq_lens_k": batch["cu_seq_lens"],
                 "max_length_q": batch["max_length"], "max_length_k": batch["max_length"]}
    # use_cache=False: with a cache transformers skips its packed-sequence detection (one causal mask for all)
    hidden = causal_lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                             **extra).last_hidden_state
    mask = batch["targets"] != -100
    logits = causal_lm.lm_head(hidden[mask]).float()
    return F.cross_entropy(logits, batch["targets"][mask])


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def regime_setup(model, regime: str, checkpoint_every: int):
    """Select the attention implementation (and activation checkpointing) of a regime; return its loss function."""
    causal_lm = model.get_base_model()
    causal_lm.set_attn_implementation(VARLEN if regime == "packed" else "sdpa")
    if checkpoint_every and regime != "reference":
        causal_lm.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=checkpoint_every)
    elif causal_lm.is_activation_checkpointing:
        causal_lm.activation_checkpointing_disable()
    return reference_loss if regime == "reference" else packed_loss


def check_same_loss(model, seqs: list[Sequence], regimes: list[str], device, autocast, rtol: float) -> dict:
    """Loss of the same sequences in every regime (dropout off); raise if a packed one differs."""
    model.eval()
    losses = {}
    with torch.no_grad(), autocast():
        for regime in regimes:
            loss_fn = regime_setup(model, regime, checkpoint_every=0)
            batch = padded_batch(seqs, device) if regime == "reference" else packed_batch(seqs, device)
            losses[regime] = loss_fn(model, batch).item()
    model.train()
    for regime, loss in losses.items():
        if abs(loss - losses["reference"]) > rtol * abs(losses["reference"]):
            raise AssertionError(f"{regime} loss {loss:.6f} != reference {losses['reference']:.6f} on the same batch")
    return losses


def measure(model, regime: str, seqs: list[Sequence], tokens: int, args, device, autocast) -> dict:
    loss_fn = regime_setup(model, regime, args.checkpoint_every)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4, fused=True)  # fused kernels exist for CPU too (torch >= 2.4)
    batches, start = [], 0
    for _ in range(args.warmup + args.steps):
        chunk, start = fill(seqs, start, tokens) if regime != "reference" else (seqs[start:start + 4], start + 4)
        batches.append(padded_batch(chunk, device) if regime == "reference" else packed_batch(chunk, device))

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()

    for batch in batches[:args.warmup]:
        step(batch)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start_time = time.perf_counter()
    for batch in batches[args.warmup:]:
        step(batch)
    sync(device)
    seconds = time.perf_counter() - start_time
    n_tokens = sum(b["n_tokens"] for b in batches[args.warmup:])
    padded = sum(b["input_ids"].numel() for b in batches[args.warmup:])
    return {"regime": regime, "tokens_per_step": n_tokens / args.steps, "padding": 1 - n_tokens / padded,
            "tok_s": n_tokens / seconds, "s_step": seconds / args.steps,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_shape(shape: str, args, device) -> list[dict]:
    regimes = args.regimes.split(",")
    checked = ["reference"] + [r for r in regimes if r != "reference"]
    seqs = make_sequences(4096 if not args.tiny else 256, SHAPES[shape]["vocab_size"], seed=0)
    if args.tiny:  # float32 without autocast first, where the check can be tight
        losses = check_same_loss(build_model(shape, device, torch.float32), seqs[:12], checked, device,
                                 contextlib.nullcontext, rtol=1e-5)
        print(f"{shape} float32: same-batch losses {', '.join(f'{k} {v:.5f}' for k, v in losses.items())}")
    model = build_model(shape, device, torch.bfloat16)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    losses = check_same_loss(model, seqs[:12], checked, device, autocast, rtol=2e-2)
    print(f"{shape} bf16 autocast: same-batch losses {', '.join(f'{k} {v:.5f}' for k, v in losses.items())}")
    rows = []
    for regime in regimes:
        tokens = args.tokens or DEFAULT_TOKENS[shape]
        if regime == "packed-sdpa":  # its block mask is tokens x tokens: keep rows moderate
            tokens = min(tokens, 8192)
        simulate_oom = args.tiny and regime != "reference"
        while True:
            try:
                if simulate_oom:
                    simulate_oom = False
                    raise torch.OutOfMemoryError("simulated by --tiny, to run the retry below")
                rows.append({"shape": shape, **measure(model, regime, seqs, tokens, args, device, autocast)})
                break
            except torch.OutOfMemoryError:
                if regime == "reference" or tokens <= 1024:
                    raise
                tokens //= 2
                torch.cuda.empty_cache()  # a no-op without CUDA
                print(f"{shape} {regime}: out of memory, retrying with {tokens} tokens per step")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, 2-layer model: checks only, timings meaningless")
    parser.add_argument("--shapes", default="smollm2-135m,llama-7b")
    parser.add_argument("--regimes", default="reference,packed,packed-sdpa")
    parser.add_argument("--tokens", type=int, help="tokens per packed step (default per shape: 32768 / 8192)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="activation checkpointing of every Nth layer in packed regimes (0: off)")
    args = parser.parse_args()
    if args.tiny:
        args.shapes, args.steps, args.warmup = "tiny", min(args.steps, 2), 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU correctness check")
        device = torch.device("cuda")
    register_varlen()
    print(f"varlen attention vs per-sequence causal SDPA: max abs difference {check_varlen_kernel(device):.2g}")
    rows = [row for shape in args.shapes.split(",") for row in run_shape(shape, args, device)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (--tiny: timings meaningless)"
    print(f"\nLoRA SFT throughput on {name}, torch {torch.__version__}, {args.steps} steps after {args.warmup} warm-up")
    print("| shape | regime | tokens/step | padding | s/step | non-pad tok/s | target (H200) | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        target = TARGETS.get(r["shape"]) if r["regime"] != "reference" else None
        print(f"| {r['shape']} | {r['regime']} | {r['tokens_per_step']:.0f} | {r['padding']:.0%} | {r['s_step']:.3f} | "
              f"{r['tok_s']:,.0f} | {f'>= {target:,}' if target else '-'} | {r['peak_gb']:.1f} |")
    if device.type != "cuda":
        print("\nnot run without CUDA:\n" + "\n".join(f"- {branch}" for branch in CUDA_ONLY))


if __name__ == "__main__":
    main()
