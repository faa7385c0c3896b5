"""P5 training stage: a T5 learns to write the next item's codes from prompts of item codes.

    genrec p5_train --set p5.indexing=<method> --processed data/processed/<dataset> \
        --index data/index/<dataset>/<method> --model models/<dataset>/p5-<method>

Same split and the same training positions as GenRec (`prompts.train_targets`, via
`sequences.target_rows`); history = the latest `p5.max_history` items (default `prompts.max_history`).
`p5.train_loop`, a plain seeded torch loop (AdamW, linear warm-up and decay, gradient clipping at 1.0): the model is
small and the loss is one item token + EOS, so a Trainer would add nothing but configuration.

Default size (`p5.backbone: scratch`): T5-small's layout shrunk to d_model 256, d_ff 1024, 4+4 layers,
4 heads (8.4M parameters with ml-latest-small's 4.3k-token vocabulary), 10 epochs of batch 64: on
ml-latest-small 480 steps took 680 CPU-seconds (about 6 min on 2 idle cores). Validation loss stops
improving after about 4-6 epochs. `t5-small` (or any T5 id / folder) loads pretrained weights instead.

The item index (`genrec index`) names the items: one token per item (random, sequential) or a tuple of code
tokens (collaborative, semantic: a TIGER-style model). `p5.train_targets: all` trains on every training
position (a sliding window, as TIGER does) instead of the prompts stage's positions.

Writes `model_dir` atomically: the T5 checkpoint and tokenizer, the index's `codes.json`, `p5.json`
(dataset, split fingerprint, backbone label and size, phrasings, history length, resolved params,
training summary) and `mlflow_run.json`, the run that `p5_evaluate` logs into.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from genrec.config.params import Params, to_dict
from genrec.data.sequences import load_sequences
from genrec.errors import DataError
from genrec.indexing.codes import CODES_FILE, STATS_FILE, ItemCodes
from genrec.io import atomic_path, split_fingerprint, write_json
from genrec.models.device import choose_device
from genrec.models.p5 import model as p5
from genrec.tracking import runs as tracking

log = logging.getLogger(__name__)

ARCHITECTURE_KEYS = ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "vocab_size")


def run(params: Params, *, processed_dir: Path, index_dir: Path, model_dir: Path) -> dict:
    """Train P5 on the split in `processed_dir` and write it to `model_dir`.

    Returns:
        {"model_dir", "run_id", "backbone", "examples", "steps", "train_loss", "valid_loss", "train_seconds"}.

    Raises:
        DataError: an inconsistent split, or a tokenizer that cannot hold every item id as one token.
    """
    import mlflow
    import torch

    processed_dir, model_dir, index_dir = Path(processed_dir), Path(model_dir), Path(index_dir)
    p = params.p5
    seqs = load_sequences(processed_dir)
    split_hash = split_fingerprint(processed_dir)
    codes = ItemCodes.load(index_dir)
    if codes.method != p.indexing:
        raise DataError(f"the index folder holds the {codes.method!r} index but p5.indexing is {p.indexing!r}",
                        path=index_dir, fix=f"pass --set p5.indexing={codes.method} or the {p.indexing} folder")
    words = p5.item_words(codes, seqs.item_ids, index_dir / CODES_FILE)
    history = p.max_history or params.prompts.max_history
    train_targets = p.train_targets or params.prompts.train_targets
    train = p5.split_records(seqs, "train", train_targets, history)
    valid = p5.split_records(seqs, "valid", train_targets, history)
    torch.manual_seed(p.seed)  # the scratch weights and dropout
    texts = [p5.build_prompt(p5.choose_phrasing(p.seed, r.user_id, r.position), r.user_id, r.history, words)
             for r in train]
    model, tokenizer, label = p5.build_model(p, texts, codes.vocabulary())
    code_ids = p5.code_token_ids(tokenizer, codes, seqs.item_ids, model_dir)
    device = choose_device("auto", process_gpu=False).type  # "cuda" or "cpu"
    model.to(device)
    train_data, truncated = p5.encode(train, tokenizer, code_ids, words, p.seed, p.max_input_tokens)
    valid_data, _ = p5.encode(valid, tokenizer, code_ids, words, p.seed, p.max_input_tokens)
    log.info("P5 (%s, %.1fM parameters, %s index, %d codes an item): %d training and %d validation prompts on %s",
             label, model.num_parameters() / 1e6, codes.method, codes.depth, len(train), len(valid), device)

    with tracking.start_or_resume_run(params, run_name=p5.model_name(codes.method),
                                      system_metrics=params.tracking.system_metrics) as mlrun:
        mlflow.set_tags({"genrec.family": "p5", "genrec.backbone": label, "genrec.index": codes.method})
        tracking.log_split_input(params, processed_dir, "train", "training")
        mlflow.log_params({k: str(v)[:tracking.MAX_PARAM_LENGTH] for k, v in tracking.flatten(
            {"dataset": params.dataset, "split": to_dict(params.split), "prompts": to_dict(params.prompts),
             "p5": to_dict(p), "split_fingerprint": split_hash, "index": codes.method,
             "index_depth": codes.depth}).items()})
        if (index_dir / STATS_FILE).is_file():  # the index's stats, so the UI can compare runs by them
            tracking.log_metrics_file(index_dir / STATS_FILE, prefix="index")
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = p5.train_loop(model, train_data, valid_data, p, tokenizer.pad_token_id)
        # CPU seconds (all threads) beside the wall time: on a shared machine the wall time says little.
        summary.update(train_seconds=time.perf_counter() - start, train_cpu_seconds=time.process_time() - cpu_start,
                       examples=len(train), prompts_truncated=truncated, device=device)
        mlflow.log_metrics({"p5.train_seconds": summary["train_seconds"]})
        meta = {"dataset": params.dataset, "split_fingerprint": split_hash, "backbone": label,
                "backbone_source": p.backbone, "num_parameters": model.num_parameters(),
                "architecture": {k: getattr(model.config, k) for k in ARCHITECTURE_KEYS}, "indexing": codes.method,
                "index_depth": codes.depth, "train_targets": train_targets,
                "phrasings": list(p5.PHRASINGS), "phrasing_seed": p.seed, "max_history": history,
                "max_input_tokens": p.max_input_tokens, "params": to_dict(params), "training": summary}
        write_checkpoint(model_dir, model, tokenizer, codes, meta, mlrun)
    log.info("P5 trained %d steps in %.0f s (train loss %.3f, valid loss %.3f); wrote %s", summary["steps"],
             summary["train_seconds"], summary["train_loss"], summary["valid_loss"], model_dir)
    return {"model_dir": str(model_dir), "run_id": mlrun.info.run_id, "backbone": label, **summary}


def write_checkpoint(model_dir: Path, model, tokenizer, codes: ItemCodes, meta: dict, mlrun) -> None:
    """Model, tokenizer, item codes, metadata and run id into `model_dir` at once; copied to the MLflow run."""
    import mlflow

    with atomic_path(model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        codes.save(tmp)
        write_json(tmp / p5.META_FILE, meta)
        tracking.write_run_file(tmp / tracking.RUN_FILE, mlrun)
        mlflow.log_artifacts(str(tmp), artifact_path="p5_model")
