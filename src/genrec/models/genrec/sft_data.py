"""The training data of both formats, as TRL datasets (built by `genrec.models.genrec.sft_trainer.build_trainer`).

`sequence` (default): each user's training titles become documents (`SequenceEncoder.windows`: a
header line, then one title a line, <= max_seq_length tokens, cut at title boundaries) with the loss
on every title token and its line end. Documents are packed best-fit-decreasing into rows of
max_seq_length (`trl.pack_dataset`) and `PackedCollator` restarts the position ids at every
document and passes no attention mask, so transformers builds a block-causal mask
(`masking_utils.find_packed_sequence_indices`): no document attends to another, and hardly a
token is padding. Only training items ever enter a document.

`instruction` (the paper's):

For a prompt/completion dataset TRL 1.16 appends the tokenizer's EOS *text* to each completion,
tokenises prompt + completion, and masks the prompt tokens out of the loss (completion-only loss;
`DataCollatorForCompletionOnlyLM` no longer exists). `check_prepared` verifies the result: one EOS
ends every completion (a tokenizer that adds its own EOS would give two) and nothing was cut.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from genrec.data.prompts import PromptTemplate, SequenceEncoder, fit_to_token_budget
from genrec.data.sequences import read_histories, read_titles
from genrec.errors import DataError

log = logging.getLogger(__name__)


def sequence_dataset(processed_dir: Path, encoder: SequenceEncoder, max_tokens: int, limit: int | None, seed: int,
                     recent: int | None = None):
    """Every user's training titles as `encoder.windows` (each user's latest `recent` windows only, when set),
    a seeded subsample of `limit` windows, BFD-packed.

    Returns:
        (datasets.Dataset with input_ids, labels and seq_lengths per packed row, stats).
    """
    from datasets import Dataset
    from tqdm import tqdm
    from trl import pack_dataset

    titles = read_titles(processed_dir)
    docs, skipped = [], 0
    histories = read_histories(processed_dir, before="train")
    for user, items in tqdm(histories.items(), desc="documents", unit="user", mininterval=10,
                            disable=len(histories) < 20_000):
        windows, n = encoder.windows([titles[i] for i in items], max_tokens, latest=recent)
        docs += windows
        skipped += n
    if not docs:
        raise DataError("no training documents: every user's training titles are empty", path=processed_dir,
                        fix="check the split (rerun `genrec split`)")
    if limit is not None and len(docs) > limit:
        docs = random.Random(seed).sample(docs, limit)
    if skipped:
        log.warning("%d training titles are longer than train.max_seq_length=%d with the header: left out",
                    skipped, max_tokens)
    tokens = sum(len(ids) for ids, _ in docs)
    target_tokens = sum(sum(t != -100 for t in labels) for _, labels in docs)
    data = Dataset.from_dict({"input_ids": [ids for ids, _ in docs], "labels": [lab for _, lab in docs]})
    packed = pack_dataset(data, max_tokens, strategy="bfd")
    rows = len(packed)
    log.info("%d users -> %d documents (%d tokens, %.0f%% with a loss) packed into %d rows of %d tokens (%.1f%% "
             "padding)", len(histories), len(docs), tokens, 100 * target_tokens / max(tokens, 1), rows, max_tokens,
             100 * (1 - tokens / max(rows * max_tokens, 1)))
    stats = {"users": len(histories), "records": len(docs), "packed_rows": rows, "tokens": tokens,
             "completion_tokens": target_tokens, "titles_skipped": skipped}
    return packed, stats


def next_title_dataset(processed_dir: Path, encoder: SequenceEncoder, max_tokens: int, limit: int | None, seed: int):
    """Validation loss data: per (sampled) user, the evaluation prompt from its training titles, then the
    valid title line, with the loss on that line only (the next-title loss the recommender is judged on)."""
    from datasets import Dataset

    titles = read_titles(processed_dir)
    valid = read_histories(processed_dir, before="test")  # train items, then the valid item last
    users = sorted(valid)
    if limit is not None and len(users) > limit:
        users = sorted(random.Random(seed).sample(users, limit))
    ids_list, labels_list = [], []
    for user in users:
        *history, target = [titles[i] for i in valid[user]]
        line = encoder.line_ids(target)
        prompt, _ = encoder.prompt_ids(history, max_tokens - len(line))
        ids_list.append(prompt + line)
        labels_list.append([-100] * len(prompt) + line)
    return Dataset.from_dict({"input_ids": ids_list, "labels": labels_list,
                              "seq_lengths": [[len(ids)] for ids in ids_list]})


class PackedCollator:
    """Packed rows -> input_ids, labels and position ids that restart at every document; no attention mask.

    Without a mask, transformers derives a block-causal mask from the position ids (a position that does
    not follow its predecessor starts a new sequence), so packed documents never attend to each other.
    It does so only without a KV cache (`masking_utils._preprocess_mask_arguments`), hence
    `use_cache=False` in every batch. Right padding forms its own "document" with labels -100.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.as_tensor(e["input_ids"])
            labels[row, :n] = torch.as_tensor(e["labels"])
            lengths = list(e["seq_lengths"]) + ([width - n] if width > n else [])
            positions[row] = torch.cat([torch.arange(length) for length in lengths])
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSON-lines file."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append((line_no, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"not JSON ({err.msg})", path=path, row=line_no,
                                    fix="Rerun `genrec prompts`") from None
    return records


