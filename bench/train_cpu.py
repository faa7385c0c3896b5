"""CPU training benchmark: samples/s and non-padding tokens/s of the default train config.

    python bench/train_cpu.py                                   # models/base, data/prompts/<dataset>
    python bench/train_cpu.py --base /tmp/base --steps 4 --variants default,trl-lm-head

The trainer is built exactly as the train stage builds it (`genrec.sft.build_trainer` from
params.yaml plus `--set` overrides); only eval and checkpoints are switched off. The first
`--warmup` optimizer steps are not timed. Variants change one thing each:

    default       the params as given (bf16 autocast where supported, so bfloat16 frozen weights;
                  LM head on completion positions only)
    trl-lm-head   train.completion_logits_only=false: TRL's CPU path, the LM head over every position
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

    from genrec.prompts import PromptTemplate, choose_instruction

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


def measure(params, variant: str, base: Path, prompts: Path, steps: int, warmup: int) -> dict:
    from genrec import sft
    from genrec.prompts import PromptTemplate

    tp = params.train
    changes = {"max_steps": warmup + steps, "eval_steps": None, "save_steps": 10**9, "logging_steps": 1}
    changes.update({"trl-lm-head": {"completion_logits_only": False}, "fp32": {"bf16": False}}.get(variant, {}))
    params = dataclasses.replace(params, train=dataclasses.replace(tp, **changes))
    dtype = "float32" if variant == "fp32-weights" else None  # None: the stage's choice
    with tempfile.TemporaryDirectory() as tmp:
        trainer, stats = sft.build_trainer(params, base, prompts, PromptTemplate.load(prompts / "template.json"),
                                           Path(tmp), dtype=dtype)
        timer = step_timer()
        trainer.add_callback(timer)
        with sft.completion_positions_only(params.train.completion_logits_only):
            trainer.train()
    seconds = sum(timer.seconds[warmup:])
    tokens = timer.tokens[-1] - timer.tokens[warmup - 1] if warmup else timer.tokens[-1]
    return {"variant": variant, "bf16": trainer.args.bf16, "s_per_step": statistics.median(timer.seconds[warmup:]),
            "cpu_s_per_step": statistics.median(timer.cpu_seconds[warmup:]),
            "samples_per_s": steps * tp.batch_size / seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_sample": tokens / (steps * tp.batch_size), "records": stats["records"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--prompts", type=Path, help="default: data/prompts/<dataset>, else built from the mirror")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from genrec.params import load_params

    params = load_params(args.params, args.overrides)
    if not (args.base / "config.json").is_file():
        raise SystemExit(f"{args.base}: no backbone; run `dvc repro base_model` or pass --base")
    prompts = args.prompts or Path("data/prompts") / params.dataset
    with tempfile.TemporaryDirectory() as tmp:
        if not (prompts / "train.jsonl").is_file():
            mirror = Path(os.environ.get("GENREC_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
            prompts = synthetic_prompts(Path(tmp) / "prompts", mirror, params)
        rows = [measure(params, v, args.base, prompts, args.steps, args.warmup) for v in args.variants.split(",")]
    tp = params.train
    import torch

    print(f"\nLoRA SFT on CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
          f"{os.getloadavg()[0]:.1f}), {args.base}, "
          f"micro-batch {tp.micro_batch_size}, batch {tp.batch_size}, {args.steps} steps after {args.warmup} warm-up")
    print("| variant | bf16 autocast | s/step | CPU s/step | samples/s | non-pad tokens/s | tokens/sample |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['bf16']} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | "
              f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['tokens_per_sample']:.0f} |")
    print("(CPU s/step: this process's CPU time; on a busy machine, CPU s/step / threads estimates an idle s/step)")
    first = rows[0]  # records: the training prompts after train.max_train_samples
    steps = tp.max_steps or math.ceil(first["records"] / tp.batch_size) * tp.epochs
    print(f"\n{first['variant']}: the configured run has {steps:.0f} optimizer steps ~ "
          f"{steps * first['s_per_step'] / 60:.1f} min of training (plus loading and eval)")


if __name__ == "__main__":
    main()
