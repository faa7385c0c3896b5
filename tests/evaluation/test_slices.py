"""Slices and beyond-accuracy metrics, pinned by values computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from genrec.errors import DataError
from genrec.evaluation import slices


def test_head_is_the_items_making_the_first_share_of_interactions_and_tail_the_last():
    # 100 interactions; most first: a 50 (running 50 >= 20: head from a), then b 30, c 10, d 5, e 3, f 2, g 0.
    # From the least popular: g 0, f 2, e 3, d 5, c 10 (running 20 >= 20: tail up to c's 10).
    counts = {"a": 50, "b": 30, "c": 10, "d": 5, "e": 3, "f": 2, "g": 0}
    buckets, edges = slices.popularity_buckets(counts, head_share=0.2, tail_share=0.2)
    assert buckets == {"a": "head", "b": "torso", "c": "tail", "d": "tail", "e": "tail", "f": "tail", "g": "tail"}
    assert edges == {"head_min": 50, "tail_max": 10}


def test_items_with_equal_counts_are_ordered_by_item_id_and_head_wins_over_tail():
    # 21 interactions: a alone reaches 20% (4.2); from the bottom c (1) then b (10) reach it, so tail is c, b.
    buckets, edges = slices.popularity_buckets({"b": 10, "a": 10, "c": 1}, head_share=0.2, tail_share=0.2)
    assert buckets == {"a": "head", "b": "tail", "c": "tail"}
    assert edges == {"head_min": 10, "tail_max": 10}
    # One item holds nearly everything: it is head, and the tail never takes it.
    buckets, _ = slices.popularity_buckets({"a": 98, "b": 1, "c": 1}, head_share=0.2, tail_share=0.5)
    assert buckets == {"a": "head", "b": "tail", "c": "tail"}


def test_history_buckets_are_quantiles_of_the_training_lengths():
    # Lengths 1..8: quartile edges 2.75, 4.5, 6.25.
    of, ranges = slices.history_buckets({f"u{n}": n for n in range(1, 9)}, 4)
    assert of == {"u1": "q1", "u2": "q1", "u3": "q2", "u4": "q2", "u5": "q3", "u6": "q3", "u7": "q4", "u8": "q4"}
    assert ranges[0] == {"bucket": "q1", "min_length": 1, "max_length": 2, "users": 2}
    assert ranges[3] == {"bucket": "q4", "min_length": 7, "max_length": 8, "users": 2}


def test_many_equal_lengths_share_one_bucket_and_leave_others_empty():
    of, ranges = slices.history_buckets({"a": 3, "b": 3, "c": 3, "d": 9}, 4)  # edges 3, 3, 4.5
    assert of == {"a": "q1", "b": "q1", "c": "q1", "d": "q4"}
    assert [r["users"] for r in ranges] == [3, 0, 0, 1]


def test_beyond_accuracy_by_hand():
    # Catalogue a (6 training interactions), b (2), c (0), d (0): N = 8, |I| = 4.
    counts = {"a": 6, "b": 2, "c": 0, "d": 0}
    lists = [[["a"], ["b"], ["d"]], [["a"], ["c"]]]  # d is third: beyond k = 2
    out = slices.beyond_accuracy(lists, counts, k=2)
    assert out["coverage_at_2"] == pytest.approx(3 / 4)  # a, b, c
    assert out["arp_at_2"] == pytest.approx(((6 + 2) / 2 + (6 + 0) / 2) / 2)  # 3.5
    info = {n: -math.log2((n + 1) / (8 + 4)) for n in (6, 2, 0)}
    assert out["novelty_at_2"] == pytest.approx((info[6] + info[2] + info[6] + info[0]) / 4)
    # Recommended a 2, b 1, c 1, d 0 times: sorted 0, 1, 1, 2; sum (2i - 5) x_i = -1 + 1 + 6 = 6; 6 / (4 * 4).
    assert out["gini_at_2"] == pytest.approx(0.375)
    assert out["entries"] == 4


def test_a_shared_title_stands_for_each_of_its_items():
    out = slices.beyond_accuracy([[["a", "b"]]], {"a": 6, "b": 2, "c": 0}, k=10)
    assert out["coverage_at_10"] == pytest.approx(2 / 3)
    assert out["arp_at_10"] == pytest.approx(4.0)  # the mean of its items' popularity


@pytest.mark.parametrize("values, expected", [([3, 3, 3, 3], 0.0), ([0, 0, 0, 5], 0.75), ([1, 2, 3], 2 / 9),
                                              ([], None), ([0, 0], None)])
def test_gini(values, expected):
    assert slices.gini(values) == (pytest.approx(expected) if expected is not None else None)


def write_split(folder, train: list[tuple[str, str]], items: list[str]):
    folder.mkdir()
    pd.DataFrame(train, columns=["user_id", "item_id"]).to_parquet(folder / "train.parquet")
    pd.DataFrame({"item_id": items}).to_parquet(folder / "items.parquet")
    return folder


def test_the_split_gives_every_catalogue_item_its_training_count(tmp_path):
    folder = write_split(tmp_path / "p", [("u1", "a"), ("u1", "a"), ("u2", "b")], ["a", "b", "c"])
    split = slices.read_split(folder)
    assert split.item_counts == {"a": 2, "b": 1, "c": 0}  # a repeated interaction counts twice
    assert split.user_lengths == {"u1": 2, "u2": 1}
    assert split.interactions == 3


def test_a_missing_split_file_names_it(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(DataError, match="train.parquet"):
        slices.read_split(tmp_path / "p")


def analysis(models, split, **overrides):
    settings = dict(reference="genrec", ks=[5, 10], head_share=0.2, tail_share=0.2, cold_item_max=2,
                    history_count=2, samples=200, paired_samples=500, seed=0, paired_seed=0,
                    tested=["hr_at_10", "ndcg_at_10"])
    return slices.analyse(models, split, **{**settings, **overrides})


def test_every_user_falls_in_the_slices_of_its_target_and_history():
    # 16 interactions: h is head (10 >= 20%); from the bottom c 0, t1 1, t2 1 reach 10% (1.6): tail up to 1 each;
    # m (4) is torso; cold: fewer than 2, so t1, t2 and c.
    split = slices.Split(item_counts={"h": 10, "m": 4, "t1": 1, "t2": 1, "c": 0},
                         user_lengths={"u1": 1, "u2": 2, "u3": 3, "u4": 4})
    genrec = {"u1": ("h", [["h"]]), "u2": ("t1", [["x"], ["t1"]]), "u3": ("c", [["m"]]), "u4": ("m", [["m"]])}
    mostpop = {u: (target, [["h"]]) for u, (target, _) in genrec.items()}
    out = analysis({"genrec": genrec, "mostpop": mostpop}, split, tail_share=0.1)
    popularity = out["models"]["genrec"]["slices"]["popularity"]
    assert {name: popularity[name]["users"] for name in popularity} == {"head": 1, "torso": 1, "tail": 2, "cold": 2}
    assert popularity["head"]["hr_at_10"] == 1.0 and popularity["tail"]["hr_at_10"] == 0.5
    assert popularity["tail"]["ndcg_at_10"] == pytest.approx(0.5 / math.log2(3))
    assert popularity["cold"]["hr_at_10"] == 0.5  # u2 (t1, a hit) and u3 (c, a miss)
    history = out["models"]["genrec"]["slices"]["history"]
    assert {name: history[name]["users"] for name in history} == {"q1": 2, "q2": 2}
    assert out["models"]["mostpop"]["slices"]["popularity"]["torso"]["hr_at_10"] == 0.0
    assert out["buckets"]["popularity"]["head"] == {"items": 1, "interactions": 10}
    assert out["buckets"]["popularity"]["cold"] == {"items": 3}  # t1, t2, c: fewer than 2
    # Within the torso (u4 only) genrec hits and mostpop does not; within the head both hit.
    torso = out["paired"]["mostpop"]["popularity.torso"]["hr_at_10"]
    assert torso["diff"] == 1.0 and torso["users"] == 1
    assert out["paired"]["mostpop"]["popularity.head"]["hr_at_10"]["diff"] == 0.0
    assert "genrec" not in out["paired"]


def test_an_empty_slice_has_no_metrics_and_no_test():
    split = slices.Split(item_counts={"h": 10, "t": 1}, user_lengths={"u1": 1})
    out = analysis({"genrec": {"u1": ("h", [["h"]])}, "sasrec": {"u1": ("h", [["t"]])}}, split)
    assert out["models"]["genrec"]["slices"]["popularity"]["tail"] == {"users": 0}
    assert "popularity.tail" not in out["paired"]["sasrec"]


def test_run_metrics_are_prefixed_by_split_and_slice():
    split = slices.Split(item_counts={"h": 10, "t": 1}, user_lengths={"u1": 1, "u2": 5})
    out = analysis({"genrec": {"u1": ("h", [["h"]]), "u2": ("t", [["h"]])}}, split)
    metrics = slices.run_metrics(out["models"]["genrec"], "test")
    assert metrics["test.slice.popularity.head.hr_at_10"] == 1.0
    assert metrics["test.slice.popularity.head.users"] == 1.0
    assert metrics["test.slice.popularity.tail.hr_at_10_ci95_high"] == 0.0
    assert metrics["test.coverage_at_10"] == 0.5 and metrics["test.gini_at_10"] == pytest.approx(0.5)
    assert not any(".torso." in name for name in metrics if not name.endswith(".users"))  # empty: users only
