"""P5 pieces: prompts never hold the target, indexing is a seeded permutation / training-only, refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest

from genrec.models.p5 import model as p5
from genrec.errors import DataError
from genrec.config.params import P5Params, Params
from genrec.models.p5.model import build_index, split_records
from genrec.data.sequences import load_sequences

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)


def write_split(folder, sequences: dict[str, list[str]], extra_items: tuple[str, ...] = ()):
    """Leave-one-out parquet files (last item test, second-last valid) and a catalogue."""
    return tiny_genrec.write_split(folder, sequences, extra_items=extra_items, timestamp=lambda u, p: 100 + p)


SEQUENCES = {"a": ["10", "11", "12", "13", "14", "15"], "b": ["20", "10", "21", "22"], "c": ["12", "30", "31"]}


def test_prompt_never_contains_its_target(tmp_path):
    seqs = load_sequences(write_split(tmp_path, SEQUENCES))
    index = p5.random_index(seqs.item_ids, seed=3)
    numbers = np.array([index.ids[i] for i in seqs.item_ids])[seqs.item]
    for split in ("train", "valid", "test"):
        for limit in (None, 2):
            records = split_records(seqs, split, "all", numbers, limit)
            assert records
            for r in records:
                prompt = p5.build_prompt(p5.choose_phrasing(0, r.user_id, r.position), r.user_id, r.history)
                assert p5.item_token(r.target) not in prompt
                shown = [int(n) for n in re.findall(r"<item_(\d+)>", prompt)]
                user_rows = np.flatnonzero(np.array(seqs.user_ids)[seqs.user] == r.user_id)
                before = numbers[user_rows][:r.position]  # the user's items strictly before the target
                assert shown == list(before[-limit:] if limit else before)
                assert f"user_{r.user_id}" in prompt


def test_train_records_use_genrec_positions(tmp_path):
    seqs = load_sequences(write_split(tmp_path, SEQUENCES))
    numbers = np.arange(len(seqs.item)) + 1
    records = split_records(seqs, "train", 2, numbers, None)
    # a: train positions 0..3 -> targets 2, 3; b: train 0..1 -> target 1; c: one train item -> none.
    assert [(r.user_id, r.position) for r in records] == [("a", 2), ("a", 3), ("b", 1)]


def test_item_token_is_unambiguous():
    assert p5.item_token(1) not in p5.build_prompt(p5.PHRASINGS[0], "u", [10, 11, 21])


def test_random_index_is_a_seeded_permutation():
    items = [str(i) for i in range(500)]
    a = p5.random_index(items, seed=1)
    assert sorted(a.ids.values()) == list(range(1, 501))
    assert a.ids == p5.random_index(list(reversed(items)), seed=1).ids  # input order does not matter
    b = p5.random_index(items, seed=2)
    assert a.ids != b.ids
    assert [a.ids[i] for i in items] != list(range(1, 501))  # not the identity


def test_sequential_index_numbers_by_first_training_appearance():
    index = p5.sequential_index([["b", "a", "b"], ["c", "a"]], ["a", "b", "c", "z", "y"])
    assert index.ids == {"b": 1, "a": 2, "c": 3, "y": 4, "z": 5}


def test_sequential_index_ignores_valid_and_test(tmp_path):
    params = Params(p5=P5Params(indexing="sequential"))
    first = build_index(load_sequences(write_split(tmp_path / "1", SEQUENCES)), params.p5.indexing, params.p5.seed)
    changed = {u: s[:-2] + list(reversed(s[-2:])) for u, s in SEQUENCES.items()}  # swap valid and test
    second = build_index(load_sequences(write_split(tmp_path / "2", changed)), params.p5.indexing, params.p5.seed)
    assert first.ids == second.ids
    # training order: a's 10..13, then b's 20 (10 seen), then c's 12 (seen); the rest sorted by id.
    assert [i for i, _ in sorted(first.ids.items(), key=lambda kv: kv[1])][:5] == ["10", "11", "12", "13", "20"]


def test_index_must_number_items_once():
    with pytest.raises(ValueError, match="1..N"):
        p5.ItemIndex("random", 0, {"a": 1, "b": 1})


def test_index_not_covering_the_catalogue_is_refused(tmp_path):
    index = p5.random_index(["a", "b"], seed=0)
    index.check_covers(["b", "a"], tmp_path)
    with pytest.raises(DataError, match="not 1 catalogue items"):
        index.check_covers(["a", "b", "c"], tmp_path)


def test_tokenizer_holds_each_item_as_one_token(tmp_path):
    texts = [p5.build_prompt(p, "7", [3, 1, 12]) for p in p5.PHRASINGS]
    tokenizer = p5.train_word_tokenizer(texts, n_items=12)
    tokens = p5.item_token_ids(tokenizer, 12, tmp_path)
    assert len(set(tokens[1:].tolist())) == 12
    ids = tokenizer(texts[0])["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokens[12] in ids and tokens[2] not in ids
    with pytest.raises(DataError, match="does not hold 3 of 15 item ids"):
        p5.item_token_ids(tokenizer, 15, tmp_path)


def test_foreign_checkpoint_is_refused(tmp_path):
    meta = {"dataset": "ml-latest-small", "split_fingerprint": "abc"}
    p5.check_checkpoint(meta, "ml-latest-small", "abc", tmp_path)
    with pytest.raises(DataError, match="dataset 'ml-latest-small', evaluating 'ml-1m'"):
        p5.check_checkpoint(meta, "ml-1m", "abc", tmp_path)
    with pytest.raises(DataError, match="trained on split abc"):
        p5.check_checkpoint(meta, "ml-latest-small", "def", tmp_path)


def test_params_validation(root):
    from genrec.config.params import ParamsError, load_params

    assert Params().p5.backbone == "scratch" and Params().p5.indexing == "random"
    assert load_params(root / "params.yaml").p5 == P5Params()  # params.yaml states the defaults
    with pytest.raises(ParamsError, match="p5.indexing='leaky'"):
        load_params(root / "params.yaml", ["p5.indexing=leaky"])
    with pytest.raises(ParamsError, match="p5.d_model: expected a multiple"):
        load_params(root / "params.yaml", ["p5.d_model=30", "p5.num_heads=4"])


def test_fit_prompt_drops_the_oldest_items_first(tmp_path):
    phrasing = p5.PHRASINGS[0]
    tokenizer = p5.train_word_tokenizer([p5.build_prompt(phrasing, "7", [1, 2])], n_items=9)
    full = len(tokenizer(p5.build_prompt(phrasing, "7", [1, 2, 3, 4, 5]))["input_ids"])
    prompt = p5.fit_prompt(phrasing, "7", [1, 2, 3, 4, 5], tokenizer, full - 2)  # one item and one comma too long
    assert prompt == p5.build_prompt(phrasing, "7", [2, 3, 4, 5])
    with pytest.raises(DataError, match="without history exceeds 3 tokens"):
        p5.fit_prompt(phrasing, "7", [1, 2], tokenizer, 3)
