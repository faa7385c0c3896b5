"""GPU evaluation benchmark: constrained batched beam search vs the reference regime, random weights.

    python bench/eval_gpu.py                          # H100/H200: the 135M and LLaMA-7B shapes
    python bench/eval_gpu.py --shapes 7b --batch-sizes 64,128
    python bench/eval_gpu.py --tiny                   # a smoke run on CPU with a tiny shape, also in bfloat16

Needs only torch, transformers and this repository's src/ (no download, no data): models get
random weights in bfloat16, the catalogue is a synthetic 10,000-title trie (token lengths drawn
like ml-latest-small's titles under the SmolLM2 tokenizer: median 10, 90th percentile 17), and
prompts are random tokens of 130-170 tokens (the default template with 10 history titles).

Reference regime (the GenRec code): one user at a time, HF `generate(num_beams=10,
num_return_sequences=10, do_sample=False)`, unconstrained. Random weights give flat next-token
distributions, so both sides usually run to `max_new_tokens` (the longest title + EOS): a
worst case for the step count. TARGETS (users/s on one H200, printed beside each genrec row) are the only
copy of the evaluation targets. --tiny prints the branches that only CUDA reaches (CUDA_ONLY).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genrec.decoding.beam_search import BeamSettings, ranked_beams  # noqa: E402
from genrec.decoding.trie import build_title_trie  # noqa: E402

SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True),
}
EOS, PAD = 2, 0
TARGETS = {"135m": 500, "7b": 100}
"""Users/s that genrec's constrained search should reach on one H200, per shape."""
CUDA_ONLY = (
    "torch.cuda.synchronize around the timed searches",
    "transformers' sdpa key/value head repeat under a mask (genrec.decoding.beam_search.native_gqa_on_cpu "
    "passes grouped heads to sdpa on CPU only)",
)
"""Branches that --tiny cannot reach on a CPU."""


def random_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=EOS, pad_token_id=PAD,
                         bos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def synthetic_titles(n: int, vocab: int, seed: int) -> list[tuple[int, ...]]:
    rng, titles = random.Random(seed), set()
    while len(titles) < n:
        length = min(40, max(1, round(rng.lognormvariate(2.3, 0.4))))  # median ~10, p90 ~17
        titles.add(tuple(rng.randrange(3, vocab) for _ in range(length)))
    return sorted(titles)


def reference_users_per_s(model, prompts, settings, users: int) -> float:
    """The GenRec reference regime: one user, unconstrained HF beam search."""
    from transformers import GenerationConfig

    config = GenerationConfig(num_beams=settings.num_beams, num_return_sequences=settings.num_beams, do_sample=False,
                              max_new_tokens=settings.max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)
    _sync(model)
    start = time.perf_counter()
    for prompt in prompts[:users]:
        ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    _sync(model)
    return users / (time.perf_counter() - start)


def ours_users_per_s(model, prompts, settings, trie, batch_size: int) -> float:
    ranked_beams(model, prompts[:batch_size], settings, trie=trie, batch_size=batch_size)  # warm-up
    _sync(model)
    start = time.perf_counter()
    lists = ranked_beams(model, prompts, settings, trie=trie, batch_size=batch_size)
    _sync(model)
    assert all(h.title is not None for hyps in lists for h in hyps)
    return len(prompts) / (time.perf_counter() - start)


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="135m,7b")
    ap.add_argument("--batch-sizes", default="64,128",
                    help="users decoded together; the 7B cache takes ~0.2 GB a user (twice that while it grows)")
    ap.add_argument("--users", type=int, default=512, help="users timed for genrec")
    ap.add_argument("--reference-users", type=int, default=5, help="users timed for the reference regime")
    ap.add_argument("--titles", type=int, default=10_000)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks that the script runs")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    batch_sizes = [4] if args.tiny else [int(b) for b in args.batch_sizes.split(",")]
    users = 8 if args.tiny else args.users
    reference_users = 2 if args.tiny else args.reference_users
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, bfloat16, {args.titles} synthetic titles, 10 beams")
    print(f"| {'shape':<6} | {'decoder':<46} | {'users/s':>8} | {'vs reference':>12} | {'target (H200)':>13} |")
    print(f"|{'-' * 8}|{'-' * 48}|{'-' * 10}|{'-' * 14}|{'-' * 15}|")
    for shape in shapes:
        model = random_model(shape, device, torch.bfloat16)
        vocab = SHAPES[shape]["vocab_size"]
        trie = build_title_trie(synthetic_titles(args.titles, vocab, seed=0), EOS)
        rng = random.Random(1)
        prompts = [[1] + [rng.randrange(3, vocab) for _ in range(rng.randint(130, 170))] for _ in range(users)]
        settings = BeamSettings(num_beams=10, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD)
        reference = reference_users_per_s(model, prompts, settings, reference_users)
        print(f"| {shape:<6} | {'reference: HF generate, 1 user, unconstrained':<46} | {reference:8.2f} | {1:12.1f} | "
              f"{'-':>13} |")
        for batch_size in batch_sizes:
            ours = ours_users_per_s(model, prompts, settings, trie, batch_size)
            target = f">= {TARGETS[shape]:,}" if shape in TARGETS else "-"
            print(f"| {shape:<6} | {f'genrec ranked_beams, constrained, batch {batch_size}':<46} | {ours:8.2f} | "
                  f"{ours / reference:12.1f} | {target:>13} |", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    if device != "cuda":
        print("\nnot run without CUDA:\n" + "\n".join(f"- {branch}" for branch in CUDA_ONLY))


if __name__ == "__main__":
    main()
