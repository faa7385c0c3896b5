"""Ranking metrics as pure functions of the target's rank, bootstrap intervals and tests, integrity counts.

Leave-one-out has exactly one relevant item per user, so every metric depends only on the 1-based
rank of that item in the user's generated list (None when it is absent: a miss). Matching
generated text to catalogue items happens before this module, where the ranked item ids are built:
`genrec.models.genrec.evaluation.ranked_entries` (with `genrec.decoding.trie.Catalogue.find_title` for free generation) for
GenRec, `genrec.models.p5.ranking.ranked_entries` for P5. Nothing here knows about models or text.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Rank = int | None
"""1-based position of the target in a ranked list; None when the list does not contain it."""


def target_rank(ranked_item_ids: Sequence[Sequence[str]], target_item_id: str) -> Rank:
    """Rank of the first list entry whose item ids contain the target, or None.

    Each entry is the item ids of one generated title: a title shared by several items (5 in
    ml-latest-small) counts as a hit for any of them.
    """
    for position, item_ids in enumerate(ranked_item_ids, start=1):
        if target_item_id in item_ids:
            return position
    return None


def hits_at_k(ranks: Sequence[Rank], k: int) -> np.ndarray:
    """Per-user hit indicator: 1 if rank <= k else 0 (a miss, None, is 0)."""
    return np.array([1.0 if r is not None and r <= k else 0.0 for r in ranks], dtype=np.float64)


def ndcg_gains_at_k(ranks: Sequence[Rank], k: int) -> np.ndarray:
    """Per-user NDCG@k: 1 / log2(rank + 1) if rank <= k else 0 (the ideal DCG of one item is 1)."""
    return np.array([1.0 / math.log2(r + 1) if r is not None and r <= k else 0.0 for r in ranks],
                    dtype=np.float64)


def hit_ratio_at_k(ranks: Sequence[Rank], k: int) -> float:
    """HR@k = (1/|U|) * sum_u [rank_u <= k]: the share of users whose target is in the top k.

    Raises:
        ValueError: for an empty user list or k < 1.
    """
    _check(ranks, k)
    return float(hits_at_k(ranks, k).mean())


def ndcg_at_k(ranks: Sequence[Rank], k: int) -> float:
    """NDCG@k = (1/|U|) * sum_u [rank_u <= k] / log2(rank_u + 1).

    With one relevant item DCG@k = 1/log2(rank+1) and the ideal DCG@k = 1/log2(2) = 1.

    Raises:
        ValueError: for an empty user list or k < 1.
    """
    _check(ranks, k)
    return float(ndcg_gains_at_k(ranks, k).mean())


def _check(ranks: Sequence[Rank], k: int) -> None:
    if len(ranks) == 0:
        raise ValueError("no users to evaluate")
    if k < 1:
        raise ValueError(f"k={k}: expected k >= 1")


def resampled_means(values: np.ndarray, samples: int, seed: int, chunk: int = 100) -> np.ndarray:
    """Means of `samples` bootstrap resamples of `values` (users drawn with replacement), in draw order.

    Resamples are drawn `chunk` at a time so memory stays at chunk x users (ML-25M has 162k users);
    the draws, and so the means, depend only on `seed`, `samples`, `chunk` and the number of users.

    Raises:
        ValueError: for an empty `values`.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no users to resample")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, chunk):
        idx = rng.integers(0, values.size, size=(min(chunk, samples - start), values.size))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means)


