"""P5 pieces: prompts never hold the target, code tokens are whole tokens, refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest

from genrec.models.p5 import model as p5
from genrec.errors import DataError
from genrec.config.params import P5Params, Params
from genrec.indexing.codes import ItemCodes, random_codes
from genrec.models.p5.model import split_records
from genrec.data.sequences import load_sequences

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)


def write_split(folder, sequences: dict[str, list[str]], extra_items: tuple[str, ...] = ()):
    """Leave-one-out parquet files (last item test, second-last valid) and a catalogue."""
    return tiny_genrec.write_split(folder, sequences, extra_items=extra_items, timestamp=lambda u, p: 100 + p)


SEQUENCES = {"a": ["10", "11", "12", "13", "14", "15"], "b": ["20", "10", "21", "22"], "c": ["12", "30", "31"]}


def words_of(seqs, seed=3):
    return p5.item_words(random_codes(seqs.item_ids, seed), seqs.item_ids, "codes.json")


def test_prompt_never_contains_its_target(tmp_path):
    seqs = load_sequences(write_split(tmp_path, SEQUENCES))
    words = words_of(seqs)
    for split in ("train", "valid", "test"):
        for limit in (None, 2):
            records = split_records(seqs, split, "all", limit)
            assert records
            for r in records:
                prompt = p5.build_prompt(p5.choose_phrasing(0, r.user_id, r.position), r.user_id, r.history, words)
                assert words[r.target] not in prompt
                shown = re.findall(r"<a_\d+>", prompt)
                user_rows = np.flatnonzero(np.array(seqs.user_ids)[seqs.user] == r.user_id)
                before = [words[n] for n in seqs.item[user_rows][:r.position]]  # the items strictly before it
                assert shown == (before[-limit:] if limit else before)
                assert f"user_{r.user_id}" in prompt


def test_train_records_use_genrec_positions(tmp_path):
    seqs = load_sequences(write_split(tmp_path, SEQUENCES))
    records = split_records(seqs, "train", 2, None)
    # a: train positions 0..3 -> targets 2, 3; b: train 0..1 -> target 1; c: one train item -> none.
    assert [(r.user_id, r.position) for r in records] == [("a", 2), ("a", 3), ("b", 1)]


def test_code_token_is_unambiguous():
    words = ["<a_10><b_2>", "<a_11><b_0>", "<a_1><b_21>"]
    prompt = p5.build_prompt(p5.PHRASINGS[0], "u", [0, 1, 2], words)
    assert "<a_1>" in prompt and prompt.count("<a_1>") == 1 and "<b_2>" in prompt and prompt.count("<b_2>") == 1


def test_index_not_covering_the_catalogue_is_refused(tmp_path):
    codes = random_codes(["a", "b"], seed=0)
    assert sorted(p5.item_words(codes, ["b", "a"], tmp_path)) == ["<a_0>", "<a_1>"]
    with pytest.raises(DataError, match="1 catalogue items have no codes"):
        p5.item_words(codes, ["a", "b", "c"], tmp_path)


def test_tokenizer_holds_each_code_as_one_token(tmp_path):
    codes = ItemCodes("semantic", {str(i): (i // 4, i % 4) for i in range(12)}, (3, 4))
    items = sorted(codes.codes, key=int)
    words = p5.item_words(codes, items, tmp_path)
    texts = [p5.build_prompt(p, "7", [3, 1, 11], words) for p in p5.PHRASINGS]
    tokenizer = p5.train_word_tokenizer(texts, codes.vocabulary())
    code_ids = p5.code_token_ids(tokenizer, codes, items, tmp_path)
    assert code_ids.shape == (12, 2) and len(set(map(tuple, code_ids.tolist()))) == 12
    assert len(set(code_ids.flatten().tolist())) == 3 + 4  # level tokens are shared across items
    ids = tokenizer(texts[0])["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert set(code_ids[11]) <= set(ids) and code_ids[5][0] not in ids  # item 5: <a_1><b_1>, a_1 unused
    wider = ItemCodes("semantic", {**codes.codes, "12": (3, 0)}, (4, 4))
    with pytest.raises(DataError, match="does not hold 1 of 8 code tokens"):
        p5.code_token_ids(tokenizer, wider, [*items, "12"], tmp_path)


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
    assert load_params(root / "params.yaml", ["p5.indexing=semantic"]).p5.indexing == "semantic"
    with pytest.raises(ParamsError, match="p5.indexing='leaky'"):
        load_params(root / "params.yaml", ["p5.indexing=leaky"])
    with pytest.raises(ParamsError, match="p5.d_model: expected a multiple"):
        load_params(root / "params.yaml", ["p5.d_model=30", "p5.num_heads=4"])


def test_fit_prompt_drops_the_oldest_items_first(tmp_path):
    phrasing = p5.PHRASINGS[0]
    words = [f"<a_{n}>" for n in range(9)]
    tokenizer = p5.train_word_tokenizer([p5.build_prompt(phrasing, "7", [1, 2], words)], words)
    full = len(tokenizer(p5.build_prompt(phrasing, "7", [1, 2, 3, 4, 5], words))["input_ids"])
    prompt = p5.fit_prompt(phrasing, "7", [1, 2, 3, 4, 5], words, tokenizer, full - 2)  # an item and a comma over
    assert prompt == p5.build_prompt(phrasing, "7", [2, 3, 4, 5], words)
    with pytest.raises(DataError, match="without history exceeds 3 tokens"):
        p5.fit_prompt(phrasing, "7", [1, 2], words, tokenizer, 3)
