"""Evaluate stage: generative top-k for every user, HR/NDCG with intervals, integrity, predictions.

    genrec evaluate --base models/base --model models/<dataset>/genrec --prompts data/prompts/<dataset> \\
        --processed data/processed/<dataset> --metrics reports/<dataset>/metrics/genrec.json \\
        --predictions reports/<dataset>/predictions/genrec.jsonl

Protocol (all of it in `params.eval`, and written beside the metrics): each user's prompt is built
by `build_prompt` from the record's instruction and history with the template saved beside the
adapter (the oldest titles dropped to fit `max_prompt_tokens`, and counted); a `num_beams` beam
search returns the ranked list. Constrained (default): beams follow the catalogue trie, so each is
a real title; titles the user already has are excluded when `exclude_history`. Unconstrained (the
paper's): free generation, a beam counts only if its text equals a catalogue title after
whitespace normalisation, otherwise it is an invalid miss. A title shared by several items is one
list entry holding all their ids; it is a hit when they include the target.

dvc.yaml launches it under `eval.accelerate_profile` (not the training profile): several processes each
decode a share of the users on a replica of the model; `eval.device=spread` is one process with the
backbone's layers over every GPU, for a backbone no single GPU holds (docs/gpus.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from genrec.config.layout import check_accelerate_profile
from genrec.config.params import Params
from genrec.errors import DataError
from genrec.models.genrec.evaluation import (decode_lists, encode_prompts, launched_processes, load_model, processes,
                                             read_catalogue, read_records, user_exclusions, with_split_history)
from genrec.evaluation.outputs import finish, sample_users, summarise
from genrec.io import fingerprint
from genrec.models.device import decoding_threads
from genrec.models.genrec.code_tokens import view_codes
from genrec.tracking.runs import read_run_id

log = logging.getLogger(__name__)


def run(params: Params, *, base_dir: Path, model_dir: Path | None, prompts_dir: Path, processed_dir: Path,
        metrics_path: Path, predictions_path: Path, assistant_dir: Path | None = None) -> dict:
    """Evaluate the adapter in `model_dir` on `base_dir` (or the bare backbone when `model_dir` is None).

    Writes `predictions_path` (JSON lines: user, target, ranked titles with item ids and scores) and
    then `metrics_path`, each atomically, and logs both into the model's MLflow run if it has one.

    Returns:
        The metrics written, plus the two output paths.

    Raises:
        DataError: missing or malformed inputs, an empty catalogue, an adapter trained on another backbone,
            a missing `eval.accelerate_profile`, or `eval.device=spread` under several processes.
    """
    e = params.eval
    check_accelerate_profile(e.accelerate_profile, "eval.accelerate_profile")
    if e.device == "spread" and launched_processes() > 1:
        raise DataError(f"eval.device=spread loads one model over every GPU, but eval.accelerate_profile="
                        f"{e.accelerate_profile} launched {launched_processes()} processes",
                        fix="Set eval.accelerate_profile=1gpu with eval.device=spread, or eval.device=auto")
    start = time.perf_counter()
    base_dir, prompts_dir, processed_dir = Path(base_dir), Path(prompts_dir), Path(processed_dir)
    records = sample_users(read_records(prompts_dir / f"{e.split}.jsonl"), e.max_users, e.seed)
    catalogue = read_catalogue(processed_dir / "items.parquet")
    model, tokenizer, template = load_model(base_dir, model_dir, prompts_dir, e.dtype, e.device)
    if template.format == "sequence":
        records = with_split_history(records, processed_dir, e.split)
    prompts, truncated = encode_prompts(records, template, tokenizer, e.max_prompt_tokens)
    excluded = user_exclusions(records, catalogue, processed_dir, e.split) if e.constrained and e.exclude_history \
        else [[] for _ in records]
    assistant, histories = None, None
    if assistant_dir is not None and e.assistant_weight:
        from genrec.models.genrec.assist import SasrecAssistant
        from genrec.data.sequences import read_histories

        assistant = SasrecAssistant(Path(assistant_dir), catalogue)
        known = read_histories(processed_dir, before=e.split, users=[r["user_id"] for r in records])
        histories = [known.get(str(r["user_id"]), []) for r in records]
    # Under `accelerate launch` with several processes each decodes a block of users; every process gets
    # all the lists back, and the main process alone writes the files and the MLflow entries.
    state = processes(model.device, e.process_timeout)
    with decoding_threads(e.deterministic, model.device) as threads:
        lists, seconds, max_new_tokens = decode_lists(model, tokenizer, template, catalogue, prompts, excluded, e,
                                                      assistant=assistant, histories=histories, state=state)
    n_processes = state.num_processes if state is not None else 1
    if state is not None and not state.is_main_process:
        return {"users": len(lists), "processes": n_processes, "main_process": False}

    hopeless = sum(len(titles) == len(catalogue.titles) for titles in excluded)
    metrics = summarise(records, lists, e, seconds, truncated=truncated, hopeless=hopeless,
                        shared_titles=catalogue.shared_titles(), max_new_tokens=max_new_tokens,
                        protocol={"ghost_threshold": e.ghost_threshold,
                                  "assistant": "sasrec" if assistant is not None else None,
                                  "assistant_weight": e.assistant_weight if assistant is not None else 0.0,
                                  "prompt_format": template.format})
    # GenRec's evaluations log into its training run; genrec+sasrec is a model of its own, with its own run
    # (tagged with GenRec's run, whose adapter it uses).
    codes = view_codes(processed_dir)  # an item view: GenRec on codes is the model genrec-<index>
    name = ("genrec" if codes is None else f"genrec-{codes.method}") if model_dir is not None else "backbone"
    tracked = model_dir is not None and (Path(model_dir) / "mlflow_run.json").exists()
    run_id = read_run_id(model_dir) if tracked and assistant is None else None
    new_run = {"tags": {"genrec.genrec_run": read_run_id(model_dir)}} if tracked and assistant is not None else None
    predictions = [{"user_id": r["user_id"], "target_item_id": r["target_item_id"], "target_title": r.get("output"),
                    "ranked": entries} for r, entries in zip(records, lists)]
    return finish(params, metrics, predictions, model=name + ("+sasrec" if assistant is not None else ""),
                  model_sha256=model_hash(base_dir, model_dir, assistant_dir if assistant is not None else None),
                  metrics_path=metrics_path, predictions_path=predictions_path, processed_dir=processed_dir,
                  started=start, train_seconds=_train_seconds(model_dir), run_id=run_id, new_run=new_run,
                  device=model.device.type, processes=n_processes, **threads,
                  **({"index": codes.method, "index_depth": codes.depth} if codes is not None else {}))


def model_hash(base_dir: Path, model_dir: Path | None, assistant_dir: Path | None) -> str:
    """The evaluated model's content hash, the metrics' `model_sha256`.

    The adapter's sha256 exactly as `genrec.tracking.registry.adapter_hash` computes it (the registry version's
    `adapter_sha256` tag, which `genrec promote` checks the metrics against); with SASRec's folder for
    genrec+sasrec; the backbone folder's when no adapter is evaluated. Computed here rather than imported from
    the registry, which loads MLflow and is no dependency of this stage.
    """
    if model_dir is None:
        return fingerprint(base_dir)
    files = [Path(model_dir) / "adapter_model.safetensors", Path(model_dir) / "adapter_config.json"]
    return fingerprint(*files, *([Path(assistant_dir)] if assistant_dir is not None else []))


def _train_seconds(model_dir: Path | None) -> float | None:
    """Training wall time recorded by the train stage in `config.json`, if any."""
    path = Path(model_dir) / "config.json" if model_dir is not None else None
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("training", {}).get("train_seconds")
