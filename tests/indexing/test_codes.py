"""Item codes: the one-code indexes, collision separation, the uniqueness check and the stats."""

from __future__ import annotations

import math

import pytest

from genrec.errors import DataError
from genrec.indexing.codes import (ItemCodes, check_codes, code_stats, code_token, random_codes, separate_collisions,
                                   sequential_codes)


def test_random_codes_are_a_seeded_permutation():
    items = [str(i) for i in range(500)]
    a = random_codes(items, seed=1)
    assert sorted(c for (c,) in a.codes.values()) == list(range(500)) and a.level_sizes == (500,)
    assert a.codes == random_codes(list(reversed(items)), seed=1).codes  # input order does not matter
    assert a.codes != random_codes(items, seed=2).codes
    assert [a.codes[i][0] for i in items] != list(range(500))  # not the identity
    check_codes(a, items, "codes.json")


def test_sequential_codes_number_by_first_training_appearance():
    codes = sequential_codes([["b", "a", "b"], ["c", "a"]], ["a", "b", "c", "z", "y"])
    assert codes.codes == {"b": (0,), "a": (1,), "c": (2,), "y": (3,), "z": (4,)}
    assert codes.leaky and not random_codes(["a"], 0).leaky


def test_collisions_get_a_last_code():
    codes = separate_collisions("semantic", {"x": (1, 2), "w": (1, 2), "v": (0, 2), "u": (1, 2)}, [2, 3])
    assert codes.codes == {"u": (1, 2, 0), "v": (0, 2, 0), "w": (1, 2, 1), "x": (1, 2, 2)}
    assert codes.level_sizes == (2, 3, 3)  # three items share (1, 2)
    check_codes(codes, "uvwx", "codes.json")
    stats = code_stats(codes, 1.0)
    assert stats["collision_rate"] == 0.75 and stats["max_items_per_prefix"] == 3 and stats["depth"] == 3
    assert stats["levels"]["a"] == {"size": 2, "used": 2, "use": 1.0, "entropy_bits": round(-(0.25 * math.log2(0.25)
                                    + 0.75 * math.log2(0.75)), 4), "max_entropy_bits": 1.0}
    assert stats["levels"]["b"]["used"] == 1 and stats["levels"]["b"]["entropy_bits"] == 0.0


def test_the_check_refuses_what_does_not_name_the_catalogue():
    good = ItemCodes("semantic", {"a": (0, 0), "b": (0, 1)}, (1, 2))
    check_codes(good, ["a", "b"], "codes.json")
    cases = [
        (good, ["a", "b", "c"], "1 catalogue items have no codes"),
        (good, ["a"], "1 coded items are not in the catalogue"),
        (ItemCodes("semantic", {"a": (0, 0), "b": (0, 0)}, (1, 2)), ["a", "b"], r"1 code tuples name several items"),
        (ItemCodes("semantic", {"a": (0, 0), "b": (0,)}, (1, 2)), ["a", "b"], "item 'b' has 1 codes, expected 2"),
        (ItemCodes("semantic", {"a": (0, 0), "b": (0, 2)}, (1, 2)), ["a", "b"], "code 2 at level 1, outside 0..1"),
    ]
    for codes, catalogue, message in cases:
        with pytest.raises(DataError, match=message):
            check_codes(codes, catalogue, "codes.json")


def test_tokens_and_round_trip(tmp_path):
    codes = ItemCodes("collaborative", {"a": (12, 7, 0), "b": (1, 0, 3)}, (13, 8, 4), {"seed": 3})
    assert codes.text("a") == "<a_12><b_7><c_0>" and code_token(1, 7) == "<b_7>"
    assert len(codes.vocabulary()) == 13 + 8 + 4 and len(set(codes.vocabulary())) == 25
    codes.save(tmp_path)
    assert ItemCodes.load(tmp_path) == codes
    with pytest.raises(DataError, match="no codes.json"):
        ItemCodes.load(tmp_path / "missing")
