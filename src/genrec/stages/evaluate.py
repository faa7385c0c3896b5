"""Evaluate stage: generative top-k for every user, HR/NDCG with intervals, integrity, predictions.

    genrec evaluate --base models/base --model models/genrec --prompts data/prompts/<dataset> \\
        --processed data/processed/<dataset> --metrics reports/metrics/genrec.json \\
        --predictions reports/predictions/genrec.jsonl

Protocol (all of it in `params.eval`, and written beside the metrics): each user's prompt is built
by `build_prompt` from the record's instruction and history with the template saved beside the
adapter (the oldest titles dropped to fit `max_prompt_tokens`, and counted); a `num_beams` beam
search returns the ranked list. Constrained (default): beams follow the catalogue trie, so each is
a real title; titles the user already has are excluded when `exclude_history`. Unconstrained (the
paper's): free generation, a beam counts only if its text equals a catalogue title after
whitespace normalisation, otherwise it is an invalid miss. A title shared by several items is one
list entry holding all their ids; it is a hit when they include the target.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import pandas as pd

from genrec.errors import DataError
from genrec.io import atomic_path, split_fingerprint, write_json
from genrec.metrics import integrity_metrics, ranking_metrics, target_rank
from genrec.params import EvalParams, Params
from genrec.prompts import PromptTemplate, completion_token_ids, fit_to_token_budget
from genrec.trie import Catalogue

log = logging.getLogger(__name__)

RECORD_KEYS = ("user_id", "instruction", "history_titles", "target_item_id")


def run(params: Params, *, base_dir: Path, model_dir: Path | None, prompts_dir: Path, processed_dir: Path,
        metrics_path: Path, predictions_path: Path) -> dict:
    """Evaluate the adapter in `model_dir` on `base_dir` (or the bare backbone when `model_dir` is None).

    Writes `predictions_path` (JSON lines: user, target, ranked titles with item ids and scores) and
    then `metrics_path`, each atomically, and logs both into the model's MLflow run if it has one.

    Returns:
        The metrics written, plus the two output paths.

    Raises:
        DataError: missing or malformed inputs, an empty catalogue, or an adapter trained on
            another backbone.
    """
    e = params.eval
    start = time.perf_counter()
    base_dir, prompts_dir, processed_dir = Path(base_dir), Path(prompts_dir), Path(processed_dir)
    records = sample_users(read_records(prompts_dir / f"{e.split}.jsonl"), e.max_users, e.seed)
    catalogue = read_catalogue(processed_dir / "items.parquet")
    model, tokenizer, template = load_model(base_dir, model_dir, prompts_dir, e.dtype)
    prompts, truncated = encode_prompts(records, template, tokenizer, e.max_prompt_tokens)
    excluded = user_exclusions(records, catalogue, processed_dir, e.split) if e.constrained and e.exclude_history \
        else [[] for _ in records]
    lists, seconds, max_new_tokens = decode_lists(model, tokenizer, template, catalogue, prompts, excluded, e)

    hopeless = sum(len(titles) == len(catalogue.titles) for titles in excluded)
    metrics = summarise(records, lists, e, seconds, truncated=truncated, hopeless=hopeless,
                        shared_titles=catalogue.shared_titles(), max_new_tokens=max_new_tokens)
    # What the report needs to put every model in one table, and to refuse a comparison across splits.
    metrics.update(model="genrec" if model_dir is not None else "backbone",
                   split_fingerprint=split_fingerprint(processed_dir),
                   train_seconds=_train_seconds(model_dir), eval_seconds=round(time.perf_counter() - start, 2))
    write_predictions(predictions_path, records, lists)
    write_json(metrics_path, metrics)
    log.info("%s: %d users, HR@10 %.4f NDCG@10 %.4f, %.2f users/s", metrics_path, len(records),
             metrics.get("hr_at_10", float("nan")), metrics.get("ndcg_at_10", float("nan")), metrics["users_per_s"])
    if model_dir is not None and (Path(model_dir) / "mlflow_run.json").exists():
        log_to_mlflow(params, Path(model_dir), metrics_path, predictions_path)
    return {**metrics, "metrics_path": str(metrics_path), "predictions_path": str(predictions_path)}


def _train_seconds(model_dir: Path | None) -> float | None:
    """Training wall time recorded by the train stage in `config.json`, if any."""
    path = Path(model_dir) / "config.json" if model_dir is not None else None
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("training", {}).get("train_seconds")


def decode_lists(model, tokenizer, template: PromptTemplate, catalogue: Catalogue, prompts: list[list[int]],
                 excluded: list[list[int]], e: EvalParams) -> tuple[list[list[dict]], float, int]:
    """Each user's ranked list (`ranked_entries`), the decoding seconds and the generated-token cap.

    Users whose history already covers the whole catalogue are not decoded: their list stays empty.
    """
    from genrec.decoding import BeamSettings, ranked_beams
    from genrec.trie import build_title_trie

    token_ids = title_token_ids(catalogue, template, tokenizer)
    settings = BeamSettings(num_beams=e.num_beams, length_penalty=float(e.length_penalty),
                            early_stopping=e.early_stopping, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=_pad_id(tokenizer),
                            max_new_tokens=e.max_new_tokens or max(len(t) for t in token_ids) + 1)
    trie = build_title_trie(token_ids, tokenizer.eos_token_id) if e.constrained else None
    todo = [i for i, titles in enumerate(excluded) if len(titles) < len(catalogue.titles)]
    if len(todo) < len(prompts):
        log.warning("%d users already have every catalogue title: nothing is left to recommend to them; they "
                    "count as misses", len(prompts) - len(todo))
    log.info("decoding %d users: %d titles (%d shared by several items), %s, %d beams, at most %d new tokens",
             len(todo), len(catalogue.titles), catalogue.shared_titles(),
             "constrained" if trie is not None else "unconstrained", e.num_beams, settings.max_new_tokens)
    start = time.perf_counter()
    beams = ranked_beams(model, [prompts[i] for i in todo], settings, trie=trie,
                         excluded=[excluded[i] for i in todo] if trie is not None else None,
                         batch_size=e.batch_size, progress=True)
    seconds = time.perf_counter() - start
    lists: list[list[dict]] = [[] for _ in prompts]
    for i, hyps in zip(todo, beams):
        lists[i] = ranked_entries(hyps, catalogue, tokenizer, constrained=trie is not None)
    return lists, seconds, settings.max_new_tokens


def read_records(path: Path) -> list[dict]:
    """Prompt records of one split (JSON lines), checked for the keys evaluation reads."""
    if not path.exists():
        raise DataError("not found", path=path, fix="run `genrec prompts` first (dvc repro prompts)")
    records = []
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"not JSON ({err.msg})", path=path, row=row, fix="rerun `genrec prompts`") from None
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise DataError(f"missing keys {missing}", path=path, row=row, fix="rerun `genrec prompts`")
            records.append(record)
    if not records:
        raise DataError("no records", path=path, fix="check the split: every user needs a valid and a test item")
    return records


def sample_users(records: list[dict], max_users: int | None, seed: int) -> list[dict]:
    """A seeded sample of `max_users` records (one per user), kept in file order; all when None."""
    if max_users is None or max_users >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), max_users))
    return [records[i] for i in keep]


def read_catalogue(path: Path) -> Catalogue:
    if not path.exists():
        raise DataError("not found", path=path, fix="run `genrec split` first (dvc repro split)")
    items = pd.read_parquet(path)
    missing = [c for c in ("item_id", "title") if c not in items.columns]
    if missing:
        raise DataError(f"missing columns {missing}", path=path, fix="expected item_id and title")
    try:
        return Catalogue.from_items(items[["item_id", "title"]])
    except ValueError as err:
        raise DataError(str(err), path=path, fix="the split left no items; check split.user_core/item_core") from None


def load_model(base_dir: Path, model_dir: Path | None, prompts_dir: Path, dtype: str):
    """Backbone plus merged adapter, its tokenizer and the prompt template it was trained with.

    Returns:
        (model in eval mode, tokenizer, PromptTemplate).
    """
    from genrec.backbone import load_backbone

    model, tokenizer = load_backbone(base_dir, dtype=None if dtype == "auto" else dtype)
    if model_dir is None:
        log.info("no adapter: evaluating the bare backbone with %s", prompts_dir / "template.json")
        return model.eval(), tokenizer, _template(prompts_dir / "template.json")
    from peft import PeftModel
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    check_same_backbone(base_dir, model_dir, model)
    template = _template(model_dir / "template.json")
    if (model_dir / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    # Merging folds the LoRA product into the weights once, so decoding runs the plain model.
    model = PeftModel.from_pretrained(model, model_dir, is_trainable=False).merge_and_unload()
    return model.eval(), tokenizer, template


def _template(path: Path) -> PromptTemplate:
    if not path.exists():
        raise DataError("no prompt template", path=path, fix="evaluate a folder written by `genrec train`")
    try:
        return PromptTemplate.load(path)
    except (ValueError, TypeError) as err:
        raise DataError(f"bad prompt template: {err}", path=path, fix="rerun the stage that wrote it") from None


def check_same_backbone(base_dir: Path, model_dir: Path, model) -> None:
    """Refuse an adapter whose recorded backbone differs from `base_dir` (hash, or shape when hashes differ in kind).

    Raises:
        DataError: naming both backbones.
    """
    from genrec.tracking import data_hashes

    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise DataError("no config.json beside the adapter", path=model_dir, fix="evaluate a folder written by "
                        "`genrec train`")
    trained_on = json.loads(config_path.read_text(encoding="utf-8")).get("base_model") or {}
    # The train stage counts the backbone with its LoRA layers injected: add them back before comparing.
    count = model.num_parameters() + int(trained_on.get("trainable_parameters") or 0)
    here = {"path": str(base_dir), "model_type": model.config.model_type, "num_parameters": count}
    recorded = trained_on.get("hash")
    if recorded:
        here["hash"] = data_hashes([base_dir])[str(base_dir)]
    same_kind = recorded and recorded.split(":")[0] == here.get("hash", "").split(":")[0]
    keys = ["hash"] if same_kind else ["model_type", "num_parameters"]
    if any(trained_on.get(k) != here.get(k) for k in keys):
        described = ", ".join(f"{k}={trained_on.get(k)}" for k in ["path", *keys])
        raise DataError(f"the adapter was trained on another backbone ({described}) than {base_dir} "
                        f"({', '.join(f'{k}={here.get(k)}' for k in keys)})", path=config_path,
                        fix="evaluate with the backbone it was trained on, or retrain it on this one")


def encode_prompts(records: list[dict], template: PromptTemplate, tokenizer, budget: int) -> tuple[list, int]:
    """Prompt token ids per record (tokenised as the trainer does), and how many lost history titles."""
    prompts, truncated = [], 0
    for record in records:
        try:
            prompt, _, dropped = fit_to_token_budget(template, record["instruction"], record["history_titles"], "",
                                                     tokenizer, budget)
        except ValueError as err:
            raise DataError(f"user {record['user_id']}: {err}", fix="raise eval.max_prompt_tokens") from None
        truncated += dropped > 0
        prompts.append(tokenizer(prompt)["input_ids"])  # special tokens as TRL adds them to training prompts
    if truncated:
        log.warning("%d of %d prompts lost history titles to fit %d tokens", truncated, len(records), budget)
    return prompts, truncated


def title_token_ids(catalogue: Catalogue, template: PromptTemplate, tokenizer) -> list[list[int]]:
    """Each title's completion tokens as they follow the prompt (what training taught)."""
    try:
        return [completion_token_ids(template, tokenizer, title) for title in catalogue.titles]
    except ValueError as err:
        raise DataError(str(err), fix="end the prompt template on a token boundary (e.g. a newline)") from None