def prompt_dataset(path: Path, template: PromptTemplate, tokenizer, max_tokens: int, limit: int | None,
                   seed: int):
    """Prompt/completion records from a prompts file, a seeded subsample of `limit`, each fit to `max_tokens`.

    Returns:
        (datasets.Dataset with `prompt` and `completion` columns, stats: records, truncated, titles_dropped).
    """
    from datasets import Dataset
    from tqdm import tqdm

    records = read_jsonl(path)
    check_plain_titles(records, tokenizer, path)
    if limit is not None and len(records) > limit:
        records = random.Random(seed).sample(records, limit)
    prompts, completions, truncated, dropped = [], [], 0, 0
    for row, record in tqdm(records, desc=f"fitting {path.name}", unit="record", mininterval=10,
                            disable=len(records) < 20_000):
        try:
            prompt, completion, n_dropped = fit_to_token_budget(
                template, record["instruction"], record["history_titles"], record["output"], tokenizer, max_tokens)
        except KeyError as err:
            raise DataError(f"record without {err}", path=path, row=row, fix="Rerun `genrec prompts`") from None
        except ValueError as err:
            raise DataError(str(err), path=path, row=row, fix="Raise train.max_seq_length") from None
        prompts.append(prompt)
        completions.append(completion)
        truncated += n_dropped > 0
        dropped += n_dropped
    log.info("%s: %d records; %d lost %d history titles to fit %d tokens", path, len(records), truncated,
             dropped, max_tokens)
    stats = {"records": len(records), "truncated": truncated, "titles_dropped": dropped}
    return Dataset.from_dict({"prompt": prompts, "completion": completions}), stats


def check_plain_titles(records: list[tuple[int, dict]], tokenizer, path: Path) -> None:
    """Refuse a record whose titles hold a special token's text (`<|endoftext|>`): TRL tokenises the
    instruction format's prompt and completion itself and would read it as that special token, where the
    `sequence` format and evaluation read it as plain text (`genrec.data.prompts.text_token_ids`).

    Raises:
        DataError: naming the file, the row and the token.
    """
    specials = sorted({str(t) for t in tokenizer.all_special_tokens} | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)},
        key=len, reverse=True)
    for row, record in records:  # (file row, record), as read_jsonl gives them
        for title in [*record.get("history_titles", []), record.get("output") or ""]:
            token = next((t for t in specials if t and t in title), None)
            if token is not None:
                raise DataError(f"title {title!r} holds the special token {token!r}, which the instruction format "
                                f"(tokenised by TRL) would read as that token", path=path, row=row,
                                fix="Train with train.format=sequence, which reads titles as plain text, or rename "
                                    "the title at ingest")


def check_prepared(dataset, eos_token_id: int, max_length: int) -> dict:
    """Check TRL's tokenised dataset: every sequence ends its completion with exactly one EOS, uncut.

    Returns:
        Token counts: tokens (non-padding) and completion_tokens (with EOS), summed over the dataset.
    """
    tokens = completion_tokens = 0
    for batch in dataset.iter(batch_size=1024):
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            target = [t for t in labels if t != -100]
            if len(ids) > max_length or not target or target[-1] != eos_token_id or target.count(eos_token_id) != 1:
                raise RuntimeError(f"a training sequence does not end with exactly one EOS ({eos_token_id}) in its "
                                   f"completion: {target[-8:]}; check the tokenizer's automatic special tokens")
            tokens += len(ids)
            completion_tokens += len(target)
    return {"tokens": tokens, "completion_tokens": completion_tokens}
