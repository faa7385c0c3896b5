"""Generative evaluation, as a library: the same code ranks titles for the evaluate stage, the learning
curve during training, `genrec recommend` and the registered model. What every model's evaluation
shares (the user sample, the metrics and predictions files) is in `genrec.evaluation.outputs`.

Both prompt formats are handled here, from the template saved beside the adapter: `instruction`
prompts are built by `fit_to_token_budget` and end their titles with EOS; `sequence` prompts are the
header plus the user's latest titles (`SequenceEncoder`) and end their titles with the line end, which
is then the trie's end marker.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from genrec.errors import DataError
from genrec.config.params import EvalParams
from genrec.data.processed import read_part
from genrec.data.prompts import (PromptTemplate, SequenceEncoder, completion_token_ids, fit_to_token_budget,
                                 text_token_ids)
from genrec.data.sequences import read_histories
from genrec.decoding.trie import Catalogue
from genrec.models.processes import smallest_of_processes

log = logging.getLogger(__name__)

RECORD_KEYS = ("user_id", "instruction", "history_titles", "target_item_id")


def decode_lists(model, tokenizer, template: PromptTemplate, catalogue: Catalogue, prompts: list[list[int]],
                 excluded: list[list[int]], e: EvalParams, progress: bool = True, assistant=None,
                 histories: list[list[str]] | None = None, state=None) -> tuple[list[list[dict]], float, int]:
    """Each user's ranked list (`ranked_entries`), the decoding seconds and the generated-token cap.

    Users whose history already covers the whole catalogue are not decoded: their list stays empty.
    With an `assistant` (`genrec.models.genrec.assist.SasrecAssistant`) and `e.assistant_weight`, its title
    probabilities for each user's `histories` (item ids) are mixed into the search.

    With an accelerate `state` of several processes (`processes`), the users are put in `ranked_beams`'
    order (`decoding_order`) and cut into `e.batch_size` batches, the very batches one process forms; each
    process decodes a contiguous block of them, so every user's list is computed with the same padding and
    shapes as in a single process. The lists are then gathered, on every process. The seconds are then the
    wall time of all of it. `e.batch_size: auto` is sized by `genrec.decoding.memory`; the processes of a
    process group (this evaluation's, or training's for the learning curve) take the smallest of their sizes,
    so that they form the same batches.
    """
    from genrec.decoding.beam_search import decoding_order, ranked_beams
    from genrec.decoding.memory import resolve_batch_size
    from genrec.decoding.trie import build_title_trie

    token_ids = title_token_ids(catalogue, template, tokenizer)
    end = end_token_id(template, tokenizer)
    settings = beam_settings(e, tokenizer, end, token_ids, prior_weight=float(e.assistant_weight))
    trie = build_title_trie(token_ids, end) if e.constrained else None
    todo = [i for i, titles in enumerate(excluded) if len(titles) < len(catalogue.titles)]
    if len(todo) < len(prompts):
        log.warning("%d users already have every catalogue title: nothing is left to recommend to them; they "
                    "count as misses", len(prompts) - len(todo))
    log.info("decoding %d users: %d titles (%d shared by several items), %s, %d beams, at most %d new tokens",
             len(todo), len(catalogue.titles), catalogue.shared_titles(),
             "constrained" if trie is not None else "unconstrained", e.num_beams, settings.max_new_tokens)
    batch_size = resolve_batch_size(e.batch_size, model, max((len(prompts[i]) for i in todo), default=0)
                                    + settings.num_beams * settings.max_new_tokens, settings.num_beams)
    if e.batch_size == "auto":
        batch_size = smallest_of_processes(batch_size)
    mine = todo  # the users this process decodes
    if state is not None:
        order = [todo[j] for j in decoding_order([prompts[i] for i in todo])]
        with state.split_between_processes([order[b:b + batch_size] for b in range(0, len(order), batch_size)]) \
                as batches:
            mine = [i for batch in batches for i in batch]  # in decoding order: ranked_beams keeps it
    node_prior = None
    if assistant is not None and e.assistant_weight and trie is not None:
        from genrec.decoding.trie import node_log_mass

        def node_prior(chunk: list[int]):
            return node_log_mass(trie, assistant.title_probs([histories[mine[i]] for i in chunk]))
    start = time.perf_counter()
    beams = ranked_beams(model, [prompts[i] for i in mine], settings, trie=trie,
                         excluded=[excluded[i] for i in mine] if trie is not None else None,
                         batch_size=batch_size, progress=progress, node_prior=node_prior)
    decoded = [(i, ranked_entries(hyps, catalogue, tokenizer, constrained=trie is not None))
               for i, hyps in zip(mine, beams)]
    if state is not None:
        from accelerate.utils import gather_object

        decoded = gather_object(decoded)
    seconds = time.perf_counter() - start
    lists: list[list[dict]] = [[] for _ in prompts]
    for i, entries in decoded:
        lists[i] = entries
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


def load_model(base_dir: Path, model_dir: Path | None, prompts_dir: Path, dtype: str, device: str = "auto"):
    """Backbone plus merged adapter, its tokenizer and the prompt template it was trained with.

    Args:
        device: `eval.device` (auto | cpu | cuda, see `genrec.models.device.choose_device`; spread: the
            backbone's layers over every visible GPU, transformers' `device_map="auto"`, or the CPU without one).

    Returns:
        (model in eval mode on its device, tokenizer, PromptTemplate).
    """
    from genrec.models.device import choose_device
    from genrec.models.genrec.backbone import load_backbone
    from genrec.models.genrec.code_tokens import resize_for_adapter

    target = choose_device(device)
    spread = device == "spread" and target.type == "cuda"
    if model_dir is not None and not (Path(model_dir) / "adapter_model.safetensors").is_file():
        # Checked before the backbone loads; PEFT would otherwise fall back to a pickled adapter_model.bin.
        raise DataError("no adapter_model.safetensors", path=model_dir,
                        fix="genrec loads safetensors weights only; run `genrec train` (dvc repro train)")
    model, tokenizer = load_backbone(base_dir, dtype=None if dtype == "auto" else dtype,
                                     device_map="auto" if spread else None)
    if spread:
        log.info("eval.device=spread: the backbone's layers over %s",
                 sorted({str(d) for d in model.hf_device_map.values()}))
    if model_dir is None:
        log.info("no adapter: evaluating the bare backbone with %s", prompts_dir / "template.json")
        return _placed(model, target, spread), tokenizer, _template(prompts_dir / "template.json")
    from peft import PeftModel
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    check_same_backbone(base_dir, model_dir, model)
    template = _template(model_dir / "template.json")
    if (model_dir / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    resize_for_adapter(model, tokenizer)  # GenRec on an item index: the code tokens added at training
    # Merging folds the LoRA product (and trained code-token rows) into the weights once: decoding runs the plain model.
    model = PeftModel.from_pretrained(model, model_dir, is_trainable=False).merge_and_unload()
    return _placed(model, target, spread), tokenizer, template


def _placed(model, target, spread: bool):
    """`model` in eval mode on `target`; a spread model stays where its layers were loaded."""
    return (model if spread else model.to(target)).eval()


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
    from genrec.tracking.runs import data_hashes

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
    """Prompt token ids per record (tokenised as training did), and how many lost history titles.

    `sequence`: the header and the latest `template.max_history` of the record's history titles
    (`with_split_history` gives a record the user's whole history). `instruction`: `fit_to_token_budget`.
    """
    encoder = SequenceEncoder(template, tokenizer) if template.format == "sequence" else None
    prompts, truncated = [], 0
    for record in records:
        try:
            if encoder is not None:
                ids, dropped = encoder.prompt_ids(record["history_titles"], budget)
            else:
                prompt, _, dropped = fit_to_token_budget(template, record["instruction"], record["history_titles"],
                                                         "", tokenizer, budget)
                ids = text_token_ids(tokenizer, prompt)  # special tokens as TRL adds them to training prompts
        except ValueError as err:
            raise DataError(f"user {record['user_id']}: {err}", fix="raise eval.max_prompt_tokens") from None
        truncated += dropped > 0
        prompts.append(list(ids))
    if truncated:
        log.warning("%d of %d prompts lost history titles to fit %d tokens", truncated, len(records), budget)
    return prompts, truncated


def with_split_history(records: list[dict], processed_dir: Path, split: str) -> list[dict]:
    """Records whose history_titles are the user's whole history before the target, read from the split.

    The prompts stage writes only the latest `prompts.max_history` titles into a record; a `sequence`
    prompt may show more (`train.prompt_history`).
    """
    from genrec.data.sequences import read_titles

    titles = read_titles(processed_dir)
    histories = read_histories(processed_dir, before=split, users=[r["user_id"] for r in records])
    return [{**r, "history_titles": [titles[i] for i in histories.get(str(r["user_id"]), [])]} for r in records]


def end_token_id(template: PromptTemplate, tokenizer) -> int:
    """The token that ends a title: the line end (`sequence`) or EOS (`instruction`); the trie's end marker."""
    if template.format == "sequence":
        return SequenceEncoder(template, tokenizer).end_id
    return tokenizer.eos_token_id


def title_token_ids(catalogue: Catalogue, template: PromptTemplate, tokenizer) -> list[list[int]]:
    """Each title's tokens as they follow the prompt (what training taught), without the end marker."""
    try:
        if template.format == "sequence":
            encoder = SequenceEncoder(template, tokenizer)
            return [encoder.title_ids(title) for title in catalogue.titles]
        return [completion_token_ids(template, tokenizer, title) for title in catalogue.titles]
    except ValueError as err:
        raise DataError(str(err), fix="end the prompt template on a token boundary (e.g. a newline)") from None


def user_exclusions(records: list[dict], catalogue: Catalogue, processed_dir: Path, split: str) -> list[list[int]]:
    """Per record, the titles its user already has: train (and valid, when evaluating test) items."""
    users = {str(r["user_id"]) for r in records}
    frames = []
    for name in ("train", "valid") if split == "test" else ("train",):
        # Exclusion is a set of titles (`Catalogue.covered_titles`): file order will do, no position needed.
        df = read_part(processed_dir, name, ["user_id", "item_id"],
                       fix="run `genrec split` first, or set eval.exclude_history false").astype(str)
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


def beam_settings(e: EvalParams, tokenizer, end: int, token_ids: list[list[int]], *, num_beams: int | None = None,
                  prior_weight: float = 0.0):
    """The search settings of `params.eval`, for titles `token_ids` ending with `end` (evaluation and serving).

    Raises:
        DataError: under constrained decoding, `eval.max_new_tokens` is too short for the longest title and its
            end marker: a beam on it would be cut off and name no title, which the protocol rules out
            (`invalid_beams: impossible`). Unconstrained decoding counts such beams as misses.
    """
    from genrec.decoding.beam_search import BeamSettings

    needed = max(len(t) for t in token_ids) + 1
    if e.constrained and e.max_new_tokens is not None and e.max_new_tokens < needed:
        raise DataError(f"eval.max_new_tokens={e.max_new_tokens} is shorter than the longest catalogue title "
                        f"({needed - 1} tokens) plus its end marker",
                        fix=f"set eval.max_new_tokens to at least {needed}, or null (the catalogue decides)")
    return BeamSettings(num_beams=num_beams or e.num_beams, length_penalty=float(e.length_penalty),
                        early_stopping=e.early_stopping, eos_token_id=end, ghost_threshold=e.ghost_threshold,
                        prior_weight=prior_weight, pad_token_id=pad_token_id(tokenizer),
                        max_new_tokens=e.max_new_tokens or needed)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or EOS where it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def processes(device, timeout_seconds: int):
    """The accelerate state when `accelerate launch` started several processes (`WORLD_SIZE` > 1), else None.

    CPU processes join over gloo, GPU ones over NCCL, in a process group whose collectives wait
    `timeout_seconds` (`eval.process_timeout`; `genrec.models.processes.process_state`); `decode_lists`
    shards the users between them and gathers the lists.
    """
    if launched_processes() <= 1:
        return None
    from genrec.models.processes import process_state

    return process_state(timeout_seconds, cpu=device.type == "cpu")


def launched_processes() -> int:
    """The processes `accelerate launch` (torchrun) started: `WORLD_SIZE`, 1 without a launcher."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))
