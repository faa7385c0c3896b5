"""Unit tests for genrec.data.split: k-core, duplicates, chronological order, leave-one-out, stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genrec.data import split


def frame(rows, rating=False):
    """Interactions from (user, item, timestamp[, rating]) tuples, in the given (source) order."""
    columns = ["user_id", "item_id", "timestamp"] + (["rating"] if rating else [])
    out = pd.DataFrame(rows, columns=columns).astype({"user_id": str, "item_id": str, "timestamp": "int64"})
    return out


def triples(df):
    return list(zip(df["user_id"].astype(str), df["item_id"].astype(str), df["timestamp"].astype(int)))


def test_k_core_needs_several_passes():
    # u4 has one row: dropping it leaves i3 with one row; dropping that leaves u3 with one row.
    df = frame([("u1", "i1", 1), ("u1", "i2", 2), ("u2", "i1", 3), ("u2", "i2", 4),
                ("u3", "i2", 5), ("u3", "i3", 6), ("u4", "i3", 7)])
    out, rounds = split.k_core_filter(df, user_core=2, item_core=2)
    assert triples(out) == [("u1", "i1", 1), ("u1", "i2", 2), ("u2", "i1", 3), ("u2", "i2", 4)]
    assert rounds == 4  # three passes remove something, the fourth confirms it is stable


def test_k_core_result_satisfies_both_thresholds_on_random_data():
    rng = np.random.default_rng(1)
    df = frame(list(zip(rng.integers(0, 60, 3000), rng.zipf(1.6, 3000) % 200, rng.integers(0, 10**6, 3000))))
    out, _ = split.k_core_filter(df, user_core=8, item_core=6)
    assert len(out) > 0
    assert out["user_id"].value_counts().min() >= 8
    assert out["item_id"].value_counts().min() >= 6
    # Input order is kept: the rows are a subsequence of the input.
    index = pd.MultiIndex.from_frame(df).get_indexer(pd.MultiIndex.from_frame(out))
    assert (np.diff(index) > 0).all()


def test_duplicates_keep_the_first_in_input_order():
    df = frame([("u1", "a", 5, 1.0), ("u1", "b", 5, 2.0), ("u1", "a", 5, 3.0), ("u1", "a", 6, 4.0),
                ("u2", "a", 5, 5.0)], rating=True)
    out, dropped = split.drop_duplicate_events(df)
    assert dropped == 1
    assert out["rating"].tolist() == [1.0, 2.0, 4.0, 5.0]


def test_duplicate_mask_matches_pandas_on_unsorted_ties():
    rng = np.random.default_rng(2)
    n = 5000
    users, items, times = rng.integers(0, 30, n), rng.integers(0, 15, n), rng.integers(0, 40, n)
    expected = pd.DataFrame({"u": users, "i": items, "t": times}).duplicated().to_numpy()
    assert expected.sum() > 100
    assert (split.duplicate_mask(users, items, times) == expected).all()


def test_user_time_key_falls_back_to_ranks_instead_of_overflowing():
    users = np.array([0, 1, 1, 0, 2])
    times = np.array([2**61, 0, 2**60, -(2**61), 5])
    order = np.argsort(split.user_time_key(users, times), kind="stable")
    assert order.tolist() == np.lexsort((times, users)).tolist()


def test_ties_keep_source_order_and_positions_count_from_zero():
    # Equal timestamps (u1 at t=10) stay in file order: "9" before "10" although "10" < "9" as text.
    df = frame([("u1", "9", 10), ("u1", "10", 10), ("u1", "3", 5), ("u0", "1", 7), ("u1", "4", 10)])
    out = split.order_chronologically(df)
    assert triples(out) == [("u0", "1", 7), ("u1", "3", 5), ("u1", "9", 10), ("u1", "10", 10), ("u1", "4", 10)]
    assert out["position"].tolist() == [0, 0, 1, 2, 3]


def test_order_matches_a_stable_lexsort_on_random_data():
    rng = np.random.default_rng(3)
    df = frame(list(zip(rng.integers(0, 50, 2000), rng.integers(0, 300, 2000), rng.integers(0, 30, 2000))))
    out = split.order_chronologically(df)
    users = df["user_id"].to_numpy()
    expected = df.iloc[np.lexsort((df["timestamp"].to_numpy(), users))]
    assert triples(out) == triples(expected)
    assert (out["position"].to_numpy() == out.groupby("user_id").cumcount().to_numpy()).all()
    again = split.order_chronologically(out.drop(columns="position"))
    assert again.equals(out)


def test_leave_one_out_on_hand_data():
    df = frame([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "w", 3),
                ("b", "x", 9), ("b", "z", 8), ("b", "y", 7)])
    parts = split.leave_one_out(split.order_chronologically(df))
    assert triples(parts["train"]) == [("a", "x", 1), ("a", "y", 2), ("b", "y", 7)]
    assert triples(parts["valid"]) == [("a", "z", 3), ("b", "z", 8)]
    assert triples(parts["test"]) == [("a", "w", 3), ("b", "x", 9)]
    assert parts["train"]["position"].tolist() == [0, 1, 0]
    assert parts["test"]["position"].tolist() == [3, 2]


def test_short_users_are_dropped_and_k_core_rerun():
    # x, y fail item_core, leaving u3 with one row (< 4): dropped. That leaves item c with one row:
    # dropped by the re-run k-core, which makes u2 short (3 rows): dropped too.
    rows = [(user, item, t) for user, items in (("u1", "abde"), ("u4", "abde"), ("u2", "abcd"), ("u3", "cxy"))
            for t, item in enumerate(items)]
    out, summary = split.filter_interactions(frame(rows), user_core=1, item_core=2, min_rating=None,
                                             min_sequence_length=4)
    assert summary["dropped"]["short_users"] == 2
    assert sorted(set(out["user_id"])) == ["u1", "u4"] and len(out) == 8
    assert summary["dropped"]["k_core"] == 15 - 8


def test_min_rating_and_duplicates_are_counted():
    rows = [("u", str(i), i, 4.0) for i in range(6)] + [("u", "0", 0, 4.0), ("u", "9", 9, 1.0)]
    out, summary = split.filter_interactions(frame(rows, rating=True), 1, 1, min_rating=3.0, min_sequence_length=3)
    assert summary["dropped"] == {"min_rating": 1, "duplicates": 1, "short_users": 0, "k_core": 0}
    assert len(out) == 6
    with pytest.raises(ValueError, match="rating"):
        split.filter_interactions(frame([r[:3] for r in rows]), 1, 1, min_rating=3.0, min_sequence_length=3)


def test_stats_on_hand_data():
    df = frame([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "y", 2), ("b", "z", 3),
                ("b", "w", 4), ("b", "v", 5)])
    ordered = split.order_chronologically(df)
    out = split.stats(ordered, split.leave_one_out(ordered), {"dropped": {"k_core": 0}})
    assert (out["users"], out["items"], out["interactions"]) == (2, 5, 8)
    assert (out["train_rows"], out["valid_rows"], out["test_rows"]) == (4, 2, 2)
    assert out["history_length"] == pytest.approx({"p10": 3.2, "p25": 3.5, "p50": 4.0, "p75": 4.5, "p90": 4.8,
                                                   "max": 5})
    assert out["sparsity"] == pytest.approx(1 - 8 / 10)
    assert out["dropped"] == {"k_core": 0}


def test_sparsity_counts_a_user_item_pair_once_however_often_it_repeats():
    """One user on one item 6 times gave "sparsity": -5.0; the pair fills the 1 x 1 matrix: sparsity 0."""
    ordered = split.order_chronologically(frame([("a", "x", t) for t in range(6)]))
    assert split.stats(ordered, split.leave_one_out(ordered), {})["sparsity"] == 0.0
    ordered = split.order_chronologically(frame([("a", "x", 1), ("a", "y", 2), ("a", "x", 3), ("b", "x", 1),
                                                 ("b", "x", 2), ("b", "x", 3)]))
    assert split.stats(ordered, split.leave_one_out(ordered), {})["sparsity"] == pytest.approx(1 - 3 / 4)


def test_repeat_targets_count_targets_already_in_the_history():
    from genrec.data.split import leave_one_out, order_chronologically, repeat_targets

    frame = pd.DataFrame({
        # a: test item 1 is in its train part; b: valid item 5 is in its train part, test item 6 is new;
        # c: test item 8 repeats its valid item.
        "user_id": ["a"] * 4 + ["b"] * 4 + ["c"] * 3,
        "item_id": ["1", "2", "3", "1", "4", "5", "5", "6", "7", "8", "8"],
        "timestamp": [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3],
    })
    parts = leave_one_out(order_chronologically(frame))
    assert repeat_targets(parts) == {"valid_targets_in_history": 1, "test_targets_in_history": 2}
    categorical = {name: part.astype({"user_id": "category", "item_id": "category"}) for name, part in parts.items()}
    assert repeat_targets(categorical) == {"valid_targets_in_history": 1, "test_targets_in_history": 2}