def bootstrap_interval(values: np.ndarray, samples: int, seed: int, level: float = 0.95,
                       chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user `values`, resampling users (`resampled_means`).

    Returns:
        (low, high): the (1-level)/2 and (1+level)/2 quantiles of the resampled means.
    """
    means = resampled_means(values, samples, seed, chunk)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int, seed: int, level: float = 0.95) -> dict:
    """Paired bootstrap over users of mean(a - b), for per-user outcomes of two models on the same users.

    Users are resampled with replacement (`resampled_means` of the per-user differences); each
    resample's mean difference forms the bootstrap distribution. The interval is its percentile
    interval; the two-sided p-value inverts it, p = min(1, 2 * min(P*(d <= 0), P*(d >= 0))) with the
    (count + 1) / (samples + 1) correction, so identical outcomes give p = 1 and a difference no
    resample reverses gives p = 2 / (samples + 1).

    Returns:
        {"users", "diff", "ci95_low", "ci95_high", "p_value", "wins", "losses"}: wins / losses count
        the users where a's outcome is above / below b's.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired outcomes need the same, non-zero number of users ({a.size} vs {b.size})")
    diff = a - b
    means = resampled_means(diff, samples, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    below, above = (np.sum(means <= 0) + 1) / (samples + 1), (np.sum(means >= 0) + 1) / (samples + 1)
    return {"users": int(diff.size), "diff": float(diff.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "p_value": float(min(1.0, 2 * min(below, above))), "wins": int(np.sum(diff > 0)),
            "losses": int(np.sum(diff < 0))}


PER_USER = {"hr": hits_at_k, "ndcg": ndcg_gains_at_k}
"""Per-user gain of each ranking metric family, by the name's prefix (`hr_at_10` -> hits_at_k at k = 10).
Every name `ranking_metrics` writes has its entry here, so any metric of a metrics file can be recomputed
per user (paired tests, promotion)."""

LABELS = {"hr": "HR", "ndcg": "NDCG"}
"""Display name of each family: `hr_at_10` is shown as HR@10."""


def metric_names(ks: Sequence[int]) -> tuple[str, ...]:
    """The ranking metrics of a metrics file for cut-offs `ks`, in display order: hr_at_5, ndcg_at_5, hr_at_10, ...

    Names avoid "@" (MLflow rejects it in metric names).
    """
    return tuple(f"{family}_at_{k}" for k in sorted(set(ks)) for family in PER_USER)


def parse_metric(name: str) -> tuple[str, int]:
    """(family, k) of a ranking metric name such as `ndcg_at_10`.

    Raises:
        ValueError: the name is not `<family>_at_<k>` with a family of `PER_USER` and k >= 1; the message
            lists the families, so a typo (or a metric genrec does not compute per user, e.g. `mrr_at_10`)
            is refused instead of silently read as another metric. (k >= 1 is `ranking_metrics`' check.)
    """
    family, sep, k = name.partition("_at_")
    if not sep or family not in PER_USER or not k.isdigit():
        raise ValueError(f"unknown ranking metric {name!r}: expected <family>_at_<k> with family one of "
                         f"{', '.join(PER_USER)} (e.g. ndcg_at_10)")
    return family, int(k)


def metric_label(name: str) -> str:
    """`hr_at_10` -> "HR@10"; a name that is not a ranking metric is returned as it is."""
    try:
        family, k = parse_metric(name)
    except ValueError:
        return name
    return f"{LABELS[family]}@{k}"


def per_user(ranks: dict[str, Rank], users: Sequence[str], metric: str) -> np.ndarray:
    """Per-user values of `metric` (e.g. "hr_at_10") for `users`, in that order.

    Raises:
        ValueError: an unknown metric name (`parse_metric`).
    """
    family, k = parse_metric(metric)
    return PER_USER[family]([ranks[u] for u in users], k)


def ranking_metrics(ranks: Sequence[Rank], ks: Sequence[int], samples: int, seed: int) -> dict:
    """HR@k and NDCG@k for every k, each with its 95% bootstrap interval over users.

    Names avoid "@" (MLflow rejects it in metric names): HR@5 is `hr_at_5`.

    Returns:
        {"hr_at_5": ..., "ndcg_at_5": ..., ..., "ci95_low": {"hr_at_5": ...}, "ci95_high": {...}};
        every interval uses the same seed, so all metrics are resampled over the same user draws.
    """
    out: dict = {"ci95_low": {}, "ci95_high": {}}
    for name in metric_names(ks):
        family, k = parse_metric(name)
        _check(ranks, k)
        values = PER_USER[family](ranks, k)
        out[name] = float(values.mean())
        out["ci95_low"][name], out["ci95_high"][name] = bootstrap_interval(values, samples, seed)
    return out


def integrity_metrics(ranked_titles: Sequence[Sequence[str | None]], num_beams: int) -> dict:
    """Share of returned beams that are catalogue items, and share that repeat an earlier beam.

    Args:
        ranked_titles: per user, the catalogue title of each returned beam (None: not an item).
        num_beams: beams requested per user; a user with fewer returned beams (small catalogue,
            exclusions) counts the missing ones as invalid.

    Returns:
        {"valid_beam_share", "duplicate_beam_share", "beams_returned_share"}.
    """
    expected = num_beams * len(ranked_titles)
    if expected == 0:
        raise ValueError("no users to evaluate")
    valid = duplicate = returned = 0
    for titles in ranked_titles:
        returned += len(titles)
        seen: set[str] = set()
        for title in titles:
            if title is None:
                continue
            valid += 1
            duplicate += title in seen
            seen.add(title)
    return {"valid_beam_share": valid / expected, "duplicate_beam_share": duplicate / expected,
            "beams_returned_share": returned / expected}
