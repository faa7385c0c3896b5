"""Leakage audits: pure functions that count the evaluation targets a model could be handed, not predict.

Every count is over the valid and test targets of the leave-one-out split (one each per user); `genrec audit`
(`genrec.stages.audit`) turns them into shares and compares each with its limit (`audit.*_max`).

- consecutive ids (`follows`): the target's item code is the code of the user's last history item with its last
  element + 1. An index numbered by first appearance in the training sequences (`sequential`) makes "+1" a good
  guess: the next item a user meets is often the next number (OpenP5's sequential indexing; Hua et al. 2023).
- target in prompt (`title_leak`): the target's title stands verbatim in the history text of its own prompt,
  as the target itself (a repeat, counted by the next audit as well), as a distinct item with the same title,
  or inside the text of other titles.
- timestamp ties (`timestamp_ties`): the target shares its timestamp with a history item, so its place after
  that item came from the order of the source file, not from the clock (`genrec.data.split`'s tie-break).
- targets in history (`genrec.data.split.repeat_targets`, the split stage's own count): the target item is
  already in the user's history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd

from genrec.config.layout import SPLITS
from genrec.data import split
from genrec.data.processed import read_part_table
from genrec.data.sequences import Sequences
from genrec.errors import DataError
from genrec.indexing.codes import ItemCodes

TARGETS = ("valid", "test")
"""The splits whose targets are audited, each one item per user."""

LEAKS = ("repeat", "shared_title", "substring")
"""How a target title can stand in its prompt's history text, in the order `title_leak` tests them."""

RECORD_FIELDS = ("user_id", "target_item_id", "history_item_ids", "history_titles", "input")
"""The fields of a prompt record the target-in-prompt audit reads."""

RERUN_PROMPTS = "rerun `genrec prompts` on this split (dvc repro prompts@<dataset>)"


class Leak(NamedTuple):
    """A target whose title stands in its prompt's history text."""

    kind: str
    """One of `LEAKS`."""
    title: str
    """The target's title."""
    shown: str
    """The first history title that holds it ("" when it stands only across two titles of a comma-joined text)."""


def target_rows(seqs: Sequences) -> dict[str, np.ndarray]:
    """Per user (in `seqs.user_ids` order): the row of its last training item, of its valid and of its test item.

    `seqs` is sorted by (user, split, position) and `load_sequences` has checked every user has >= 1 train row
    and exactly one valid and one test row, so they are a user's last three rows.
    """
    end = np.r_[seqs.first[1:], len(seqs.item)]
    return {"train": end - 3, "valid": end - 2, "test": end - 1}


def code_matrix(index: ItemCodes, item_ids: Sequence[str], path: Path) -> np.ndarray:
    """The codes of every item of `item_ids` as rows of an (items x depth) integer array.

    Raises:
        DataError: an item of the split has no code (the index was built on another split).
    """
    missing = [item for item in item_ids if item not in index.codes]
    if missing:
        raise DataError(f"{index.method} index: {len(missing)} items of the split have no code (e.g. {missing[0]!r})",
                        path=path, fix="rebuild the index on this split (dvc repro index@<dataset>)")
    return np.array([index.codes[item] for item in item_ids], dtype=np.int64).reshape(len(item_ids), index.depth)


def follows(codes: np.ndarray, history_items: np.ndarray, target_items: np.ndarray) -> np.ndarray:
    """True where a target's code is its history item's code with the last element + 1.

    Args:
        codes: (items x depth) codes, `code_matrix`.
        history_items, target_items: item indices into `codes`, one pair per user.
    """
    history, target = codes[history_items], codes[target_items]
    return np.all(target[:, :-1] == history[:, :-1], axis=1) & (target[:, -1] == history[:, -1] + 1)


def consecutive_ids(seqs: Sequences, index: ItemCodes, path: Path) -> dict:
    """Valid and test targets coded as the user's last history item + 1 under `index`, and the chance level.

    The last history item of the valid target is the last training item; of the test target, the valid item.
    """
    codes, rows = code_matrix(index, seqs.item_ids, path), target_rows(seqs)
    counts = {name: int(follows(codes, seqs.item[rows[before]], seqs.item[rows[name]]).sum())
              for name, before in (("valid", "train"), ("test", "valid"))}
    return {"method": index.method, "leaky": index.leaky, "depth": index.depth, "items": len(index.codes),
            "chance": 1 / max(len(index.codes), 1), "users": len(seqs.user_ids), **counts}


def read_timestamps(processed_dir: Path, seqs: Sequences) -> np.ndarray:
    """Each row's timestamp, in the row order of `seqs` (user, split, position).

    Raises:
        DataError: a part's rows are not the rows `seqs` was read from (a file changed in between).
    """
    index = pd.Index(seqs.user_ids)
    users, positions, stamps = [], [], []
    for name in SPLITS:
        table = read_part_table(processed_dir, name, ["user_id", "position", "timestamp"])
        ids = table["user_id"].to_pandas()  # a Categorical: dictionary-encoded ids stay codes
        if not isinstance(ids.dtype, pd.CategoricalDtype):
            ids = ids.astype(str).astype("category")
        users.append(index.get_indexer(ids.cat.categories.astype(str))[ids.cat.codes.to_numpy()])
        positions.append(table["position"].to_numpy().astype(np.int64))
        stamps.append(table["timestamp"].to_numpy().astype(np.int64))
    part = np.repeat(np.arange(len(SPLITS), dtype=np.int8), [len(p) for p in positions])
    user, position = np.concatenate(users), np.concatenate(positions)
    order = np.lexsort((position, part, user))
    if not (np.array_equal(user[order], seqs.user) and np.array_equal(position[order], seqs.position)):
        raise DataError("the split's rows changed while they were read", path=processed_dir,
                        fix="run the audit again once `genrec split` has finished")
    return np.concatenate(stamps)[order]


