"""CPU evaluation benchmark: genrec's batched beam search vs HF generate one user at a time.

    python bench/eval_cpu.py                      # models/base (pretrained SmolLM2-135M), 32 test users
    python bench/eval_cpu.py --users 64 --model models/ml-latest-small/genrec --batch-size 32

Both sides get the same prompts (built as the evaluate stage builds them), the same catalogue trie
and the settings of params.yaml's `eval` section (num_beams, length_penalty, early_stopping); HF
gets the trie as a `prefix_allowed_tokens_fn` and runs `generate(num_beams=K,
num_return_sequences=K, do_sample=False)` per user, as the GenRec reference code does. History
exclusion is off on both sides (it changes neither side's cost).

In float32 (the default here) the ranked lists must agree: identical, or differing only where two
beams' scores are within `--tie-tolerance`. In bfloat16 (`--dtype bfloat16`, the checkpoint's
dtype and the stage's default) batched and one-user matmuls round differently by about 1e-2 per
score, enough to reorder beams and steer the search early on: HF generate run batched does not
reproduce HF generate run per user either. There the lists are compared (mean top-k overlap), not
asserted.

Without data/prompts/<dataset>/test.jsonl and data/processed/<dataset>/items.parquet, test
records and the catalogue are derived from the ml-latest-small mirror ($GENREC_DATA_MIRROR or
../shared/data): per user, the last rating is the target and the 10 before it the history.
Other processes on the machine skew the numbers; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import html
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from genrec.decoding.beam_search import BeamSettings, is_real, ranked_beams
from genrec.decoding.memory import resolve_batch_size
from genrec.config.params import load_params
from genrec.data.prompts import PromptTemplate
from genrec.models.genrec import evaluation as evaluate
from genrec.decoding.trie import Catalogue, build_title_trie

ROOT = Path(__file__).resolve().parents[1]


def mirror_inputs(mirror: Path, template) -> tuple[list[dict], Catalogue]:
    """Test records and catalogue straight from the raw MovieLens files (no pipeline outputs needed)."""
    import pandas as pd

    movies = pd.read_csv(mirror / "ml-latest-small" / "movies.csv")
    movies["title"] = [" ".join(html.unescape(t).split()) for t in movies["title"]]
    titles = movies.set_index("movieId")["title"]
    ratings = pd.read_csv(mirror / "ml-latest-small" / "ratings.csv").sort_values(["userId", "timestamp", "movieId"])
    records = []
    for user, items in ratings.groupby("userId")["movieId"]:
        seq = list(items)
        records.append({"user_id": str(user), "instruction": template.instructions[0],
                        "history_titles": [titles[i] for i in seq[-1 - template.max_history:-1]],
                        "target_item_id": str(seq[-1])})
    catalogue = Catalogue.from_items(pd.DataFrame({"item_id": movies["movieId"].astype(str), "title": movies["title"]}))
    return records, catalogue


def hf_lists(model, prompts, token_ids, settings) -> list[list[tuple[tuple[int, ...], float]]]:
    """HF generate per prompt with the catalogue as a prefix_allowed_tokens_fn (built once, as a dict)."""
    from transformers import GenerationConfig

    eos = settings.eos_token_id
    following: dict[tuple, set] = {}
    for ids in token_ids:
        full = [*ids, eos]
        for i in range(len(full)):
            following.setdefault(tuple(full[:i]), set()).add(full[i])
    following = {k: sorted(v) for k, v in following.items()}
    config = GenerationConfig(num_beams=settings.num_beams, num_return_sequences=settings.num_beams, do_sample=False,
                              max_new_tokens=settings.max_new_tokens, length_penalty=settings.length_penalty,
                              early_stopping=settings.early_stopping, eos_token_id=eos,
                              pad_token_id=settings.pad_token_id, output_scores=True, return_dict_in_generate=True)
    out = []
    for prompt in prompts:
        def allowed(batch_id, ids, n=len(prompt)):
            return following.get(tuple(ids[n:].tolist()), [eos])

        with torch.inference_mode():
            gen = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 generation_config=config, prefix_allowed_tokens_fn=allowed)
        beams = []
        for seq, score in zip(gen.sequences[:, len(prompt):].tolist(), gen.sequences_scores.tolist()):
            length = seq.index(eos) + 1 if eos in seq else len(seq)
            if is_real(score, length, settings.length_penalty):
                beams.append((tuple(seq[:length - 1] if seq[length - 1] == eos else seq[:length]), score))
        out.append(beams)
    return out


def overlap(ours, theirs) -> float:
    """Mean share of HF's titles that genrec's list also holds."""
    shares = [len({h.tokens for h in a} & {t for t, _ in b}) / max(1, len(b)) for a, b in zip(ours, theirs)]
    return sum(shares) / len(shares)


def compare(ours, theirs, tolerance: float) -> tuple[int, int, int]:
    """(identical lists, lists differing only among near-tied beams, lists that really differ)."""
    identical = near = other = 0
    for a, b in zip(ours, theirs):
        ta, tb = [h.tokens for h in a], [t for t, _ in b]
        if ta == tb:
            identical += 1
            continue
        scores = {**{t: s for t, s in b}, **{h.tokens: h.score for h in a}}
        cut = min(scores[t] for t in ta + tb)
        swapped = [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y]
        close = all(abs(scores[ta[i]] - scores[tb[i]]) <= tolerance for i in swapped)
        tail = set(ta) ^ set(tb)
        if close and all(scores[t] - cut <= tolerance for t in tail):
            near += 1
        else:
            other += 1
    return identical, near, other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, default=ROOT / "models" / "base")
    ap.add_argument("--model", type=Path, default=None, help="adapter folder (default: the bare backbone)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="holds prompts/<dataset> and processed/<dataset>")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    ap.add_argument("--dtype", default="float32", help="float32 (lists asserted equal) | bfloat16 | auto")
    ap.add_argument("--tie-tolerance", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    params = load_params(args.params)
    e = params.eval
    prompts_dir = args.data / "prompts" / params.dataset
    from_pipeline = (prompts_dir / "test.jsonl").exists()
    if not from_pipeline:  # the template the prompts stage would write
        prompts_dir = Path(tempfile.mkdtemp())
        PromptTemplate.from_params(params.prompts).save(prompts_dir / "template.json")
    model, tokenizer, template = evaluate.load_model(args.base, args.model, prompts_dir, args.dtype)
    if from_pipeline:
        records = evaluate.read_records(prompts_dir / "test.jsonl")
        catalogue = evaluate.read_catalogue(args.data / "processed" / params.dataset / "items.parquet")
    else:
        mirror = Path(os.environ.get("GENREC_DATA_MIRROR") or ROOT.parent / "shared" / "data")
        records, catalogue = mirror_inputs(mirror, template)
    records = random.Random(args.seed).sample(records, min(args.users, len(records)))
    prompts, _ = evaluate.encode_prompts(records, template, tokenizer, e.max_prompt_tokens)
    token_ids = evaluate.title_token_ids(catalogue, template, tokenizer)
    end = evaluate.end_token_id(template, tokenizer)
    trie = build_title_trie(token_ids, end)
    settings = BeamSettings(num_beams=e.num_beams, max_new_tokens=e.max_new_tokens or trie.max_length,
                            length_penalty=float(e.length_penalty), early_stopping=e.early_stopping,
                            eos_token_id=end, pad_token_id=evaluate.pad_token_id(tokenizer))
    batch_size = args.batch_size or resolve_batch_size(e.batch_size, model, max(map(len, prompts)) +
                                                       e.num_beams * settings.max_new_tokens, e.num_beams)

    ranked_beams(model, prompts[:2], settings, trie=trie, batch_size=2)  # warm-up (kernel selection)
    start = time.perf_counter()
    ours = ranked_beams(model, prompts, settings, trie=trie, batch_size=batch_size)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = hf_lists(model, prompts, token_ids, settings)
    hf_s = time.perf_counter() - start
    identical, near, other = compare(ours, theirs, args.tie_tolerance)

    n = len(prompts)
    print(f"\nSmolLM2-135M ({'adapter ' + str(args.model) if args.model else 'bare backbone'}), {model.dtype}, "
          f"{n} users, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {len(catalogue.titles)} "
          f"titles, num_beams {settings.num_beams}, length_penalty {settings.length_penalty}, early_stopping "
          f"{settings.early_stopping}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"| {'decoder':<48} | {'seconds':>8} | {'users/s':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'HF generate + prefix_allowed_tokens_fn, 1 user':<48} | {hf_s:8.1f} | {n / hf_s:8.3f} | {1:8.2f} |")
    print(f"| {f'genrec ranked_beams, batch {batch_size}':<48} | {ours_s:8.1f} | {n / ours_s:8.3f} | "
          f"{hf_s / ours_s:8.2f} |")
    print(f"lists: {identical} identical, {near} differ only among beams within {args.tie_tolerance} "
          f"of each other, {other} differ; mean overlap with HF's list {overlap(ours, theirs):.3f}")
    if model.dtype == torch.float32:
        assert other == 0, f"{other} users got different lists"


if __name__ == "__main__":
    main()
