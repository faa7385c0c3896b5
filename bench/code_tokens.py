"""GenRec on an item index: training the new code tokens with PEFT's trainable_token_indices vs modules_to_save.

    python bench/code_tokens.py                         # data/views/<dataset>/semantic (or built from data/index)
    python bench/code_tokens.py --dataset toys-p5 --steps 6 --index semantic

Both variants add the index's code tokens to the tokenizer and resize the embeddings; they differ in what
trains besides LoRA: `trainable_tokens` (genrec's choice) trains only the new rows (PEFT
`trainable_token_indices`), `modules_to_save` trains and saves a full copy of the embedding matrix (PEFT
`modules_to_save=["embed_tokens"]`; with tied embeddings the LM head follows). Each variant runs in its own
process (so the peak RSS is its own) on the train stage's trainer (`build_trainer`, params.yaml plus `--set`):
the first `--warmup` optimizer steps are not timed. Printed: seconds per step, peak RSS, trainable
parameters and the size of the saved adapter file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("trainable_tokens", "modules_to_save")


def one(variant: str, args) -> dict:
    """Train `args.steps` steps of `variant` in this process; return its measurements."""
    from transformers import TrainerCallback

    from genrec.config.params import load_params
    from genrec.models.genrec import sft_trainer
    from genrec.stages.train import check_inputs

    params = load_params(Path(args.params), [f"dataset={args.dataset}", "train.eval_steps=null",
                                             "train.save_steps=100000", f"train.max_steps={args.steps}",
                                             *args.overrides])
    view = Path(args.view)
    template = check_inputs(params, Path(args.base), view / "prompts", view / "split")
    if variant == "modules_to_save":
        plain = sft_trainer.lora_config

        def lora_config(lp, trainable_token_indices=None):
            config = plain(lp)
            config.modules_to_save = ["embed_tokens"]
            return config

        sft_trainer.lora_config = lora_config
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = sft_trainer.build_trainer(params, Path(args.base), view / "prompts", template, Path(tmp) / "ckpt",
                                               processed_dir=view / "split")
        trainer.add_callback(Clock())
        trainer.train()
        trainer.model.save_pretrained(Path(tmp) / "adapter")
        size = (Path(tmp) / "adapter" / "adapter_model.safetensors").stat().st_size
        from genrec.models.genrec.code_tokens import slim_adapter

        slim_adapter(Path(tmp) / "adapter" / "adapter_model.safetensors")
        slim = (Path(tmp) / "adapter" / "adapter_model.safetensors").stat().st_size
    timed = marks[args.warmup:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1) if len(timed) > 1 else float("nan")
    return {"variant": variant, "s_per_step": round(per_step, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "trainable_m": round(trainer.model.get_nb_trainable_parameters()[0] / 1e6, 2),
            "adapter_mb": round(size / 2 ** 20, 1), "adapter_mb_as_genrec_writes_it": round(slim / 2 ** 20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--index", default="semantic")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--view", default=None, help="item view folder with split/ and prompts/ (default: "
                        "data/views/<dataset>/<index>, built when missing)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in a child process
    args = parser.parse_args()
    args.view = args.view or f"data/views/{args.dataset}/{args.index}"
    if args.variant:
        print(json.dumps(one(args.variant, args)))
        return
    view = Path(args.view)
    if not (view / "prompts").is_dir():
        from genrec.config.params import load_params
        from genrec.stages import item_view, prompts

        params = load_params(Path(args.params), [f"dataset={args.dataset}"])
        item_view.run(params, processed_dir=Path("data/processed") / args.dataset,
                      index_dir=Path("data/index") / args.dataset / args.index, out_dir=view / "split")
        prompts.run(params, processed_dir=view / "split", out_dir=view / "prompts")
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.dataset}, {args.index} index, {args.steps} steps ({args.warmup} untimed), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| variant | s/step | peak RSS GB | trainable M | adapter MB (PEFT) | adapter MB (as genrec writes it) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['s_per_step']} | {r['peak_rss_gb']} | {r['trainable_m']} | {r['adapter_mb']} | "
              f"{r['adapter_mb_as_genrec_writes_it']} |")


if __name__ == "__main__":
    main()