def timestamp_ties(seqs: Sequences, timestamps: np.ndarray) -> dict[str, int]:
    """Valid targets that share their timestamp with a training item of their user; test targets, with a
    training or valid item."""
    key = split.user_time_key(seqs.user, timestamps)
    train, valid, test = (seqs.split == part for part in range(len(SPLITS)))
    return {"valid": int(np.isin(key[valid], key[train]).sum()),
            "test": int(np.isin(key[test], key[train | valid]).sum())}


def targets_in_history(seqs: Sequences) -> dict[str, int]:
    """Valid / test targets already in the history before them: the split stage's rule (`split.repeat_targets`)."""
    parts = {name: pd.DataFrame({"user_id": seqs.user[seqs.split == s], "item_id": seqs.item[seqs.split == s]})
             for s, name in enumerate(SPLITS)}
    counts = split.repeat_targets(parts)
    return {name: counts[f"{name}_targets_in_history"] for name in TARGETS}


def title_leak(target, title: str, history: Sequence, history_titles: Sequence[str], text: str) -> str | None:
    """How a target's title stands in its prompt's history text, or None.

    Args:
        target: the target item (an id, or any value comparable with `history`'s).
        title: the target's title.
        history, history_titles: the items the prompt shows and their titles.
        text: the history as the prompt writes it.

    Returns:
        "repeat": the target item itself is in the history; else "shared_title": a distinct item with the
        identical title is; else "substring": the title stands only inside the text of other titles (or, in a
        comma-joined history, across two of them); else None.
    """
    if target in history:
        return "repeat"
    if title in history_titles:
        return "shared_title"
    return "substring" if title in text else None


def leak(target, title: str, history: Sequence, history_titles: Sequence[str], text: str) -> Leak | None:
    """`title_leak` with the history title that shows the target's title, or None."""
    kind = title_leak(target, title, history, history_titles, text)
    return None if kind is None else Leak(kind, title, next((t for t in history_titles if title in t), ""))


def history_leaks(seqs: Sequences, name: str) -> dict[str, Leak]:
    """The leak of each user whose `name` target's title stands in the user's whole history before it.

    The history is written one title a line, as the `sequence` format writes it; every prompt format shows a
    suffix of it. Users without a leak are left out.
    """
    end = np.r_[seqs.first[1:], len(seqs.item)].tolist()
    items, titles = seqs.item.tolist(), seqs.titles
    cut = {"valid": 2, "test": 1}[name]  # a user's last rows that are not history: the target and after
    out = {}
    for user, lo, hi in zip(seqs.user_ids, seqs.first.tolist(), end):
        history, target = items[lo:hi - cut], items[hi - cut]
        history_titles = [titles[c] for c in history]
        text = "\n".join(history_titles)
        # A repeated target puts its own title in the text too: one substring test rules out every leak.
        if titles[target] in text:
            out[user] = leak(target, titles[target], history, history_titles, text)
    return out


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every prompt record in a JSON-lines file, checked for `RECORD_FIELDS`.

    Raises:
        DataError: the file is missing, or a line is not a JSON object with those fields (history ids and titles
            lists of the same length).
    """
    if not path.is_file():
        raise DataError("not found", path=path, fix=RERUN_PROMPTS)
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"not JSON ({err.msg})", path=path, row=row, fix=RERUN_PROMPTS) from None
            missing = [k for k in RECORD_FIELDS if not isinstance(record, dict) or k not in record]
            if missing:
                raise DataError("missing field", path=path, row=row, column=missing[0], fix=RERUN_PROMPTS)
            ids, titles = record["history_item_ids"], record["history_titles"]
            if not (isinstance(ids, list) and isinstance(titles, list) and len(ids) == len(titles)) \
                    or not isinstance(record["input"], str):
                raise DataError("history_item_ids and history_titles must be lists of the same length and input a "
                                "string", path=path, row=row, column="history_titles", fix=RERUN_PROMPTS)
            yield row, record


def record_leaks(path: Path, titles: dict[str, str]) -> tuple[int, dict[str, Leak]]:
    """The number of records in `path` and the leak of each user whose record's `input` shows its target's title.

    Args:
        titles: item id -> title, the split's catalogue (the target's title is its catalogue title).

    Raises:
        DataError: a bad record (`read_records`), or a target not in the catalogue.
    """
    count, out = 0, {}
    for row, record in read_records(path):
        target = str(record["target_item_id"])
        if target not in titles:
            raise DataError(f"target item {target!r} is not in the split's catalogue", path=path, row=row,
                            column="target_item_id", fix=f"the prompts come from another split: {RERUN_PROMPTS}")
        count += 1
        found = leak(target, titles[target], [str(i) for i in record["history_item_ids"]],
                     record["history_titles"], record["input"])
        if found is not None:
            out[str(record["user_id"])] = found
    return count, out


def leak_counts(targets: int, leaks: dict[str, Leak]) -> dict[str, int]:
    """{"targets", and per kind of `LEAKS` the number of users with it}."""
    kinds = [found.kind for found in leaks.values()]
    return {"targets": targets, **{kind: kinds.count(kind) for kind in LEAKS}}
