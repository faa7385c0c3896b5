"""Who holds the registry alias `champion`: the gated promotion rule, the outcomes it tests, and reset.

Rule (`choose_champion`). Versions compare only when validated on the same split and protocol
(tags `split_fingerprint`, `valid_protocol`), on a VALIDATION metric (`promote.metric`, tag
`valid.<metric>`); test metrics are tags for people, never used to choose. With no champion, the best
comparable version takes the alias. Otherwise the best challenger must score higher AND beat the
champion in a paired bootstrap over the validation users both were evaluated on (`metrics.paired_bootstrap`:
two-sided p < `promote.alpha` with a positive difference), over at least `promote.min_users` users (over one
user any gain gives the smallest p, 2/(samples+1)). Ties, lower scores, non-significant wins and tests over
too few users keep the champion. `promote.alpha: null` drops the test: a higher score is enough.

The test needs each version's per-user outcomes: `store_valid_ranks` logs the target's rank per validation
user (JSON) into the version's run, and tags the version with its sha256 (`valid.ranks_sha256`), so any
per-user metric can be recomputed (`metrics.per_user`) and a stale or edited file is refused.

Versions compare only within one item representation (tag `genrec.items`: how the model names items, "title"
for GenRec): a score on titles and a score on semantic ids answer different questions, so a challenger of another
representation than the champion is refused (`RepresentationMismatch`, the champion kept) unless
`promote.across_representations` is true. A version without the tag (registered before it existed) names items
by title.

Reset (`archive_champion`): when the split or protocol changes, the old champion cannot be compared with
anything new and would hold the alias forever. Archiving removes the alias and tags the version
`archived_reason` / `archived_at`; archived versions are no longer candidates (unless promoted again
themselves), so the next promotion starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from genrec.errors import DataError
from genrec.tracking import registry
from genrec.tracking import store
from genrec.tracking import runs as tracking
from genrec.evaluation.metrics import Rank, paired_bootstrap, per_user
from genrec.config.params import Params, PromoteParams
from genrec.models.table import MODELS

log = logging.getLogger(__name__)

COMPARABLE_TAGS = ("split_fingerprint", "valid_protocol")
"""Versions are compared only when these tags are equal (same split, same evaluation protocol)."""
RANKS_TAG = "valid.ranks_sha256"
"""sha256 of the version's stored per-user validation ranks (a `valid.` tag: updated on re-evaluation)."""
ARCHIVED_TAG = registry.ARCHIVED_TAG
ARCHIVED_AT_TAG = "archived_at"
TEST_PREFIX = "promotion."
"""Tags recording the last promotion test a version took part in as the challenger."""
RESET_COMMAND = 'genrec promote --reset --reason "TEXT"'
ITEMS_TAG = "genrec.items"
"""How the version names items (its metrics files' `index`, else GenRec's representation in the model table)."""
DEFAULT_ITEMS = MODELS["genrec"].representation
"""The representation of a version without the `genrec.items` tag: every version before the tag named titles."""
OVERRIDE = "promote.across_representations"
"""The param that lets versions of different item representations compete."""


class RepresentationMismatch(DataError):
    """The champion and the challenger name items differently and `promote.across_representations` is false."""


def items_of(version) -> str:
    """A version's item representation: its `genrec.items` tag, "title" without one."""
    return version.tags.get(ITEMS_TAG) or DEFAULT_ITEMS


@dataclass(frozen=True)
class Decision:
    """Who held `champion` before, who holds it now, why, and the comparison that decided (if any)."""

    previous: str | None
    champion: str
    moved: bool
    reason: str
    test: dict | None = None


Compare = Callable[[object, object], "dict | str"]
"""(challenger, champion) -> the paired test (`metrics.paired_bootstrap` keys), or why it cannot run."""


def select_tag(metric: str) -> str:
    """The version tag compared: `valid.<metric>`, never a test metric."""
    return f"valid.{metric}"


