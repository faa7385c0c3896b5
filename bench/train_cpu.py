"""CPU training benchmark: non-padding tokens/s of the default train config, and its share of the ceiling.

    python bench/train_cpu.py                                   # models/base, data/{prompts,processed}/<dataset>
    python bench/train_cpu.py --base /tmp/base --steps 4 --variants default,trl-lm-head
    python bench/train_cpu.py --set train.format=instruction --variants default

The ceiling is measured here: the GFLOP/s of a bf16 `linear` of the model's MLP shape
([micro_batch x seq_len, hidden] x [hidden, intermediate]) on this machine's threads, divided by the
FLOPs LoRA training spends per token: 2 x (linear weights) forward plus 2 x (linear weights) backward
(gradients of the activations only: the backbone is frozen), the LM head included, attention left out.

The trainer is built exactly as the train stage builds it (`genrec.models.genrec.sft_trainer.build_trainer` from
params.yaml plus `--set` overrides); only eval and checkpoints are switched off. The first
`--warmup` optimizer steps are not timed. Variants change one thing each:

    default       the params as given (bf16 autocast where supported, so bfloat16 frozen weights;
                  LM head on labelled positions only; sequence: chunked float32 cross-entropy)
    trl-lm-head   train.completion_logits_only=false: the LM head over every position (instruction:
                  TRL's CPU path; sequence: the model's own loss, float32 logits of every position)
    fp32-weights  the frozen backbone kept in float32 under bf16 autocast
    fp32          train.bf16=false: no autocast, float32 weights

Without data/prompts/<dataset>/ it writes prompts the way the prompts stage does (last
`prompts.train_targets` training positions per user, `prompts.max_history` titles) from the
ml-latest-small mirror ($GENREC_DATA_MIRROR or ../shared/data). Other processes on the machine skew
wall times: the load average is printed with them, and so is each step's CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = ("default", "trl-lm-head", "fp32-weights", "fp32")


def synthetic_prompts(folder: Path, mirror: Path, params) -> Path:
    """train/valid.jsonl + template.json like the prompts stage's, from the raw MovieLens files."""
    import pandas as pd

    from genrec.data.prompts import PromptTemplate, choose_instruction

    ratings = pd.read_csv(mirror / "ml-latest-small" / "ratings.csv").sort_values(["userId", "timestamp", "movieId"])
    titles = pd.read_csv(mirror / "ml-latest-small" / "movies.csv").set_index("movieId")["title"].str.strip()
    template = PromptTemplate.from_params(params.prompts)
    folder.mkdir(parents=True, exist_ok=True)
    template.save(folder / "template.json")
    files = {name: (folder / f"{name}.jsonl").open("w", encoding="utf-8") for name in ("train", "valid")}
    for user, items in ratings.groupby("userId")["movieId"]:
        seq = [titles[i] for i in items]
        train_end = len(seq) - 2  # the last item is test, the one before valid
        targets = [("train", p) for p in range(max(1, train_end - params.prompts.train_targets), train_end)]
        for name, pos in targets + [("valid", train_end)]:
            files[name].write(json.dumps({
                "user_id": str(user), "instruction": choose_instruction(0, str(user), pos, template.instructions),
                "history_titles": seq[max(0, pos - template.max_history):pos], "output": seq[pos]}) + "\n")
    for fh in files.values():
        fh.close()
    return folder


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU time of each optimizer step, and TRL's running count of non-padding tokens."""

        def __init__(self):
            self.seconds, self.cpu_seconds, self.tokens, self._start = [], [], [], (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start[0])
            self.cpu_seconds.append(time.process_time() - self._start[1])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.tokens.append(logs["num_tokens"])

    return StepTimer()


