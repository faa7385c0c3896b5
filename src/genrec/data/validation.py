"""great-expectations checks that a leave-one-out split is sound.

Running expectations over 25M interaction rows would take minutes, so the split is first reduced
(with exact, vectorised numpy) to one row per user and one row per item, and GX validates those:

- users: exactly one valid and one test row; test >= valid >= every train timestamp; positions run
  0..n-1 in time order; no (user, item, timestamp) twice; train + valid + test equal the user's
  filtered interactions (nothing lost, nothing invented); enough interactions (k-core, min length).
- items: every item in the split has a non-empty title, appears once in the catalogue and keeps
  at least `item_core` interactions (so the catalogue lists no item absent from the split).

Results go to a JSON file and to GX data docs (a local site added to an ephemeral context).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from genrec.config.layout import SPLITS
from genrec.data.split import duplicate_mask, positions, stable_order, user_time_key

log = logging.getLogger(__name__)

EXAMPLES = 3
"""Failing rows quoted per expectation in the error message."""


def _shared_codes(columns: list[pd.Series]) -> tuple[list[np.ndarray], pd.Index]:
    """Codes of several id columns in one category space, and that space.

    Columns that share a categorical dtype (as the split stage's do) keep their codes; any others
    are factorised together.
    """
    dtype = columns[0].dtype
    if isinstance(dtype, pd.CategoricalDtype) and all(c.dtype == dtype for c in columns):
        return [c.cat.codes.to_numpy() for c in columns], dtype.categories
    joined, categories = pd.factorize(pd.concat([c.astype(str) for c in columns], ignore_index=True), sort=True)
    bounds = np.cumsum([0] + [len(c) for c in columns])
    return [joined[a:b] for a, b in zip(bounds[:-1], bounds[1:])], pd.Index(categories)


def _per_user(ufunc: np.ufunc, values: np.ndarray, sorted_users: np.ndarray, n_users: int) -> np.ndarray:
    """`ufunc` reduced over each user's values (users sorted); NaN for users without rows."""
    out = np.full(n_users, np.nan)
    if len(values):
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        out[sorted_users[starts]] = ufunc.reduceat(values, starts)  # int64 timestamps < 2**53: exact
    return out


def _lost_and_invented(filtered: tuple, split: tuple, rank: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: filtered rows missing from the split, and split rows not among the filtered ones.

    Fast path: both sides, grouped by user in the same order, are compared row by row (`rank` is
    each split row's index within its user); only users whose rows differ there (usually none)
    go through an exact set comparison.
    """
    fu, fi, ft = filtered
    su, si, st = split
    n_f, n_s = np.bincount(fu, minlength=n_users), np.bincount(su, minlength=n_users)
    aligned = rank < n_f[su]
    target = (np.cumsum(n_f) - n_f)[su[aligned]] + rank[aligned]
    differs = ~aligned
    differs[aligned] = (fi[target] != si[aligned]) | (ft[target] != st[aligned])
    suspect = (n_f != n_s) | (np.bincount(su[differs], minlength=n_users) > 0)
    lost, invented = np.zeros(n_users, np.int64), np.zeros(n_users, np.int64)
    if suspect.any():
        left = pd.DataFrame({"u": fu, "i": fi, "t": ft})[suspect[fu]].drop_duplicates()
        right = pd.DataFrame({"u": su, "i": si, "t": st})[suspect[su]].drop_duplicates()
        side = left.merge(right, how="outer", indicator=True)
        lost = np.bincount(side["u"][side["_merge"] == "left_only"], minlength=n_users)
        invented = np.bincount(side["u"][side["_merge"] == "right_only"], minlength=n_users)
    return lost, invented


def user_frame(interactions: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per user with the aggregates the user expectations check.

    Args:
        interactions: the filtered interactions the split was made from.
        splits: {"train", "valid", "test"} frames with user_id, item_id, timestamp, position.
    """
    parts = [splits[name] for name in SPLITS]
    (fu, *us), users = _shared_codes([interactions["user_id"]] + [p["user_id"] for p in parts])
    (fi, *its), _ = _shared_codes([interactions["item_id"]] + [p["item_id"] for p in parts])
    n_users = len(users)
    su, si = np.concatenate(us), np.concatenate(its)
    st = np.concatenate([p["timestamp"].to_numpy(np.int64) for p in parts])
    sp = np.concatenate([p["position"].to_numpy(np.int64) for p in parts])
    part = np.repeat(np.arange(len(parts), dtype=np.int8), [len(p) for p in parts])
    order = stable_order(user_time_key(su, sp))  # (user, position): the order downstream reads
    if order is not None:
        su, si, st, sp, part = su[order], si[order], st[order], sp[order], part[order]
    ft = interactions["timestamp"].to_numpy(np.int64)
    f_order = stable_order(user_time_key(fu, ft))
    if f_order is not None:
        fu, fi, ft = fu[f_order], fi[f_order], ft[f_order]
    rank = positions(su)
    back_in_time = np.r_[False, (su[1:] == su[:-1]) & (st[1:] < st[:-1])]
    lost, invented = _lost_and_invented((fu, fi, ft), (su, si, st), rank, n_users)
    frame = {"user_id": users.astype(str), "n_rows": np.bincount(su, minlength=n_users)}
    for k, name in enumerate(SPLITS):
        rows = part == k
        users_k, times_k = su[rows], st[rows]  # still sorted by user
        frame[f"n_{name}"] = np.bincount(users_k, minlength=n_users)
        frame[f"{name}_ts_min"] = _per_user(np.minimum, times_k, users_k, n_users)
        frame[f"{name}_ts_max"] = _per_user(np.maximum, times_k, users_k, n_users)
    frame.update({
        "n_lost": lost,
        "n_invented": invented,
        "n_duplicates": np.bincount(su[duplicate_mask(su, si, st)], minlength=n_users),
        "n_misordered": np.bincount(su[(sp != rank) | back_in_time], minlength=n_users),
    })
    frame = pd.DataFrame(frame)
    present = (frame["n_rows"] > 0) | (np.bincount(fu, minlength=n_users) > 0)
    return frame[present].reset_index(drop=True)


def item_frame(splits: dict[str, pd.DataFrame], items: pd.DataFrame) -> pd.DataFrame:
    """One row per item in the split or in the catalogue: its title (stripped) and interaction count."""
    item_codes, ids = _shared_codes([splits[name]["item_id"] for name in SPLITS])
    counts = np.bincount(np.concatenate(item_codes), minlength=len(ids))
    in_split = pd.DataFrame({"item_id": ids[counts > 0].astype(str), "n_interactions": counts[counts > 0]})
    catalogue = pd.DataFrame({"item_id": items["item_id"].astype(str), "title": items["title"].str.strip()})
    frame = in_split.merge(catalogue, on="item_id", how="outer", sort=True)
    frame["n_interactions"] = frame["n_interactions"].fillna(0).astype(np.int64)
    return frame


def user_expectations(min_rows: int) -> list:
    """Expectations on `user_frame`; each description says what it proves."""
    e = gx.expectations
    zero = dict(min_value=0, max_value=0)
    return [
        e.ExpectColumnValuesToBeBetween(column="n_valid", min_value=1, max_value=1,
                                        description="exactly one valid row per user"),
        e.ExpectColumnValuesToBeBetween(column="n_test", min_value=1, max_value=1,
                                        description="exactly one test row per user"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="test_ts_min", column_B="valid_ts_max", or_equal=True,
                                                  ignore_row_if="either_value_is_missing",
                                                  description="test is not earlier than valid"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="valid_ts_min", column_B="train_ts_max", or_equal=True,
                                                  ignore_row_if="either_value_is_missing",
                                                  description="valid is not earlier than any train row"),
        e.ExpectColumnValuesToBeBetween(column="n_lost", **zero,
                                        description="nothing lost: every filtered interaction is in the split"),
        e.ExpectColumnValuesToBeBetween(column="n_invented", **zero,
                                        description="nothing invented: every split row is a filtered interaction"),
        e.ExpectColumnValuesToBeBetween(column="n_duplicates", **zero,
                                        description="no duplicate (user, item, timestamp) in the split"),
        e.ExpectColumnValuesToBeBetween(column="n_misordered", **zero,
                                        description="positions run 0..n-1 in time order"),
        e.ExpectColumnValuesToBeBetween(column="n_rows", min_value=min_rows,
                                        description=f"every user keeps >= {min_rows} interactions"),
        e.ExpectColumnValuesToBeUnique(column="user_id", description="one row per user"),
    ]


def item_expectations(item_core: int) -> list:
    """Expectations on `item_frame`."""
    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="title", description="every item in the split has a title"),
        e.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1, description="titles are not empty"),
        e.ExpectColumnValuesToBeUnique(column="item_id", description="one catalogue row per item"),
        e.ExpectColumnValuesToBeBetween(column="n_interactions", min_value=item_core,
                                        description=f"every catalogue item keeps >= {item_core} interactions"),
    ]