def choose_champion(versions: list, current, newcomer, *, metric: str = "ndcg_at_10", alpha: float | None = None,
                    compare: Compare | None = None, reset_command: str = RESET_COMMAND,
                    across_representations: bool = False, min_users: int = 1) -> Decision:
    """Apply the promotion rule (module docstring) to registered versions; pure, no registry calls.

    Args:
        versions: every version of the registered model (ModelVersion-like: .version, .tags).
        current: the version holding `champion`, or None.
        newcomer: the version just registered (or found again).
        alpha: significance level of the paired test; None: a higher score is enough.
        compare: runs the paired test; needed when `alpha` is set and a challenger scores higher.
        reset_command: the command quoted when the champion is not comparable.
        across_representations: compare versions of every item representation (`genrec.items`); by default
            only those of the newcomer's.
        min_users: the fewest users the paired test may decide on (`promote.min_users`): over fewer, the
            champion is kept whatever the p-value (over one user, any gain gives p = 2/(samples+1)).

    Raises:
        ValueError: if the newcomer has no `valid.<metric>` tag.
        RepresentationMismatch: the champion names items otherwise than the newcomer, and
            `across_representations` is false; nothing is decided.
    """
    tag = select_tag(metric)

    def score(v) -> float | None:
        try:
            return float(v.tags[tag])
        except (KeyError, TypeError, ValueError):
            return None

    def key(v):
        return tuple(v.tags.get(t) for t in COMPARABLE_TAGS)

    def best_of(candidates):
        return max(candidates, key=lambda v: (score(v), -int(v.version)))  # ties: the older version

    if score(newcomer) is None:
        raise ValueError(f"version {newcomer.version} has no {tag} tag: promotion does not guess")
    items = items_of(newcomer)
    if not across_representations and current is not None and items_of(current) != items:
        raise RepresentationMismatch(
            f"champion version {current.version} names items by {items_of(current)!r}, version {newcomer.version} "
            f"by {items!r}: promotion compares only versions of the same item representation, champion kept",
            fix=f"to compare them anyway, set {OVERRIDE}: true (genrec promote --set {OVERRIDE}=true ...)")
    comparable = [v for v in versions if key(v) == key(newcomer) and score(v) is not None
                  and (ARCHIVED_TAG not in v.tags or str(v.version) == str(newcomer.version))
                  and (across_representations or items_of(v) == items)]
    if current is None:
        best = best_of(comparable)
        return Decision(None, str(best.version), True, f"no champion yet: version {best.version} has the best "
                        f"{tag} ({score(best):.6f}) of {len(comparable)} comparable version(s)",
                        {"test": "none: no champion", "challenger": str(best.version), "champion": None})
    held = str(current.version)
    if key(current) != key(newcomer) or score(current) is None:
        return Decision(held, held, False, f"champion version {held} was validated on another split or protocol "
                        f"than version {newcomer.version} ({_describe_key(current)} vs {_describe_key(newcomer)}): "
                        f"not comparable, champion kept. To start afresh on the new split or protocol, archive it "
                        f"with `{reset_command}`, then promote again")
    others = [v for v in comparable if str(v.version) != held]
    if not others:
        return Decision(held, held, False, f"no other comparable version: champion version {held} kept")
    best = best_of(others)
    challenger, champion = score(best), score(current)
    if challenger <= champion:
        relation = "ties" if challenger == champion else "is below"
        return Decision(held, held, False, f"the best challenger, version {best.version} ({tag} {challenger:.6f}), "
                        f"{relation} champion version {held} ({champion:.6f}): champion kept")
    higher = (f"version {best.version} has a higher {tag} ({challenger:.6f}) than champion version {held} "
              f"({champion:.6f})")
    if alpha is None:
        return Decision(held, str(best.version), True, f"{higher}; promote.alpha is null: higher is enough",
                        {"test": "none: promote.alpha is null", "challenger": str(best.version), "champion": held,
                         "diff": challenger - champion})
    result = compare(best, current) if compare is not None else "no paired test was given"
    if isinstance(result, str):
        return Decision(held, held, False, f"{higher}, but the paired test cannot run ({result}): champion kept",
                        {"test": f"not run: {result}", "challenger": str(best.version), "champion": held})
    test = {**result, "test": "paired bootstrap", "metric": tag, "alpha": alpha, "min_users": min_users,
            "challenger": str(best.version), "champion": held}
    differing = f", ranks differing for {test['users_differing']}" if "users_differing" in test else ""
    shown = (f"{test['diff']:+.6f} over {test['users']} users{differing} (95% CI [{test['ci95_low']:+.6f}, "
             f"{test['ci95_high']:+.6f}]), p = {test['p_value']:.4g}")
    if test["users"] < min_users:
        return Decision(held, held, False, f"{higher}, but the paired bootstrap ({shown}) ran over fewer users than "
                        f"promote.min_users ({min_users}): too few to decide, champion kept", test)
    if test["diff"] > 0 and test["p_value"] < alpha:
        return Decision(held, str(best.version), True, f"{higher}, significantly: paired bootstrap {shown} "
                        f"< alpha {alpha}", test)
    return Decision(held, held, False, f"{higher}, but not significantly: paired bootstrap {shown}, alpha {alpha}: "
                    "champion kept", test)


