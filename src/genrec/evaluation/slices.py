"""What one average hides: every model's HR/NDCG by slice, and its beyond-accuracy metrics.

Computed by the report stage from the predictions files and the split; no model runs. Target popularity is
counted in the training split (`item_popularity`), every catalogue item included with its count, zero or not:
- **popularity slices** (`popularity_buckets`): items ordered by training interactions, most first (equal counts by
  item id); *head* is the shortest run of the most popular items whose interactions reach `report.head_share` of
  all interactions, *tail* the shortest run of the least popular reaching `report.tail_share`, *torso* the rest.
  *cold* (a slice of its own, overlapping the tail): fewer than `report.cold_item_max` training interactions.
- **history slices** (`history_buckets`): users cut by the length of their training sequence into
  `report.history_buckets` quantile buckets over every user of the split (4: quartiles); equal lengths share one.

A user falls in the slice of their target (popularity) and of their history (length); each slice gets HR/NDCG
with 95% bootstrap intervals (`genrec.evaluation.metrics.ranking_metrics`), and the reference model is tested
against every other model within each slice (`paired_bootstrap`, on the slice's users both evaluated).

Beyond accuracy (`beyond_accuracy`), over the users' top-k lists (k: the largest of `eval.k`); a list entry is a
title, and a title shared by several items stands for each of them:
- coverage@k: the share of catalogue items in at least one list (RecBole's ItemCoverage);
- ARP@k: average recommendation popularity, the mean over users of the mean training interactions of their
  list's entries (Abdollahpouri et al. 2019); an entry's popularity is the mean of its items';
- novelty@k: mean self-information of the recommended entries, -log2 p(i) with p(i) = (n_i + 1) / (N + |I|),
  n_i the item's training interactions, N all of them, |I| the catalogue: add-one smoothed so that an item
  without training interactions stays finite (Zhou et al. 2010; Vargas and Castells 2011);
- Gini@k: the Gini index of how often each catalogue item is recommended, every item counted (0: every item
  recommended equally often; near 1: a few items take every slot; RecBole's GiniIndex).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from genrec.data.processed import read_part
from genrec.evaluation.metrics import Rank, paired_bootstrap, per_user, ranking_metrics
from genrec.evaluation.outputs import ranks_of

POPULARITY = ("head", "torso", "tail")
"""The popularity buckets, most popular first; `cold` is a slice beside them."""


@dataclass(frozen=True)
class Split:
    """What the slices read from the split: training interactions per catalogue item and per user."""

    item_counts: dict[str, int]
    user_lengths: dict[str, int]

    @property
    def interactions(self) -> int:
        return sum(self.item_counts.values())


def read_split(processed_dir: str | Path) -> Split:
    """The training interactions of every catalogue item and of every user.

    Raises:
        DataError: a missing split file or column.
    """
    train = read_part(processed_dir, "train", ["user_id", "item_id"])
    items = read_part(processed_dir, "items", ["item_id"])
    counts = {str(item): 0 for item in items["item_id"]}
    for item, n in train["item_id"].astype(str).value_counts().items():
        counts[item] = int(n)
    lengths = {str(user): int(n) for user, n in train["user_id"].astype(str).value_counts().items()}
    return Split(item_counts=counts, user_lengths=lengths)


def popularity_buckets(counts: dict[str, int], head_share: float, tail_share: float) -> tuple[dict[str, str], dict]:
    """Each item's popularity bucket (head, torso, tail), and the bucket edges.

    Items are ordered by training interactions, most first, equal counts by item id; head is the shortest run
    from the top whose interactions reach `head_share` of all, tail the shortest run from the bottom reaching
    `tail_share` (without head items), torso the rest.

    Returns:
        ({item: bucket}, {"head_min": the fewest interactions of a head item, "tail_max": the most of a tail
        item}); with no interactions at all every item is tail.
    """
    if not counts:
        return {}, {"head_min": None, "tail_max": None}
    ordered = sorted(counts, key=lambda item: (-counts[item], item))
    values = np.array([counts[item] for item in ordered], dtype=np.int64)
    total = int(values.sum())
    if total == 0:
        return {item: "tail" for item in counts}, {"head_min": None, "tail_max": 0}
    heads = int(np.searchsorted(np.cumsum(values), head_share * total)) + 1
    tails = min(int(np.searchsorted(np.cumsum(values[::-1]), tail_share * total)) + 1, len(ordered) - heads)
    buckets = {item: "head" if i < heads else "tail" if i >= len(ordered) - tails else "torso"
               for i, item in enumerate(ordered)}
    return buckets, {"head_min": int(values[heads - 1]), "tail_max": int(values[len(ordered) - tails]) if tails else None}


def history_buckets(lengths: dict[str, int], buckets: int) -> tuple[dict[str, str], list[dict]]:
    """Each user's history bucket (q1 the shortest ... q<buckets>), and each bucket's length range.

    The edges are the 1/buckets, 2/buckets, ... quantiles of the lengths (numpy's linear method); a user is in
    the first bucket whose upper edge holds their length, so equal lengths share a bucket and a bucket may be
    empty when many users share one length.
    """
    if not lengths:
        return {}, []
    values = np.array(sorted(lengths.values()), dtype=np.float64)
    edges = [float(e) for e in np.quantile(values, [i / buckets for i in range(1, buckets)])]
    names = [f"q{i}" for i in range(1, buckets + 1)]
    of = {user: names[int(np.searchsorted(edges, n, side="left"))] for user, n in lengths.items()}
    ranges = []
    for i, name in enumerate(names):
        members = [n for user, n in lengths.items() if of[user] == name]
        ranges.append({"bucket": name, "min_length": min(members) if members else None,
                       "max_length": max(members) if members else None, "users": len(members)})
    return of, ranges


def beyond_accuracy(lists: Sequence[Sequence[Sequence[str]]], counts: dict[str, int], k: int) -> dict:
    """Coverage, ARP, novelty and Gini of the users' top-`k` lists (module docstring), keyed `<name>_at_<k>`.

    Args:
        lists: per user, the item ids of each ranked entry.
        counts: training interactions of every catalogue item (the catalogue is its keys).
    """
    catalogue, total = len(counts), sum(counts.values())
    shown = {item: 0 for item in counts}
    arp, novelty, entries = [], [], 0
    for ranked in lists:
        popularity = []
        for item_ids in ranked[:k]:
            known = [i for i in item_ids if i in counts]
            for item in known:
                shown[item] += 1
            if known:
                n = float(np.mean([counts[i] for i in known]))
                popularity.append(n)
                novelty.append(-math.log2((n + 1) / (total + catalogue)))
        entries += len(popularity)
        if popularity:
            arp.append(float(np.mean(popularity)))
    return {f"coverage_at_{k}": sum(1 for n in shown.values() if n) / catalogue if catalogue else None,
            f"arp_at_{k}": float(np.mean(arp)) if arp else None,
            f"novelty_at_{k}": float(np.mean(novelty)) if novelty else None,
            f"gini_at_{k}": gini(list(shown.values())), "entries": entries}


def gini(values: Sequence[float]) -> float | None:
    """The Gini index of non-negative `values`: sum_i (2i - n - 1) x_(i) / (n sum x), x sorted ascending, i from 1.

    0 when every value is equal, (n - 1) / n when one value holds everything; None for no values or a zero sum.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = x.size, float(x.sum()) if x.size else 0.0
    if n == 0 or total == 0:
        return None
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def slice_users(split: Split, targets: dict[str, str], popularity: dict[str, str], history: dict[str, str],
                cold_item_max: int, history_names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """{"popularity": {head, torso, tail, cold: users}, "history": {q1...: users}}: the users of `targets`
    ({user: target item}) by their target's popularity bucket (and coldness) and by their history bucket. A
    target outside the catalogue counts as an item without training interactions."""
    out = {"popularity": {name: [] for name in (*POPULARITY, "cold")},
           "history": {name: [] for name in history_names}}
    for user, target in targets.items():
        out["popularity"][popularity.get(target, "tail")].append(user)
        if split.item_counts.get(target, 0) < cold_item_max:
            out["popularity"]["cold"].append(user)
        if user in history:
            out["history"][history[user]].append(user)
    return out


def slice_metrics(ranks: dict[str, Rank], users: Sequence[str], ks: Sequence[int], samples: int, seed: int) -> dict:
    """HR/NDCG with intervals on `users` (those of them in `ranks`); {"users": 0} for an empty slice."""
    kept = [u for u in users if u in ranks]
    if not kept:
        return {"users": 0}
    return {"users": len(kept), **ranking_metrics([ranks[u] for u in kept], ks, samples, seed)}


def analyse(models: dict[str, dict[str, tuple[str, list[list[str]]]]], split: Split, *, reference: str,
            ks: Sequence[int], head_share: float, tail_share: float, cold_item_max: int, history_count: int,
            samples: int, paired_samples: int, seed: int, paired_seed: int,
            tested: Sequence[str]) -> dict:
    """Every model's slices and beyond-accuracy metrics, and the paired tests within each slice.

    Args:
        models: per model, its lists (`genrec.evaluation.outputs.read_predictions`) on the users to analyse (every model on the same users
            for comparable coverage and Gini).
        tested: the metrics of the paired tests (HR@10 and NDCG@10 by default).

    Returns:
        {"buckets": what each slice holds, "models": {model: {"users", "slices", "beyond"}},
        "paired": {model: {slice: {metric: test}}}} (reference minus model; a slice that holds no user both
        models evaluated has no test).
    """
    popularity, edges = popularity_buckets(split.item_counts, head_share, tail_share)
    history, ranges = history_buckets(split.user_lengths, history_count)
    names = [r["bucket"] for r in ranges]
    buckets = {"popularity": {
        **{name: {"items": sum(1 for b in popularity.values() if b == name),
                  "interactions": sum(split.item_counts[i] for i, b in popularity.items() if b == name)}
           for name in POPULARITY},
        "cold": {"items": sum(1 for n in split.item_counts.values() if n < cold_item_max)},
        "head_share": head_share, "tail_share": tail_share, "head_min_interactions": edges["head_min"],
        "tail_max_interactions": edges["tail_max"], "cold_below_interactions": cold_item_max},
        "history": {r["bucket"]: {k: v for k, v in r.items() if k != "bucket"} for r in ranges}}
    ranks, members = {}, {}
    out_models = {}
    for name, lists in models.items():
        ranks[name] = ranks_of(lists)
        members[name] = slice_users(split, {u: target for u, (target, _) in lists.items()}, popularity, history,
                                    cold_item_max, names)
        out_models[name] = {
            "users": len(lists),
            "slices": {kind: {s: slice_metrics(ranks[name], users, ks, samples, seed) for s, users in groups.items()}
                       for kind, groups in members[name].items()},
            "beyond": beyond_accuracy([entries for _, entries in lists.values()], split.item_counts, max(ks))}
    paired = {}
    if reference in models:
        for name in models:
            if name == reference:
                continue
            tests = {}
            for kind, groups in members[reference].items():
                for s, users in groups.items():
                    shared = sorted(set(users) & set(ranks[name]))
                    if shared:
                        tests[f"{kind}.{s}"] = {m: paired_bootstrap(per_user(ranks[reference], shared, m),
                                                                    per_user(ranks[name], shared, m),
                                                                    paired_samples, paired_seed) for m in tested}
            paired[name] = tests
    return {"buckets": buckets, "models": out_models, "paired": paired}


def run_metrics(result: dict, split: str) -> dict[str, float]:
    """One model's analysis (`analyse`'s `models` entry) as MLflow metrics: `<split>.slice.<kind>.<slice>.<name>`
    (the slice's users, HR/NDCG and their interval ends as `..._ci95_low` / `..._ci95_high`) and
    `<split>.<beyond-accuracy name>`; entries without a value are left out."""
    out = {}
    for kind, groups in result["slices"].items():
        for name, metrics in groups.items():
            prefix = f"{split}.slice.{kind}.{name}"
            for key, value in metrics.items():
                if isinstance(value, dict):
                    out.update({f"{prefix}.{metric}_{key}": v for metric, v in value.items()})
                else:
                    out[f"{prefix}.{key}"] = value
    out.update({f"{split}.{key}": value for key, value in result["beyond"].items()})
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