def user_exclusions(records: list[dict], catalogue: Catalogue, processed_dir: Path, split: str) -> list[list[int]]:
    """Per record, the titles its user already has: train (and valid, when evaluating test) items."""
    users = {str(r["user_id"]) for r in records}
    frames = []
    for name in ("train", "valid") if split == "test" else ("train",):
        path = processed_dir / f"{name}.parquet"
        if not path.exists():
            raise DataError("not found", path=path, fix="run `genrec split` first, or set eval.exclude_history false")
        df = pd.read_parquet(path, columns=["user_id", "item_id"]).astype(str)
        frames.append(df[df["user_id"].isin(users)])
    history = pd.concat(frames).groupby("user_id")["item_id"].agg(list).to_dict()
    return [catalogue.covered_titles(history.get(str(r["user_id"]), [])) for r in records]


def ranked_entries(hyps, catalogue: Catalogue, tokenizer, constrained: bool) -> list[dict]:
    """Beams as list entries {title, item_ids, score}; title None marks a beam that is no catalogue title."""
    entries = []
    for h in hyps:
        # The completion is the bare title (prompts.build_completion), so decoded text compares directly.
        title = h.title if constrained else catalogue.find_title(tokenizer.decode(list(h.tokens),
                                                                                  skip_special_tokens=True))
        entries.append({"title": catalogue.titles[title] if title is not None else None,
                        "item_ids": list(catalogue.item_ids[title]) if title is not None else [],
                        "score": round(h.score, 6),
                        **({} if title is not None else {"text": tokenizer.decode(list(h.tokens))})})
    return entries