def _describe_key(version) -> str:
    return ", ".join(f"{t}={str(version.tags.get(t))[:12]}" for t in COMPARABLE_TAGS)


def current_champion(mlc, name: str):
    """The version holding `champion`, or None when the registered model or the alias does not exist.

    Read through the registered model's aliases, so that "no such alias" is never told from an error message.

    Raises:
        DataError: the store cannot be read (a server down, a corrupt database): one line naming it. Read as
            "no champion", it would let `promote` move the alias with no paired test.
    """
    from mlflow.exceptions import MlflowException

    with store.store_errors(mlc.tracking_uri, f"read the champion of {name}"):
        try:
            model = mlc.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        held = (model.aliases or {}).get(registry.CHAMPION)
        return None if held is None else mlc.get_model_version(name, str(held))


def promote(params: Params, newcomer) -> Decision:
    """Move `champion` per `choose_champion` with `params.promote`; record the test on the challenger's tags.

    Raises:
        RepresentationMismatch: the champion names items otherwise than `newcomer` (nothing moves).
    """
    mlc = tracking.mlflow_client(params)
    name = registry.registered_model_name(params)
    versions = mlc.search_model_versions(f"name = {registry.quoted(name)}")
    newcomer = next(v for v in versions if str(v.version) == str(newcomer.version))  # fresh tags
    p = params.promote
    reset = f'genrec promote --set dataset={params.dataset} --reset --reason "TEXT"'
    decision = choose_champion(versions, current_champion(mlc, name), newcomer, metric=p.metric, alpha=p.alpha,
                               compare=lambda a, b: paired_test(params, a, b), reset_command=reset,
                               across_representations=p.across_representations, min_users=p.min_users)
    if decision.moved:
        mlc.set_registered_model_alias(name, registry.CHAMPION, decision.champion)
        for tag in (ARCHIVED_TAG, ARCHIVED_AT_TAG):  # a version promoted again is no longer archived
            if tag in next(v for v in versions if str(v.version) == decision.champion).tags:
                mlc.delete_model_version_tag(name, decision.champion, tag)
    if decision.test is not None:
        record_test(mlc, name, decision)
    log.info("%s@%s: %s", name, registry.CHAMPION, decision.reason)
    return decision


def paired_test(params: Params, challenger, champion) -> dict | str:
    """Paired bootstrap of `promote.metric` (challenger minus champion) on the validation users both have.

    Adds `users_differing`: the users whose target rank differs between the two versions (the only users that
    move the difference; the others add zeros).
    """
    ours, theirs = load_valid_ranks(params, challenger), load_valid_ranks(params, champion)
    missing = [str(v.version) for v, ranks in ((challenger, ours), (champion, theirs)) if ranks is None]
    if missing:
        return (f"no stored per-user validation outcomes for version {' and '.join(missing)}; run `genrec promote` "
                "on its adapter again to store them, or set promote.alpha: null")
    users = sorted(set(ours) & set(theirs))
    if not users:
        return "the two versions share no validation user"
    p: PromoteParams = params.promote
    return paired_bootstrap(per_user(ours, users, p.metric), per_user(theirs, users, p.metric), p.samples, p.seed) | {
        "users_differing": sum(ours[u] != theirs[u] for u in users), "samples": p.samples, "seed": p.seed}


