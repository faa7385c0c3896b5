"""Unit tests for genrec.data.audit: each leakage count on a tiny split built to show it, and on clean data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_genrec
from genrec.data import audit
from genrec.data.sequences import load_sequences
from genrec.errors import DataError
from genrec.indexing.codes import ItemCodes, from_numbers

# Titles that never stand inside one another: "Film 1 (2001)" is no part of "Film 11 (2011)".
CLEAN = {f"u{u}": [str(3 * u), str(3 * u + 1), str(3 * u + 2)] for u in range(4)}
TITLES = {str(i): f"Film {i} (20{i:02d})" for i in range(12)}


def split(tmp_path, sequences=CLEAN, titles=TITLES, **kwargs):
    return load_sequences(tiny_genrec.write_split(tmp_path / "processed", sequences, dict(titles), **kwargs))


def test_title_leak_tells_repeats_shared_titles_and_substrings_apart():
    history, titles = ["1", "2"], ["Heat (1995)", "Primal Fear (1996)"]
    text = "\n".join(titles)
    assert audit.title_leak("1", "Heat (1995)", history, titles, text) == "repeat"
    assert audit.title_leak("9", "Heat (1995)", history, titles, text) == "shared_title"  # another item, same title
    assert audit.title_leak("9", "Fear (1996)", history, titles, text) == "substring"
    assert audit.title_leak("9", "Casino (1995)", history, titles, text) is None


def test_a_comma_joined_history_can_show_a_title_across_two_titles():
    titles = ["Toys, A", "B (1999)"]
    assert audit.title_leak("9", "A, B (1999)", ["1", "2"], titles, ", ".join(titles)) == "substring"
    assert audit.leak("9", "A, B (1999)", ["1", "2"], titles, ", ".join(titles)).shown == ""
    assert audit.title_leak("9", "A, B (1999)", ["1", "2"], titles, "\n".join(titles)) is None


def test_follows_means_the_same_prefix_and_the_last_code_plus_one():
    codes = np.array([[0, 4], [0, 5], [1, 5], [0, 6]])
    history, target = np.array([0, 0, 1, 0]), np.array([1, 2, 3, 3])
    assert audit.follows(codes, history, target).tolist() == [True, False, True, False]
    one_level = np.array([[7], [8], [3]])
    assert audit.follows(one_level, np.array([0, 1, 0]), np.array([1, 2, 2])).tolist() == [True, False, False]


def test_an_index_numbered_in_sequence_order_trips_consecutive_ids(tmp_path):
    seqs = split(tmp_path)
    numbered = from_numbers("sequential", {str(i): i for i in range(12)})  # each user's items follow each other
    counts = audit.consecutive_ids(seqs, numbered, tmp_path / "codes.json")
    assert (counts["valid"], counts["test"], counts["users"]) == (4, 4, 4)
    assert counts["leaky"] and counts["chance"] == pytest.approx(1 / 12)
    reversed_ = from_numbers("random", {str(i): 11 - i for i in range(12)})  # each user's items count down
    clean = audit.consecutive_ids(seqs, reversed_, tmp_path / "codes.json")
    assert (clean["valid"], clean["test"]) == (0, 0)


def test_an_index_missing_an_item_of_the_split_is_refused(tmp_path):
    seqs = split(tmp_path)
    partial = from_numbers("random", {str(i): i for i in range(11)})
    with pytest.raises(DataError, match=r"codes.json: random index: 1 items of the split have no code \(e.g. '11'\)"):
        audit.consecutive_ids(seqs, partial, tmp_path / "codes.json")


def test_timestamp_ties_at_the_boundary_are_counted(tmp_path):
    # u0: valid and test at the same second; u1: all three at one second; u2, u3: distinct seconds.
    stamps = {0: [10, 20, 20], 1: [5, 5, 5]}
    seqs = split(tmp_path, timestamp=lambda u, p: stamps[u][p] if u in stamps else 100 * u + p, shuffle=True)
    timestamps = audit.read_timestamps(tmp_path / "processed", seqs)
    assert audit.timestamp_ties(seqs, timestamps) == {"valid": 1, "test": 2}


def test_distinct_timestamps_have_no_ties(tmp_path):
    seqs = split(tmp_path, shuffle=True)
    timestamps = audit.read_timestamps(tmp_path / "processed", seqs)
    assert timestamps.tolist() == sorted(timestamps.tolist())  # rows of `seqs` order, whatever the file order
    assert audit.timestamp_ties(seqs, timestamps) == {"valid": 0, "test": 0}


def test_targets_in_history_follow_the_split_stage_rule(tmp_path):
    repeated = {**CLEAN, "u0": ["0", "1", "0"], "u1": ["3", "3", "5"], "u2": ["6", "7", "7"]}
    assert audit.targets_in_history(split(tmp_path, repeated)) == {"valid": 1, "test": 2}
    assert audit.targets_in_history(split(tmp_path / "clean")) == {"valid": 0, "test": 0}


def test_history_leaks_count_shared_titles_apart_from_repeats(tmp_path):
    titles = {**TITLES, "1": "Fear (1996)", "4": "Primal Fear (1996)", "7": TITLES["6"]}
    sequences = {**CLEAN, "u0": ["0", "2", "0"],  # test: the item itself again (repeat)
                 "u1": ["4", "5", "1"],  # test: "Fear (1996)" inside "Primal Fear (1996)" (substring)
                 "u2": ["6", "7", "8"]}  # valid: item 7 has item 6's title (shared title)
    seqs = split(tmp_path, sequences, titles)
    test, valid = audit.history_leaks(seqs, "test"), audit.history_leaks(seqs, "valid")
    assert {user: found.kind for user, found in test.items()} == {"u0": "repeat", "u1": "substring"}
    assert test["u1"] == audit.Leak("substring", "Fear (1996)", "Primal Fear (1996)")
    assert {user: found.kind for user, found in valid.items()} == {"u2": "shared_title"}
    assert audit.leak_counts(4, test) == {"targets": 4, "repeat": 1, "shared_title": 0, "substring": 1}
    assert audit.history_leaks(split(tmp_path / "clean"), "test") == {}


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def record(user, target, history, titles=TITLES):
    return {"user_id": user, "target_item_id": target, "history_item_ids": history,
            "history_titles": [titles[i] for i in history], "input": "\n".join(titles[i] for i in history)}


def test_record_leaks_read_the_prompt_text(tmp_path):
    titles = {**TITLES, "5": TITLES["2"]}
    path = write_records(tmp_path / "test.jsonl", [record("u0", "2", ["0", "1"], titles),
                                                   record("u1", "2", ["5", "1"], titles),
                                                   record("u2", "2", ["2"], titles)])
    count, leaks = audit.record_leaks(path, titles)
    assert count == 3 and {user: found.kind for user, found in leaks.items()} == {"u1": "shared_title", "u2": "repeat"}


@pytest.mark.parametrize("line, message", [
    ("{not json", r"test.jsonl, row 2: not JSON"),
    (json.dumps({"user_id": "u1", "target_item_id": "1"}), r"test.jsonl, row 2, column 'history_item_ids': missing"),
    (json.dumps({**record("u1", "1", ["0"]), "history_titles": []}), r"row 2, column 'history_titles'"),
    (json.dumps(record("u1", "99", [])), r"row 2, column 'target_item_id': target item '99' is not in the split"),
])
def test_a_bad_record_names_its_file_row_and_column(tmp_path, line, message):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(record("u0", "2", ["0"])) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        audit.record_leaks(path, TITLES)


def test_missing_records_say_which_stage_writes_them(tmp_path):
    with pytest.raises(DataError, match=r"valid.jsonl: not found. rerun `genrec prompts`"):
        audit.record_leaks(tmp_path / "valid.jsonl", TITLES)


def test_item_codes_round_trip_through_the_index_reader(tmp_path):
    """The audit reads indexes as `genrec index` writes them."""
    from_numbers("random", {str(i): 11 - i for i in range(12)}).save(tmp_path / "random")
    loaded = ItemCodes.load(tmp_path / "random")
    assert audit.code_matrix(loaded, ["0", "11"], tmp_path).tolist() == [[11], [0]]
