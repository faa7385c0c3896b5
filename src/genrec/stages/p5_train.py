"""P5 training stage: a T5 learns to write the next item's id from item-id prompts.

    genrec p5_train --processed data/processed/<dataset> --out models/p5

Same split and the same training positions as GenRec (`prompts.train_targets`, via the prompts
stage's `target_rows`); history = the latest `p5.max_history` items (default `prompts.max_history`).
A plain seeded torch loop (AdamW, linear warm-up and decay, gradient clipping at 1.0): the model is
small and the loss is one item token + EOS, so a Trainer would add nothing but configuration.

Default size (`p5.backbone: scratch`): T5-small's layout shrunk to d_model 256, d_ff 1024, 4+4 layers,
4 heads (8.4M parameters with ml-latest-small's 4.3k-token vocabulary), 10 epochs of batch 64: on
ml-latest-small 480 steps took 680 CPU-seconds (about 6 min on 2 idle cores). Validation loss stops
improving after about 4-6 epochs. `t5-small` (or any T5 id / folder) loads pretrained weights instead.

Writes `model_dir` atomically: the T5 checkpoint and tokenizer, `item_index.json`, `p5.json`
(dataset, split fingerprint, backbone label and size, phrasings, history length, resolved params,
training summary) and `mlflow_run.json`, the run that `p5_evaluate` logs into.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from genrec import p5, tracking
from genrec.io import atomic_path, split_fingerprint, write_json
from genrec.params import Params, to_dict
from genrec.stages.prompts import SPLITS, Sequences, load_sequences, target_rows

log = logging.getLogger(__name__)

ARCHITECTURE_KEYS = ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "vocab_size")


def run(params: Params, *, processed_dir: Path, model_dir: Path) -> dict:
    """Train P5 on the split in `processed_dir` and write it to `model_dir`.

    Returns:
        {"model_dir", "run_id", "backbone", "examples", "steps", "train_loss", "valid_loss", "train_seconds"}.

    Raises:
        DataError: an inconsistent split, or a tokenizer that cannot hold every item id as one token.
    """
    import mlflow
    import torch

    processed_dir, model_dir = Path(processed_dir), Path(model_dir)
    p = params.p5
    seqs = load_sequences(processed_dir)
    split_hash = split_fingerprint(processed_dir)
    index = build_index(params, seqs)
    numbers = np.array([index.ids[item] for item in seqs.item_ids], dtype=np.int64)[seqs.item]
    history = p.max_history or params.prompts.max_history
    train = split_records(seqs, "train", params.prompts.train_targets, numbers, history)
    valid = split_records(seqs, "valid", params.prompts.train_targets, numbers, history)
    torch.manual_seed(p.seed)  # the scratch weights and dropout
    texts = [p5.build_prompt(p5.choose_phrasing(p.seed, r.user_id, r.position), r.user_id, r.history) for r in train]
    model, tokenizer, label = p5.build_model(p, texts, len(index.ids))
    tokens = p5.item_token_ids(tokenizer, len(index.ids), model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    train_data, truncated = encode(train, tokenizer, tokens, p.seed, p.max_input_tokens)
    valid_data, _ = encode(valid, tokenizer, tokens, p.seed, p.max_input_tokens)
    log.info("P5 (%s, %.1fM parameters, %s indexing): %d training and %d validation prompts on %s", label,
             model.num_parameters() / 1e6, index.method, len(train), len(valid), device)

    with tracking.start_or_resume_run(params, run_name="p5") as mlrun:
        mlflow.set_tags({"genrec.family": "p5", "genrec.backbone": label})
        mlflow.log_params({k: str(v)[:tracking.MAX_PARAM_LENGTH] for k, v in tracking.flatten(
            {"dataset": params.dataset, "split": to_dict(params.split), "prompts": to_dict(params.prompts),
             "p5": to_dict(p), "split_fingerprint": split_hash}).items()})
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = train_loop(model, train_data, valid_data, params, tokenizer.pad_token_id)
        # CPU seconds (all threads) beside the wall time: on a shared machine the wall time says little.
        summary.update(train_seconds=time.perf_counter() - start, train_cpu_seconds=time.process_time() - cpu_start,
                       examples=len(train), prompts_truncated=truncated, device=device)
        mlflow.log_metrics({"p5.train_seconds": summary["train_seconds"]})
        meta = {"dataset": params.dataset, "split_fingerprint": split_hash, "backbone": label,
                "backbone_source": p.backbone, "num_parameters": model.num_parameters(),
                "architecture": {k: getattr(model.config, k) for k in ARCHITECTURE_KEYS}, "indexing": index.method,
                "phrasings": list(p5.PHRASINGS), "phrasing_seed": p.seed, "max_history": history,
                "max_input_tokens": p.max_input_tokens, "params": to_dict(params), "training": summary}
        write_checkpoint(model_dir, model, tokenizer, index, meta, mlrun)
    log.info("P5 trained %d steps in %.0f s (train loss %.3f, valid loss %.3f); wrote %s", summary["steps"],
             summary["train_seconds"], summary["train_loss"], summary["valid_loss"], model_dir)
    return {"model_dir": str(model_dir), "run_id": mlrun.info.run_id, "backbone": label, **summary}


def write_checkpoint(model_dir: Path, model, tokenizer, index: p5.ItemIndex, meta: dict, mlrun) -> None:
    """Model, tokenizer, item index, metadata and run id into `model_dir` at once; copied to the MLflow run."""
    import mlflow

    with atomic_path(model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        index.save(tmp / p5.INDEX_FILE)
        write_json(tmp / p5.META_FILE, meta)
        tracking.write_run_file(tmp / tracking.RUN_FILE, mlrun)
        mlflow.log_artifacts(str(tmp), artifact_path="p5_model")


def build_index(params: Params, seqs: Sequences) -> p5.ItemIndex:
    """`p5.indexing` over the catalogue; `sequential` sees the training rows only."""
    if params.p5.indexing == "random":
        return p5.random_index(seqs.item_ids, params.p5.seed)
    train_rows = np.flatnonzero(seqs.split == 0)  # sorted by (user, position): users in id order
    bounds = np.flatnonzero(np.diff(seqs.user[train_rows])) + 1
    sequences = ([seqs.item_ids[c] for c in chunk] for chunk in np.split(seqs.item[train_rows], bounds))
    return p5.sequential_index(sequences, seqs.item_ids)


def split_records(seqs: Sequences, name: str, train_targets: int | str, numbers: np.ndarray,
                  limit: int | None) -> list[p5.Record]:
    """P5 records of one split's targets (train: the same positions as GenRec's prompts stage)."""
    rows = target_rows(seqs, name, train_targets)
    users = [seqs.user_ids[u] for u in seqs.user[rows].tolist()]
    return p5.records(users, rows, seqs.start[rows], seqs.position[rows], numbers, limit)


def encode(records: list[p5.Record], tokenizer, tokens: np.ndarray, seed: int, max_tokens: int,
           phrasings: Sequence[str] = p5.PHRASINGS) -> tuple[list[tuple], int]:
    """(input ids, [item token, EOS]) per record, and how many prompts lost their oldest items to fit `max_tokens`."""
    chosen = [p5.choose_phrasing(seed, r.user_id, r.position, phrasings) for r in records]
    texts = [p5.build_prompt(phrasing, r.user_id, r.history) for phrasing, r in zip(chosen, records)]
    ids = tokenizer(texts)["input_ids"] if texts else []
    out, truncated = [], 0
    for record, phrasing, input_ids in zip(records, chosen, ids):
        if len(input_ids) > max_tokens:
            input_ids = tokenizer(p5.fit_prompt(phrasing, record.user_id, record.history, tokenizer,
                                                max_tokens))["input_ids"]
            truncated += 1
        out.append((input_ids, [int(tokens[record.target]), tokenizer.eos_token_id]))
    return out, truncated


def batches(data: list[tuple], order, batch_size: int, pad_id: int, device):
    """Padded (input_ids, attention_mask, labels) tensors, `batch_size` examples at a time in `order`."""
    import torch

    for begin in range(0, len(order), batch_size):
        chunk = [data[i] for i in order[begin:begin + batch_size]]
        width = max(len(x) for x, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, (x, _) in enumerate(chunk):
            ids[row, :len(x)] = torch.tensor(x)
        labels = torch.tensor([y for _, y in chunk], dtype=torch.long)
        yield ids.to(device), (ids != pad_id).long().to(device), labels.to(device)


def train_loop(model, train_data: list[tuple], valid_data: list[tuple], params: Params, pad_id: int) -> dict:
    """Seeded AdamW epochs with linear warm-up/decay; logs losses to the active MLflow run."""
    import mlflow
    import torch
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    p, device = params.p5, model.device
    total = p.epochs * math.ceil(len(train_data) / p.batch_size)
    warmup = int(p.warmup) if p.warmup >= 1 else round(p.warmup * total)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(p.seed)
    step, running, valid_loss = 0, [], float("nan")
    bar = tqdm(total=total, desc="p5 train", unit="step")
    for epoch in range(1, p.epochs + 1):
        model.train()
        order = torch.randperm(len(train_data), generator=generator).tolist()
        for ids, mask, labels in batches(train_data, order, p.batch_size, pad_id, device):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())
            bar.update()
            if step % p.logging_steps == 0:
                mlflow.log_metrics({"p5.loss": float(np.mean(running[-p.logging_steps:])),
                                    "p5.learning_rate": scheduler.get_last_lr()[0]}, step=step)
        valid_loss = mean_loss(model, valid_data, p.batch_size, pad_id)
        mlflow.log_metrics({"p5.valid_loss": valid_loss, "p5.epoch": epoch}, step=step)
        bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}", valid=f"{valid_loss:.3f}")
    bar.close()
    return {"steps": step, "epochs": p.epochs, "train_loss": float(np.mean(running[-50:])) if running else float("nan"),
            "valid_loss": valid_loss}


def mean_loss(model, data: list[tuple], batch_size: int, pad_id: int) -> float:
    """Mean per-example cross-entropy of `data` (each target is the same 2 tokens long)."""
    import torch

    if not data:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for ids, mask, labels in batches(data, range(len(data)), batch_size, pad_id, model.device):
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * len(labels)
    return total / len(data)