def ranks_artifact(version) -> str:
    return f"promotion/v{version.version}_valid_ranks.json"


def store_valid_ranks(params: Params, version, ranks: dict[str, Rank]) -> bool:
    """Log the per-user validation ranks into the version's run and tag their sha256; a no-op when unchanged.

    Returns:
        Whether anything was written.
    """
    data = json.dumps({"version": str(version.version), "ranks": ranks}, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    if version.tags.get(RANKS_TAG) == digest:
        return False
    mlc = tracking.mlflow_client(params)
    path = Path(ranks_artifact(version))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / path.name
        local.write_bytes(data)
        mlc.log_artifact(version.run_id, str(local), artifact_path=path.parent.as_posix())
    mlc.set_model_version_tag(registry.registered_model_name(params), version.version, RANKS_TAG, digest)
    return True


def load_valid_ranks(params: Params, version) -> dict[str, Rank] | None:
    """The version's stored per-user validation ranks, or None if none are stored or they fail their sha256."""
    from mlflow.exceptions import MlflowException

    digest = version.tags.get(RANKS_TAG)
    if not digest:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracking.mlflow_client(params).download_artifacts(version.run_id, ranks_artifact(version), tmp)
        except (MlflowException, OSError):
            log.warning("version %s: its validation ranks %s are gone", version.version, ranks_artifact(version))
            return None
        data = Path(local).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        log.warning("version %s: stored validation ranks differ from their %s tag", version.version, RANKS_TAG)
        return None
    return json.loads(data)["ranks"]


def archive_champion(params: Params, reason: str) -> dict | None:
    """Remove `champion` and tag its version `archived_reason` and `archived_at` (UTC, ISO 8601).

    Returns:
        {"registered_model", "version", "archived_reason", "archived_at"}, or None when there was no champion.

    Raises:
        DataError: the store cannot be read or written (e.g. a read-only mlflow.db): one line naming it.
    """
    mlc = store.open_client(params)
    name = registry.registered_model_name(params)
    champion = current_champion(mlc, name)
    if champion is None:
        log.info("%s has no %s: nothing to archive", name, registry.CHAMPION)
        return None
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with store.store_errors(mlc.tracking_uri, f"archive {name} version {champion.version}"):
        mlc.set_model_version_tag(name, champion.version, ARCHIVED_TAG, reason)
        mlc.set_model_version_tag(name, champion.version, ARCHIVED_AT_TAG, when)
        mlc.delete_registered_model_alias(name, registry.CHAMPION)
    log.info("%s version %s archived (%s); the next promotion chooses a champion afresh", name, champion.version,
             reason)
    return {"registered_model": name, "version": int(champion.version), ARCHIVED_TAG: reason, ARCHIVED_AT_TAG: when}


def record_test(mlc, name: str, decision: Decision) -> None:
    """Tag the challenger `promotion.<key>` with the test and the outcome, replacing an earlier test's tags.

    Only changed tags are written, so that a rerun leaves the version untouched.
    """
    outcome = "promoted" if decision.moved else f"champion {decision.previous} kept"
    tags = {f"{TEST_PREFIX}{k}": str(v) for k, v in {**decision.test, "decision": outcome}.items() if v is not None}
    version = decision.test["challenger"]
    current = mlc.get_model_version(name, version).tags
    for key in current:
        if key.startswith(TEST_PREFIX) and key not in tags:
            mlc.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        if current.get(key) != value:
            mlc.set_model_version_tag(name, version, key, value)
