"""The evaluation protocol for classic (scoring) recommenders, and MostPop.

Scoring models follow the protocol of the generative ones: the same test (or valid) users, the
same seeded user sample, top-k over *every* catalogue item, history items excluded when
`eval.exclude_history` is true (GenRec's constrained decoding does the same), metrics through
`genrec.evaluation.metrics`, metrics and predictions files in the evaluate stage's format.

Items are coded 1..N in sorted item_id order; code 0 is padding. A user's history for the test
target is its training sequence plus its validation item; for the validation target, training only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.errors import DataError
from genrec.config.layout import SPLITS
from genrec.data.processed import part_path, read_part


@dataclass
class SplitData:
    """A leave-one-out split with items coded 1..N (0 = padding)."""

    item_ids: np.ndarray
    """item_id (str) of code c at position c - 1."""
    titles: np.ndarray
    """Title of code c at position c - 1."""
    users: list[str]
    """Users in sorted order; every per-user list below follows it."""
    train: list[np.ndarray]
    """Per user, the codes of its training sequence in time order."""
    valid: np.ndarray
    """Per user, the code of its validation item."""
    test: np.ndarray
    """Per user, the code of its test item."""

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def read_split(processed_dir: str | Path) -> SplitData:
    """Read train/valid/test.parquet and items.parquet of `processed_dir` and code the items.

    Raises:
        DataError: a file or column is missing, an item is not in the catalogue, or a user lacks
            a validation or test row.
    """
    processed_dir = Path(processed_dir)
    items = read_part(processed_dir, "items", ("item_id", "title")).astype({"item_id": str})
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    index = pd.Index(items["item_id"].to_numpy(dtype=object))
    parts = {}
    for name in SPLITS:
        path = part_path(processed_dir, name)
        frame = read_part(processed_dir, name, ("user_id", "item_id", "position"))
        frame = frame.astype({"user_id": str, "item_id": str})
        codes = index.get_indexer(frame["item_id"].to_numpy(dtype=object))
        if (codes < 0).any():
            row = int(np.argmax(codes < 0))
            raise DataError(f"item {frame['item_id'].iloc[row]!r} is not in items.parquet", path=path, row=row,
                            column="item_id", fix="re-run `genrec split`, which writes both from the same data")
        parts[name] = frame.assign(code=codes + 1).sort_values(["user_id", "position"], kind="stable")
    users = sorted(parts["test"]["user_id"].unique())
    per_user = {}
    for name in ("valid", "test"):
        one = parts[name].drop_duplicates("user_id", keep="last").set_index("user_id")["code"]
        missing = [u for u in users if u not in one.index]
        if missing or len(one) != len(parts[name]):
            raise DataError(f"expected exactly one row per test user (user {missing[:1] or 'duplicated'})",
                            path=part_path(processed_dir, name), column="user_id", fix="re-run `genrec split`")
        per_user[name] = one.loc[users].to_numpy(dtype=np.int64)
    grouped = parts["train"].groupby("user_id", sort=True)["code"]
    train = {u: g.to_numpy(dtype=np.int64) for u, g in grouped}
    return SplitData(item_ids=items["item_id"].to_numpy(dtype=object), titles=items["title"].to_numpy(dtype=object),
                     users=users, train=[train.get(u, np.zeros(0, np.int64)) for u in users],
                     valid=per_user["valid"], test=per_user["test"])


def evaluation_users(data: SplitData, max_users: int | None, seed: int) -> np.ndarray:
    """Positions of the users to evaluate: all, or the seeded sample the evaluate stage draws.

    The evaluate stage samples prompt records, one per user in sorted user_id order, which is the
    order of `data.users`; drawing with its own function keeps every model on the same users.
    """
    from genrec.evaluation.outputs import sample_users

    return np.asarray(sample_users(list(range(len(data.users))), max_users, seed), dtype=np.int64)


def eval_cases(data: SplitData, which: str, users: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Histories and targets for the `which` ("test" or "valid") target of the given user positions."""
    if which == "test":
        histories = [np.append(data.train[u], data.valid[u]) for u in users]
        return histories, data.test[users]
    return [data.train[u] for u in users], data.valid[users]


