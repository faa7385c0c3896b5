"""Where an evaluation's time goes: prefill forwards, decoding-step forwards, and the rest of the search.

    python bench/eval_phases.py                       # 64 validation users, models/<dataset>/genrec
    python bench/eval_phases.py --users 200 --batch-size 16

Loads the trained adapter as the evaluate stage does (`genrec.models.genrec.evaluation.load_model`, merged, bf16), takes the
learning curve's seeded sample of validation users (`genrec.models.genrec.curve.curve_data`) and runs `decode_lists` with
params.yaml's `eval` settings. Every forward of the model is timed: the first of each batch (no cache) is the
prefill, the others are decoding steps; "rest" is everything else (log-softmax, trie constraint, beam
bookkeeping). The hash of the ranked item ids shows whether a change kept the lists identical.
Other processes skew the numbers; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--users", type=int, default=64, help="seeded validation users (eval.seed)")
    parser.add_argument("--batch-size", type=int, help="default: eval.batch_size")
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--model", type=Path, help="default: models/<dataset>/genrec")
    args = parser.parse_args()

    from genrec.models.genrec import evaluation
    from genrec.models.genrec.curve import curve_data
    from genrec.config.params import load_params

    params = load_params(args.params)
    dataset = params.dataset
    e = params.eval if args.batch_size is None else dataclasses.replace(params.eval, batch_size=args.batch_size)
    model, tokenizer, template = evaluation.load_model(args.base, args.model or Path(f"models/{dataset}/genrec"),
                                                       Path(f"data/prompts/{dataset}"), "bfloat16", "cpu")
    data = curve_data(Path(f"data/prompts/{dataset}"), Path(f"data/processed/{dataset}"), template, tokenizer,
                      args.users, e)
    seconds, tokens, calls = {"prefill": 0.0, "step": 0.0}, {"prefill": 0, "step": 0}, {"prefill": 0, "step": 0}
    forward = model.forward

    def timed(*a, **k):
        kind = "step" if k.get("cache") is not None or k.get("past_key_values") is not None else "prefill"
        start = time.perf_counter()
        out = forward(*a, **k)
        seconds[kind] += time.perf_counter() - start
        tokens[kind] += k["input_ids"].numel()
        calls[kind] += 1
        return out

    model.forward = timed
    start = time.perf_counter()
    lists, _, _ = evaluation.decode_lists(model, tokenizer, template, data.catalogue, data.prompts, data.excluded,
                                          data.eval_params, progress=True)
    total = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps([[x["item_ids"] for x in entries] for entries in lists]).encode()).hexdigest()
    print(f"\n{args.users} validation users of {dataset}, batch {e.batch_size}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; lists sha256 {digest[:16]}")
    print("| part | seconds | share | forwards | tokens fed |")
    print("|---|---|---|---|---|")
    for kind in ("prefill", "step"):
        print(f"| {kind} forwards | {seconds[kind]:.1f} | {seconds[kind] / total:.0%} | {calls[kind]} | {tokens[kind]} |")
    rest = total - sum(seconds.values())
    print(f"| rest of the search | {rest:.1f} | {rest / total:.0%} | - | - |")
    print(f"| total | {total:.1f} | 100% | {args.users / total:.2f} users/s | - |")


if __name__ == "__main__":
    main()
