"""Decoding levers measured on validation users: one trained adapter, each option one evaluate run.

    python bench/decoding_levers.py                       # models/<dataset>/genrec, 200 validation users
    python bench/decoding_levers.py --users 610 --variants hf,ghost-0.9,sasrec-1.0

Every variant is `genrec evaluate` (the stage's own `run`, the same protocol as `dvc repro`) with
eval.split=valid on a seeded sample of `--users` users (eval.seed), no assistant unless named, and one change
from params.yaml's eval section:

    hf            HF's length normalisation (eval.length_penalty, default 1.0; no ghost tokens)
    lp-0          eval.length_penalty=0: plain title likelihood, no length normalisation
    ghost-T       D3: tokens generated with probability >= T do not count in the length
    sasrec-W      D3's text-free assistant: SASRec's title log-probs x W mixed into every step
    ghost-T+sasrec-W  both

Prints a markdown table: HR@5, NDCG@5, HR@10, NDCG@10 with 95% intervals, users/s. Test users are
never used here: choose eval.ghost_threshold / eval.assistant_weight from this table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path


def variant_params(params, name: str):
    # The assistant only where the variant names it (eval.assistant_weight's default is the assisted stage's).
    e = dataclasses.replace(params.eval, split="valid", assistant_weight=0.0)
    for part in name.split("+"):
        if part == "hf":  # HF's normalisation: every token counts in the length
            e = dataclasses.replace(e, ghost_threshold=None)
            continue
        key, value = part.rsplit("-", 1)
        field = {"lp": "length_penalty", "ghost": "ghost_threshold", "sasrec": "assistant_weight"}[key]
        e = dataclasses.replace(e, **{field: float(value)})
    return dataclasses.replace(params, eval=e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--model", type=Path, help="adapter folder [default: models/<dataset>/genrec]")
    parser.add_argument("--sasrec", type=Path, help="SASRec folder [default: models/<dataset>/sasrec]")
    parser.add_argument("--users", type=int, default=200, help="seeded sample of validation users")
    parser.add_argument("--out", type=Path, help="keep each variant's metrics and predictions here (paired tests)")
    parser.add_argument("--variants", default="hf,lp-0,ghost-0.9,ghost-0.5,sasrec-0.5,sasrec-1.0,ghost-0.9+sasrec-1.0")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from genrec.config.params import load_params
    from genrec.stages import evaluate

    params = load_params(args.params, [*args.overrides, f"eval.max_users={args.users}"])
    args.model = args.model or Path("models") / params.dataset / "genrec"
    args.sasrec = args.sasrec or Path("models") / params.dataset / "sasrec"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in args.variants.split(","):
            p = variant_params(params, name)
            # Evaluated without an MLflow run: a copy of the adapter folder without its run file.
            metrics = evaluate.run(p, base_dir=args.base, model_dir=_without_run_file(args.model, Path(tmp)),
                                   prompts_dir=Path("data/prompts") / p.dataset,
                                   processed_dir=Path("data/processed") / p.dataset,
                                   metrics_path=out / f"{name}.json", predictions_path=out / f"{name}.jsonl",
                                   assistant_dir=args.sasrec if p.eval.assistant_weight else None)
            rows.append((name, metrics))
            print(f"{name}: HR@10 {metrics['hr_at_10']:.4f} NDCG@10 {metrics['ndcg_at_10']:.4f}", flush=True)
    print(f"\nValidation, {args.users} seeded users, {args.model} ({params.dataset}), constrained 10-beam search, "
          "history excluded")
    print("| variant | model | HR@5 | NDCG@5 | HR@10 [95% CI] | NDCG@10 [95% CI] | users/s |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        lo, hi = m["ci95_low"], m["ci95_high"]
        print(f"| {name} | {m['model']} | {m['hr_at_5']:.4f} | {m['ndcg_at_5']:.4f} | {m['hr_at_10']:.4f} "
              f"[{lo['hr_at_10']:.4f}, {hi['hr_at_10']:.4f}] | {m['ndcg_at_10']:.4f} [{lo['ndcg_at_10']:.4f}, "
              f"{hi['ndcg_at_10']:.4f}] | {m['users_per_s']:.2f} |")


def _without_run_file(model_dir: Path, tmp: Path) -> Path:
    import shutil

    copy = tmp / "model"
    if not copy.exists():
        shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("mlflow_run.json"))
    return copy


if __name__ == "__main__":
    main()
