"""Statistics of the comparison: paired tests, every model on the reference's users, per-k curves.

When the reference (GenRec) decoded a seeded sample of the users (`eval.max_users`) and the baselines every
user, `on_reference_users` restricts every model to the reference's users and recomputes its metrics and
intervals with the evaluations' own code (`genrec.evaluation.metrics.ranking_metrics`), so that the tables
and the paired tests compare like with like. Per-user values come from `genrec.evaluation.metrics.per_user`,
so any ranking metric of a metrics file can be tested.

The representation axis (`representation_tests`): how a model names items (titles, random, semantic or
collaborative ids) is tested pair by pair, each model against its family's default representation
(`genrec.models.table.family_default`) and each generative model against SASRec, with `paired_tests` on the
users both models of the pair evaluated.
"""

from __future__ import annotations

import logging

from genrec.evaluation.metrics import hits_at_k, ndcg_gains_at_k, paired_bootstrap, per_user, ranking_metrics
from genrec.evaluation.outputs import ModelResult
from genrec.models.table import MODELS, family_default

log = logging.getLogger(__name__)


def paired_tests(results: list[ModelResult], reference: str, metrics: tuple[str, ...], samples: int,
                 seed: int) -> dict[str, dict]:
    """`reference` against every other model on the users both evaluated: {model: {metric: test}}."""
    ref = next((r for r in results if r.name == reference), None)
    if ref is None:
        log.warning("no %r metrics file: no paired tests", reference)
        return {}
    out = {}
    for other in results:
        if other is ref:
            continue
        users = sorted(set(ref.ranks) & set(other.ranks))
        if not users:
            log.warning("%s and %s share no users: no paired test", reference, other.name)
            continue
        out[other.name] = {m: paired_bootstrap(per_user(ref.ranks, users, m), per_user(other.ranks, users, m),
                                               samples, seed) for m in metrics}
    return out


ANCHOR = "sasrec"
"""The scoring model every generative model is tested against on the representation axis."""


def representation(result: ModelResult) -> str:
    """How a model names items: its model-table representation, else its metrics file's `index`, else "-"."""
    entry = MODELS.get(result.name)
    return (entry.representation if entry is not None else "") or str(result.metrics.get("index") or "-")


def representation_pairs(names: list[str]) -> list[tuple[str, str, str]]:
    """(model, the model it is tested against, why) for every pair of the representation axis among `names`.

    Each model whose family has a default representation is paired with that default (e.g. p5-semantic with
    p5-random), and each generative model of the model table with SASRec; a pair needs both models in `names`.
    """
    pairs = []
    for name in names:
        default = family_default(name)
        if default in names:
            pairs.append((name, default, "family default"))
        entry = MODELS.get(name)
        if entry is not None and entry.kind == "generative" and ANCHOR in names:
            pairs.append((name, ANCHOR, "generative vs SASRec"))
    return pairs


def representation_tests(results: list[ModelResult], metrics: tuple[str, ...], samples: int,
                         seed: int) -> list[dict]:
    """The paired tests of `representation_pairs`, each model minus the one it is tested against.

    Each pair is tested by `paired_tests` on its own two results, so on the users both models evaluated
    (pass every model's unrestricted results for the largest such set).

    Returns:
        One record per pair that shares users: {model, against, why, tests: {metric: test}}.
    """
    by_name = {r.name: r for r in results}
    out = []
    for name, against, why in representation_pairs(list(by_name)):
        tests = paired_tests([by_name[name], by_name[against]], name, metrics, samples, seed)
        if against in tests:
            out.append({"model": name, "against": against, "why": why, "tests": tests[against]})
    return out


def on_reference_users(results: list[ModelResult], reference: str, samples: int,
                       seed: int) -> tuple[list[ModelResult], dict | None]:
    """Every model on exactly the reference's users, when some model evaluated users the reference did not.

    A model with users outside the reference's set (a baseline on every user, GenRec on a seeded sample) gets
    its per-user ranks restricted to the reference's users and its HR/NDCG and 95% intervals recomputed with
    `ranking_metrics` (`samples` resamples, `seed`); its valid-beam share, which needs the beams, becomes
    unknown. Models within the reference's users are kept as they are.

    Returns:
        (the results to compare, the sample: {reference, users, of, seed, max_users, short}) or
        (`results`, None) when there is no reference or no model has users beyond the reference's.
        `of` is the largest number of users any model evaluated (every test user when a baseline ran on
        all); `short` names models that lack some of the reference's users, with how many.
    """
    ref = next((r for r in results if r.name == reference and r.ranks is not None), None)
    if ref is None or all(set(r.ranks) <= set(ref.ranks) for r in results):
        return results, None
    users = set(ref.ranks)
    ks = (ref.metrics.get("protocol") or {}).get("k") or (5, 10)
    out, short = [], {}
    for r in results:
        if set(r.ranks) <= users:
            out.append(r)
            continue
        shared = sorted(users & set(r.ranks))
        if len(shared) < len(users):
            short[r.name] = len(users) - len(shared)
        ranks = {u: r.ranks[u] for u in shared}
        metrics = {**r.metrics, **ranking_metrics(list(ranks.values()), ks, samples, seed), "users": len(shared),
                   "valid_beam_share": None, "restricted_to": reference}
        out.append(ModelResult(name=r.name, metrics_path=r.metrics_path, metrics=metrics, ranks=ranks,
                               lists=None if r.lists is None else {u: r.lists[u] for u in shared}))
    protocol = ref.metrics.get("protocol") or {}
    sample = {"reference": reference, "users": len(users), "of": max(len(r.ranks) for r in results),
              "seed": ref.metrics.get("seed"), "max_users": protocol.get("max_users"), "short": short}
    return out, sample


def per_k_curves(results: list[ModelResult], max_k: int) -> list[dict]:
    """Records {k, <model>_hr, <model>_ndcg, ...} for k = 1..max_k, from each model's predictions."""
    rows = []
    for k in range(1, max_k + 1):
        row = {"k": k}
        for r in results:
            ranks = list(r.ranks.values())
            row[f"{r.name}_hr"] = round(float(hits_at_k(ranks, k).mean()), 6)
            row[f"{r.name}_ndcg"] = round(float(ndcg_gains_at_k(ranks, k).mean()), 6)
        rows.append(row)
    return rows