def summarise(records: list[dict], lists: list[list[dict]], e: EvalParams, seconds: float, *,
              beam_key=lambda entry: entry["title"], protocol: dict | None = None, **counts) -> dict:
    """Metrics, integrity shares, counts and the protocol, as written to every model's metrics file.

    Args:
        beam_key: what makes a beam valid and distinct (a title here; P5 passes the item id).
        protocol: entries that differ from this evaluator's protocol (P5's ranking and token budgets).
    """
    ranks = [target_rank([entry["item_ids"] for entry in entries], str(r["target_item_id"]))
             for r, entries in zip(records, lists)]
    metrics = ranking_metrics(ranks, e.k, e.bootstrap_samples, e.seed)
    metrics.update(integrity_metrics([[beam_key(entry) for entry in entries] for entries in lists], e.num_beams))
    metrics.update({"users": len(records), "decode_seconds": round(seconds, 2),
                    "users_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
                    "prompts_truncated": counts["truncated"], "users_without_candidates": counts["hopeless"],
                    "shared_titles": counts["shared_titles"], "seed": e.seed,
                    "protocol": {"split": e.split, "k": list(e.k), "num_beams": e.num_beams,
                                 "constrained": e.constrained, "exclude_history": e.exclude_history and e.constrained,
                                 "length_penalty": e.length_penalty, "early_stopping": e.early_stopping,
                                 "max_new_tokens": counts["max_new_tokens"], "max_users": e.max_users,
                                 "max_prompt_tokens": e.max_prompt_tokens, "dtype": e.dtype,
                                 "ranking": "full catalogue, generative",
                                 "invalid_beams": "misses" if not e.constrained else "impossible",
                                 **(protocol or {})}})
    return metrics


def write_predictions(path: Path, records: list[dict], lists: list[list[dict]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for record, entries in zip(records, lists):
            f.write(json.dumps({"user_id": record["user_id"], "target_item_id": record["target_item_id"],
                                "target_title": record.get("output"), "ranked": entries},
                               ensure_ascii=False, sort_keys=True) + "\n")


def log_to_mlflow(params: Params, model_dir: Path, metrics_path: Path, predictions_path: Path) -> None:
    """Log the metrics (prefixed by the split) and the predictions file into the model's training run."""
    import mlflow

    from genrec import tracking

    with tracking.start_or_resume_run(params, run_id=tracking.read_run_id(model_dir)):
        logged = tracking.log_metrics_file(metrics_path, prefix=params.eval.split)
        mlflow.log_artifact(str(metrics_path), artifact_path=f"eval/{params.eval.split}")
        mlflow.log_artifact(str(predictions_path), artifact_path=f"eval/{params.eval.split}")
    log.info("logged %d metrics and the predictions to MLflow run %s", len(logged), tracking.read_run_id(model_dir))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