def gemm_ceiling(base: Path, rows: int) -> dict:
    """Measured bf16 GEMM GFLOP/s at the model's MLP shape, and the LoRA-training FLOPs per token."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, local_files_only=True)
    x = torch.randn(rows, config.hidden_size, dtype=torch.bfloat16)
    w = torch.randn(config.intermediate_size, config.hidden_size, dtype=torch.bfloat16)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        torch.nn.functional.linear(x, w)
        n += 1
    gflops = 2 * rows * config.hidden_size * config.intermediate_size * n / (time.perf_counter() - start) / 1e9
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size) + h * config.vocab_size
    flops_per_token = 4 * linear
    return {"gflops": gflops, "shape": f"[{rows}x{h}]x[{h}x{config.intermediate_size}]",
            "flops_per_token": flops_per_token, "tokens_per_s": gflops * 1e9 / flops_per_token}


def measure(params, variant: str, base: Path, prompts: Path, steps: int, warmup: int, processed: Path) -> dict:
    from genrec.models.genrec import sft_loss, sft_trainer
    from genrec.data.prompts import PromptTemplate

    tp = params.train
    changes = {"max_steps": warmup + steps, "eval_steps": None, "save_steps": 10**9, "logging_steps": 1}
    changes.update({"trl-lm-head": {"completion_logits_only": False}, "fp32": {"bf16": False}}.get(variant, {}))
    params = dataclasses.replace(params, train=dataclasses.replace(tp, **changes))
    dtype = "float32" if variant == "fp32-weights" else None  # None: the stage's choice
    with tempfile.TemporaryDirectory() as tmp:
        template = (PromptTemplate.sequence(tp.prompt_history) if tp.format == "sequence"
                    else PromptTemplate.load(prompts / "template.json"))
        trainer, stats = sft_trainer.build_trainer(params, base, prompts, template, Path(tmp), dtype=dtype,
                                                   processed_dir=processed)
        timer = step_timer()
        trainer.add_callback(timer)
        with sft_loss.completion_positions_only(params.train.completion_logits_only):
            trainer.train()
    seconds = sum(timer.seconds[warmup:])
    # Non-padding tokens per row: the whole dataset's mean (packed rows for sequence, prompts for instruction).
    per_sample = stats["tokens"] / (stats.get("packed_rows") or stats["records"])
    tokens = steps * tp.batch_size * per_sample
    return {"variant": variant, "format": tp.format, "bf16": trainer.args.bf16,
            "s_per_step": statistics.median(timer.seconds[warmup:]),
            "cpu_s_per_step": statistics.median(timer.cpu_seconds[warmup:]),
            "samples_per_s": steps * tp.batch_size / seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_sample": per_sample, "records": stats.get("packed_rows") or stats["records"],
            "epoch_tokens": stats["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--prompts", type=Path, help="default: data/prompts/<dataset>, else built from the mirror")
    parser.add_argument("--processed", type=Path, help="the split (sequence format); default data/processed/<dataset>")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from genrec.config.params import load_params

    params = load_params(args.params, args.overrides)
    if not (args.base / "config.json").is_file():
        raise SystemExit(f"{args.base}: no backbone; run `dvc repro base_model` or pass --base")
    prompts = args.prompts or Path("data/prompts") / params.dataset
    with tempfile.TemporaryDirectory() as tmp:
        if not (prompts / "train.jsonl").is_file():
            mirror = Path(os.environ.get("GENREC_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
            prompts = synthetic_prompts(Path(tmp) / "prompts", mirror, params)
        processed = args.processed or Path("data/processed") / params.dataset
        rows = [measure(params, v, args.base, prompts, args.steps, args.warmup, processed)
                for v in args.variants.split(",")]
    tp = params.train
    import torch
    ceiling = gemm_ceiling(args.base, tp.micro_batch_size * tp.max_seq_length)

    print(f"\nLoRA SFT on CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
          f"{os.getloadavg()[0]:.1f}), {args.base}, "
          f"micro-batch {tp.micro_batch_size}, batch {tp.batch_size}, {args.steps} steps after {args.warmup} warm-up")
    print(f"ceiling: bf16 linear {ceiling['shape']} at {ceiling['gflops']:.0f} GFLOP/s / "
          f"{ceiling['flops_per_token'] / 1e9:.2f} GFLOP per trained token = {ceiling['tokens_per_s']:.0f} tokens/s")
    print("| variant | format | bf16 autocast | s/step | CPU s/step | samples/s | non-pad tokens/s | share of ceiling "
          "| tokens/sample |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['format']} | {r['bf16']} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | "
              f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {100 * r['tokens_per_s'] / ceiling['tokens_per_s']:.0f}% "
              f"| {r['tokens_per_sample']:.0f} |")
    print("(CPU s/step: this process's CPU time; on a busy machine, CPU s/step / threads estimates an idle s/step)")
    first = rows[0]  # records: the training prompts after train.max_train_samples
    steps = tp.max_steps or math.ceil(first["records"] / tp.batch_size) * tp.epochs
    print(f"\n{first['variant']}: the configured run has {steps:.0f} optimizer steps ~ "
          f"{steps * first['s_per_step'] / 60:.1f} min of training (plus loading and eval); one epoch is "
          f"{first['epoch_tokens']:,} tokens ~ {first['epoch_tokens'] / first['tokens_per_s'] / 60:.0f} min")


if __name__ == "__main__":
    main()
