"""great-expectations checks of the split: pass on real ml-latest-small, fail on each kind of corruption."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genrec.data import split
from genrec.data import validation
from genrec.data.split import catalogue


def movielens_small(folder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-latest-small read straight from its CSVs into the canonical tables."""
    ratings = pd.read_csv(folder / "ratings.csv")
    movies = pd.read_csv(folder / "movies.csv")
    interactions = pd.DataFrame({
        "user_id": ratings["userId"].astype(str), "item_id": ratings["movieId"].astype(str),
        "timestamp": ratings["timestamp"].astype("int64"), "rating": ratings["rating"].astype("float64"),
    })
    items = pd.DataFrame({"item_id": movies["movieId"].astype(str), "title": movies["title"].str.strip()})
    return interactions, items


@pytest.fixture(scope="module")
def ml_split(data_mirror):
    interactions, items = movielens_small(data_mirror / "ml-latest-small")
    filtered, _ = split.filter_interactions(split.sort_chronologically(interactions), 5, 5, None, 3)
    ordered = split.order_chronologically(filtered)
    return ordered, split.leave_one_out(ordered), catalogue(items, ordered)


def check(ml_split, tmp_path, parts=None, items=None):
    ordered, clean_parts, clean_items = ml_split
    return validation.validate_split(ordered, parts or clean_parts, clean_items if items is None else items,
                                     min_user_rows=5, item_core=5, docs_dir=tmp_path / "docs")


def copied(parts):
    return {name: frame.copy() for name, frame in parts.items()}


def assert_fails(results, expectation, description):
    """The validation failed, and one failure line names this expectation and what it proves."""
    assert not results["success"]
    lines = validation.failures(results)
    assert any(expectation in line and description in line for line in lines), lines


def test_passes_on_movielens_small_and_writes_data_docs(ml_split, tmp_path):
    results = check(ml_split, tmp_path)
    assert results["success"], validation.failures(results)
    assert validation.failures(results) == []
    users = results["suites"]["split_users"]["results"]
    assert {r["expectation_config"]["kwargs"].get("column") for r in users} >= {"n_valid", "n_test", "n_lost"}
    assert users[0]["result"]["element_count"] == 610
    assert (tmp_path / "docs" / "index.html").exists()
    assert list((tmp_path / "docs" / "validations").rglob("*.html"))


def test_row_order_inside_the_files_does_not_matter(ml_split, tmp_path):
    parts = copied(ml_split[1])
    parts["train"] = parts["train"].sample(frac=1.0, random_state=0)
    assert check(ml_split, tmp_path, parts)["success"]


def test_fails_when_a_user_has_two_test_rows(ml_split, tmp_path):
    parts = copied(ml_split[1])
    user = parts["test"]["user_id"].iloc[0]
    last_train = parts["train"][parts["train"]["user_id"] == user].index[-1]
    parts["test"] = pd.concat([parts["test"], parts["train"].loc[[last_train]]])
    parts["train"] = parts["train"].drop(index=last_train)
    assert_fails(check(ml_split, tmp_path, parts), "expect_column_values_to_be_between(n_test)",
                 "exactly one test row per user")


def test_fails_when_valid_is_later_than_test(ml_split, tmp_path):
    parts = copied(ml_split[1])
    valid, test = parts["valid"], parts["test"]
    row = int(np.flatnonzero(test["timestamp"].to_numpy() > valid["timestamp"].to_numpy())[0])
    # Swap whole rows between valid and test for one user: nothing lost, the order is wrong.
    valid.iloc[row], test.iloc[row] = test.iloc[row].copy(), valid.iloc[row].copy()
    results = check(ml_split, tmp_path, parts)
    assert_fails(results, "expect_column_pair_values_a_to_be_greater_than_b(test_ts_min, valid_ts_max)",
                 "test is not earlier than valid")
    assert len(validation.failures(results)) == 1


def test_fails_when_a_row_is_lost(ml_split, tmp_path):
    parts = copied(ml_split[1])
    parts["train"] = parts["train"].drop(index=parts["train"].index[10])
    assert_fails(check(ml_split, tmp_path, parts), "expect_column_values_to_be_between(n_lost)", "nothing lost")


def test_fails_when_a_row_is_invented(ml_split, tmp_path):
    parts = copied(ml_split[1])
    invented = parts["train"].iloc[[0]].assign(item_id="999999999")
    parts["train"] = pd.concat([invented, parts["train"]], ignore_index=True)
    assert_fails(check(ml_split, tmp_path, parts), "expect_column_values_to_be_between(n_invented)",
                 "nothing invented")


def test_fails_on_a_duplicate_row(ml_split, tmp_path):
    parts = copied(ml_split[1])
    parts["train"] = pd.concat([parts["train"], parts["train"].iloc[[5]]], ignore_index=True)
    results = check(ml_split, tmp_path, parts)
    assert_fails(results, "expect_column_values_to_be_between(n_duplicates)", "no duplicate")
    lost_or_invented = [line for line in validation.failures(results) if "n_lost" in line or "n_invented" in line]
    assert lost_or_invented == []


@pytest.mark.parametrize(("title", "expectation", "description"), [
    ("", "expect_column_value_lengths_to_be_between(title)", "titles are not empty"),
    ("   ", "expect_column_value_lengths_to_be_between(title)", "titles are not empty"),
    (None, "expect_column_values_to_not_be_null(title)", "every item in the split has a title"),
])
def test_fails_on_an_empty_title(ml_split, tmp_path, title, expectation, description):
    items = ml_split[2].copy()
    items.loc[3, "title"] = title
    assert_fails(check(ml_split, tmp_path, items=items), expectation, description)


def test_fails_when_an_item_of_the_split_is_missing_from_the_catalogue(ml_split, tmp_path):
    items = ml_split[2].drop(index=7)
    assert_fails(check(ml_split, tmp_path, items=items), "expect_column_values_to_not_be_null(title)",
                 "every item in the split has a title")


def test_failure_lines_quote_the_failing_users(ml_split, tmp_path):
    parts = copied(ml_split[1])
    user = parts["train"]["user_id"].iloc[10]
    parts["train"] = parts["train"].drop(index=parts["train"].index[10])
    line = next(line for line in validation.failures(check(ml_split, tmp_path, parts)) if "n_lost" in line)
    assert "1 of 610 rows fail" in line and f"'user_id': '{user}'" in line