def top_k(scores: np.ndarray, histories: list[np.ndarray], k: int, exclude_history: bool
          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row, the k best item codes (and their scores) of `scores` [users, N + 1].

    Padding (column 0) and, with `exclude_history`, the user's history are never returned; equal
    scores are ordered by item code, so rankings are deterministic. Rows with fewer than k
    candidates return fewer.
    """
    scores = np.array(scores, dtype=np.float64)
    scores[:, 0] = -np.inf
    if exclude_history:
        for row, history in enumerate(histories):
            scores[row, history] = -np.inf
    k = min(k, scores.shape[1] - 1)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    codes, values = [], []
    for row in range(scores.shape[0]):
        cand = part[row]
        order = np.lexsort((cand, -scores[row, cand]))
        cand = cand[order]
        cand = cand[np.isfinite(scores[row, cand])]
        codes.append(cand)
        values.append(scores[row, cand])
    return codes, values


def target_ranks(ranked: list[np.ndarray], targets: np.ndarray) -> list[int | None]:
    """1-based rank of each target in its ranked list, None when absent."""
    out = []
    for codes, target in zip(ranked, targets):
        hit = np.flatnonzero(codes == target)
        out.append(int(hit[0]) + 1 if hit.size else None)
    return out


def popularity(data: SplitData) -> np.ndarray:
    """Training interactions per item code (index 0, padding, is 0)."""
    codes = np.concatenate(data.train) if data.train else np.zeros(0, np.int64)
    return np.bincount(codes, minlength=data.num_items + 1).astype(np.float64)


def rank_by_popularity(counts: np.ndarray, histories: list[np.ndarray], k: int, exclude_history: bool,
                       batch: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """MostPop: the same popularity scores for every user, minus its history; in user batches."""
    codes, values = [], []
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        c, v = top_k(np.broadcast_to(counts, (len(chunk), counts.size)), chunk, k, exclude_history)
        codes += c
        values += v
    return codes, values


def evaluate_ranking(data: SplitData, users: np.ndarray, targets: np.ndarray, codes: list[np.ndarray],
                     values: list[np.ndarray], e, *, seconds: float, truncated: int = 0) -> tuple[dict, list[dict]]:
    """Metrics and prediction rows in the evaluate stage's format, for ranked item codes.

    Each list entry is one item ({title, item_ids: [its id], score}); every entry is a catalogue
    item, so the valid-beam share is that of returned entries and no entry repeats.

    Returns:
        (metrics, predictions): the metrics dict (`genrec.evaluation.outputs.summary`) and one
        {user_id, target_item_id, target_title, ranked} row per user.
    """
    from genrec.decoding.trie import Catalogue
    from genrec.evaluation.outputs import protocol_of, summary

    catalogue = Catalogue.from_items(pd.DataFrame({"item_id": data.item_ids, "title": data.titles}))
    metrics = summary(target_ranks(codes, targets), [[data.titles[c - 1] for c in row] for row in codes], e, seconds,
                      truncated=truncated, hopeless=sum(len(row) == 0 for row in codes),
                      shared_titles=catalogue.shared_titles(),
                      protocol_dict=protocol_of(e, constrained=True, exclude_history=e.exclude_history,
                                                length_penalty=None, early_stopping=None, max_new_tokens=None,
                                                max_prompt_tokens=None, dtype="float32",
                                                ranking="full catalogue, scored", invalid_beams="impossible"))
    predictions = [{"user_id": data.users[u], "target_item_id": data.item_ids[t - 1],
                    "target_title": data.titles[t - 1],
                    "ranked": [{"title": data.titles[c - 1], "item_ids": [data.item_ids[c - 1]],
                                "score": round(float(s), 6)} for c, s in zip(row, scores)]}
                   for u, t, row, scores in zip(users, targets, codes, values)]
    return metrics, predictions