def _plain(value):
    """JSON fallback for numpy scalars (and anything else GX may leave in a result)."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _context(docs_dir: Path):
    """An in-memory GX context whose only data docs site is a local folder (no temp dirs, no analytics).

    GX requires the site folder as an absolute path.
    """
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"local": site}, analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suites(checks: dict[str, tuple[pd.DataFrame, list, str]], docs_dir: Path) -> dict:
    """Validate each frame against its expectations and build the data docs under `docs_dir`.

    Args:
        checks: suite name -> (frame, expectations, id column quoted in failing rows).

    Returns:
        {"success": bool, "suites": {name: GX validation result as JSON}}.
    """
    context = _context(docs_dir)
    source = context.data_sources.add_pandas("split")
    results = {}
    for name, (frame, expectations, key) in checks.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame}, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [key]})
        # GX quotes failing rows with numpy scalars; make them plain JSON values.
        results[name] = json.loads(json.dumps(result.to_json_dict(), default=_plain))
    context.build_data_docs()
    return {"success": all(r["success"] for r in results.values()), "suites": results}


def failures(results: dict) -> list[str]:
    """One line per failed expectation: type, columns, what it proves, how many rows and a few of them."""
    lines = []
    for suite, result in results["suites"].items():
        for check in result["results"]:
            if check["success"]:
                continue
            config, outcome = check["expectation_config"], check.get("result") or {}
            kwargs = config["kwargs"]
            columns = kwargs.get("column") or f"{kwargs.get('column_A')}, {kwargs.get('column_B')}"
            examples = (outcome.get("unexpected_index_list") or [])[:EXAMPLES]
            error = check.get("exception_info", {}).get("exception_message")
            lines.append(f"{suite}: {config['type']}({columns}) [{config.get('description')}]: "
                         f"{outcome.get('unexpected_count')} of {outcome.get('element_count')} rows fail"
                         + (f", e.g. {examples}" if examples else "") + (f"; error: {error}" if error else ""))
    return lines


def validate_split(interactions: pd.DataFrame, splits: dict[str, pd.DataFrame], items: pd.DataFrame, *,
                   min_user_rows: int, item_core: int, docs_dir: Path) -> dict:
    """Run the user and item suites on a split; see `run_suites` for the result."""
    checks = {
        "split_users": (user_frame(interactions, splits), user_expectations(min_user_rows), "user_id"),
        "split_items": (item_frame(splits, items), item_expectations(item_core), "item_id"),
    }
    results = run_suites(checks, docs_dir)
    log.info("great-expectations: %s", "all checks passed" if results["success"] else "FAILED")
    return results
