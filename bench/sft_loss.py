"""The `sequence` format's training loss, piece by piece: chunk size of the float32 cross-entropy, and how the
final hidden states are taken from the model.

    python bench/sft_loss.py                          # both tables, SmolLM2-135M shapes, 8 x 256 tokens
    python bench/sft_loss.py --tables chunks --reps 5
    python bench/sft_loss.py --device cuda            # on a GPU: the same tables, peak from torch.cuda

`chunks`: forward + backward of `sft_loss.chunked_cross_entropy` on [tokens x 49,152] bf16 logits (every
position labelled) for several `chunk_rows`, against torch's one-shot `cross_entropy(logits.float())`. Each
variant's loss and gradient are checked against 16 rows, the CPU default (bit-identical or not is printed);
`auto` is what training uses (`sft_loss.chunk_rows_for`: 16 rows on CPU, 256 MiB float32 blocks on CUDA).

`hidden`: forward + backward of the lean loss through a random-init SmolLM2-135M-shaped model (LoRA r 8 on
q_proj/v_proj) wrapped as accelerate wraps it under bf16 mixed precision (autocast, then every returned
tensor upcast to float32 by `convert_outputs_to_fp32`): `output_hidden_states=True` (every layer's states
come back and are upcast) against `sft_loss.final_hidden_states` (the decoder's output only). The losses and
LoRA gradients must be bit-identical.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` above what was allocated before the step; on CPU each
variant runs in its own process and reports the growth of its peak RSS over the step (ru_maxrss), which
includes allocator slack. Timings are the median of --reps after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genrec.models.genrec import sft_loss  # noqa: E402

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0)
CHUNK_VARIANTS = ["16", "64", "256", "1024", "all", "auto", "torch"]
HIDDEN_VARIANTS = ["all-hidden-states", "decoder-output"]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tracker(device):
    """(start, read): peak memory growth in MiB between start() and read()."""
    if device.type == "cuda":
        def start():
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()

        def read(before):
            sync(device)
            return (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        def start():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def read(before):
            return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return start, read


def logits_and_targets(tokens: int, device):
    gen = torch.Generator().manual_seed(0)
    # drawn in bf16: a float32 draw would set the CPU peak RSS above what the variants use
    logits = torch.randn(tokens, SMOLLM2["vocab_size"], generator=gen, dtype=torch.bfloat16).mul_(3).to(device)
    targets = torch.randint(0, SMOLLM2["vocab_size"], (tokens,), generator=gen).to(device)
    return logits, targets


def chunk_loss(variant: str, logits, targets):
    if variant == "torch":
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    if variant == "auto":  # what training runs: sft_loss.chunk_rows_for(logits)
        return sft_loss.chunked_cross_entropy(logits, targets)
    rows = logits.shape[0] if variant == "all" else int(variant)
    return sft_loss.chunked_cross_entropy(logits, targets, chunk_rows=rows)


def run_chunks(variant: str, args, device) -> dict:
    logits, targets = logits_and_targets(args.batch * args.length, device)
    leaf = logits.clone().requires_grad_()

    def step(which: str):
        leaf.grad = None
        loss = chunk_loss(which, leaf, targets)
        loss.backward()
        return loss.item(), leaf.grad

    ms, peak = timed(lambda: step(variant), args.reps, device)
    loss, grad = step(variant)
    ref_loss, ref_grad = step("16")  # after the timing: on CPU the peak RSS only grows
    identical = loss == ref_loss and torch.equal(grad, ref_grad)
    if abs(loss - ref_loss) > 1e-5 * abs(ref_loss):
        raise AssertionError(f"chunk_rows {variant}: loss {loss} != {ref_loss}")
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=2e-2)  # bf16 gradients
    return {"variant": variant, "ms": ms, "peak_mib": peak, "identical": identical}


def timed(step, reps: int, device) -> tuple[float, float]:
    """(median ms of `reps` calls after one warm-up, peak memory growth in MiB over all of them)."""
    start, read = peak_tracker(device)
    before = start()
    step()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), read(before)


def wrapped_model(device):
    """A SmolLM2-135M-shaped LoRA model whose forward is wrapped as accelerate wraps it under bf16 precision."""
    from accelerate.utils import convert_outputs_to_fp32
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**SMOLLM2, max_position_embeddings=2048),
                                              dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    forward = model.forward
    model.forward = convert_outputs_to_fp32(torch.autocast(device.type, dtype=torch.bfloat16)(forward))
    return model


def hidden_loss(variant: str, model, ids, labels):
    if variant == "all-hidden-states":  # what final_hidden_states did before: every layer comes back
        none = torch.zeros(0, dtype=torch.long, device=ids.device)
        hidden = model(input_ids=ids, use_cache=False, logits_to_keep=none, output_hidden_states=True).hidden_states[-1]
    else:
        hidden = sft_loss.final_hidden_states(model, input_ids=ids, use_cache=False)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        return sft_loss.labelled_lm_loss(hidden, labels, model.get_output_embeddings())


def run_hidden(variant: str, args, device) -> dict:
    model = wrapped_model(device)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SMOLLM2["vocab_size"], (args.batch, args.length), generator=gen).to(device)
    labels = ids.clone()
    labels[:, :8] = -100
    lora = [p for p in model.parameters() if p.requires_grad]

    def step(which: str):
        model.zero_grad(set_to_none=True)
        loss = hidden_loss(which, model, ids, labels)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lora]

    ms, peak = timed(lambda: step(variant), args.reps, device)
    other = next(v for v in HIDDEN_VARIANTS if v != variant)
    (loss, grads), (other_loss, other_grads) = step(variant), step(other)
    identical = loss == other_loss and all(torch.equal(a, b) for a, b in zip(grads, other_grads))
    if not identical:
        raise AssertionError(f"{variant} and {other} give different losses or gradients")
    return {"variant": variant, "ms": ms, "peak_mib": peak, "identical": identical}


def run_one(table: str, variant: str, args) -> dict:
    device = torch.device(args.device)
    return (run_chunks if table == "chunks" else run_hidden)(variant, args, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="chunks,hidden")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # table:variant, run in this process, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one.split(":"), args)))
        return
    print(f"{args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.batch} x {args.length} tokens, median of {args.reps}")
    for table in args.tables.split(","):
        variants = CHUNK_VARIANTS if table == "chunks" else HIDDEN_VARIANTS
        head = "chunk_rows" if table == "chunks" else "final hidden states"
        print(f"\n| {head} | fwd+bwd ms | peak MiB | bit-identical to today's |\n|---|---|---|---|")
        for variant in variants:
            # a process per variant, so that each peak is its own
            out = subprocess.run([sys.executable, __file__, "--one", f"{table}:{variant}", "--device", args.device,
                                  "--batch", str(args.batch), "--length", str(args.length), "--reps", str(args.reps)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {row['variant']} | {row['ms']:,.0f} | {row['peak_mib']:,.0f} | "
                  f"{'yes' if row['identical'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
