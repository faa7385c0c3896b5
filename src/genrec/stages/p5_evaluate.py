"""P5 evaluation stage: a 10-beam search constrained to real item ids, scored like GenRec.

    genrec p5_evaluate --processed data/processed/<dataset> --model models/<dataset>/p5 \\
        --metrics reports/<dataset>/metrics/p5.json --predictions reports/<dataset>/predictions/p5.jsonl

Every item id is one token, so a constrained beam is the item token then EOS; `genrec.models.p5.ranking`
computes HF's beam search for that case directly (and runs HF `generate` for the unconstrained one).

Refuses a checkpoint from another dataset or split and an item index or vocabulary that does not
cover the catalogue. Same users (`eval.split`, seeded `eval.max_users` sample), metrics, integrity
figures and file formats as the GenRec evaluate stage; metrics are logged into P5's MLflow run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from genrec.config.params import Params
from genrec.data.sequences import load_sequences, target_rows
from genrec.evaluation.outputs import finish, sample_users, summarise
from genrec.indexing.codes import CODES_FILE, ItemCodes
from genrec.io import fingerprint, split_fingerprint
from genrec.models.device import decoding_threads
from genrec.models.genrec.evaluation import read_catalogue
from genrec.models.p5 import model as p5
from genrec.models.p5.ranking import load_model, rank_users, ranked_entries
from genrec.tracking.runs import read_run_id

log = logging.getLogger(__name__)


def run(params: Params, *, processed_dir: Path, model_dir: Path, metrics_path: Path, predictions_path: Path) -> dict:
    """Rank items for every evaluated user; write predictions, then metrics; log both into P5's MLflow run.

    Returns:
        The metrics written, plus the two output paths.

    Raises:
        DataError: a checkpoint of another dataset or split, or an index/vocabulary not covering the catalogue.
    """
    processed_dir, model_dir = Path(processed_dir), Path(model_dir)
    e = params.eval
    started = time.perf_counter()
    meta = p5.read_meta(model_dir)
    split_hash = split_fingerprint(processed_dir)
    p5.check_checkpoint(meta, params.dataset, split_hash, model_dir / p5.META_FILE)
    seqs = load_sequences(processed_dir)
    codes = ItemCodes.load(model_dir)
    words = p5.item_words(codes, seqs.item_ids, model_dir / CODES_FILE)
    model, tokenizer = load_model(model_dir, e.dtype, e.device)
    code_ids = p5.code_token_ids(tokenizer, codes, seqs.item_ids, model_dir)

    # One target row per user in user-id order, as the prompts stage writes them: the same sample as GenRec's.
    rows = np.array(sample_users(list(target_rows(seqs, e.split, "all")), e.max_users, e.seed), dtype=np.int64)
    users = [seqs.user_ids[u] for u in seqs.user[rows].tolist()]
    full = p5.records(users, rows, seqs.start[rows], seqs.position[rows], seqs.item, None)
    shown = [p5.Record(r.user_id, r.position, r.history[-meta["max_history"]:], r.target) for r in full]
    # The phrasings, seed, history length and budget the checkpoint was trained with, read from beside it.
    encoded, truncated = p5.encode(shown, tokenizer, code_ids, words, meta["phrasing_seed"], meta["max_input_tokens"],
                                   meta["phrasings"])
    constrained_exclusion = e.constrained and e.exclude_history
    excluded = [sorted(set(r.history)) for r in full] if constrained_exclusion else None
    hopeless = sum(len(x) >= len(seqs.item_ids) for x in excluded) if excluded else 0

    start = time.perf_counter()
    with decoding_threads(e.deterministic, model.device) as threads:
        ranked = rank_users(model, [x for x, _ in encoded], code_ids, excluded, e, tokenizer)
    seconds = time.perf_counter() - start
    titles = dict(zip(seqs.item_ids, seqs.titles))
    lists = [ranked_entries(beams, seqs.item_ids, titles, tokenizer) for beams in ranked]
    targets = [seqs.item_ids[r.target] for r in full]

    e = params.eval
    # Integrity over items, not titles: a P5 beam is an item, and two items may share a title.
    metrics = summarise([{"target_item_id": t} for t in targets], lists, e, seconds,
                        beam_key=lambda entry: entry["item_ids"][0] if entry["item_ids"] else None,
                        protocol={"max_prompt_tokens": meta["max_input_tokens"],
                                  "ranking": f"full catalogue, generative ({codes.method} item codes)"},
                        # an item's codes, then EOS
                        max_new_tokens=codes.depth + 1 if e.constrained else e.max_new_tokens or codes.depth + 1,
                        truncated=truncated, hopeless=hopeless,
                        shared_titles=read_catalogue(processed_dir / "items.parquet").shared_titles())
    predictions = [{"user_id": user, "target_item_id": target, "target_title": titles[target], "ranked": entries}
                   for user, target, entries in zip(users, targets, lists)]
    return finish(params, metrics, predictions, model=p5.model_name(codes.method),
                  model_sha256=fingerprint(model_dir), metrics_path=metrics_path,
                  predictions_path=predictions_path, processed_dir=processed_dir, started=started,
                  train_seconds=round(meta["training"]["train_seconds"], 2), run_id=read_run_id(model_dir),
                  device=model.device.type, **threads, backbone=meta["backbone"], index=codes.method, index_depth=codes.depth,
                  leaky=codes.leaky)
