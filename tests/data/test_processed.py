"""genrec.data.processed: the one reader of the split's files, and the views built on it agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tiny_genrec as tiny
from genrec.data import processed
from genrec.data.sequences import load_sequences, read_histories, read_titles
from genrec.errors import DataError
from genrec.evaluation.scoring import read_split
from genrec.models.genrec.recommend import user_history


def test_read_part_keeps_file_order_and_types(tmp_path):
    folder = tiny.write_split(tmp_path / "split")
    frame = processed.read_part(folder, "train", ["user_id", "position"])
    assert list(frame.columns) == ["user_id", "position"]
    assert frame["position"].dtype == np.int64
    assert frame.equals(pd.read_parquet(folder / "train.parquet")[["user_id", "position"]])


def test_read_part_table_dictionary_encodes_strings(tmp_path):
    folder = tiny.write_split(tmp_path / "split")
    table = processed.read_part_table(folder, "test", ["user_id", "position"])
    assert str(table.schema.field("user_id").type).startswith("dictionary")
    assert table["position"].to_pylist() == [tiny.SEQUENCE - 1] * tiny.USERS


@pytest.mark.parametrize("read", [processed.read_part, processed.read_part_table])
def test_missing_file_names_the_file_and_the_fix(tmp_path, read):
    with pytest.raises(DataError, match=r"valid.parquet: not found\. run `genrec split` first"):
        read(tmp_path, "valid", ["user_id"])


@pytest.mark.parametrize("read", [processed.read_part, processed.read_part_table])
def test_missing_column_names_the_file_the_column_and_the_fix(tmp_path, read):
    folder = tiny.write_split(tmp_path / "split")
    with pytest.raises(DataError, match=r"items.parquet, column 'genre': missing columns \['genre'\]\. "
                                        r"expected columns \['item_id', 'genre'\]; rerun `genrec split`"):
        read(folder, "items", ["item_id", "genre"])


def test_missing_values_are_an_error_in_the_arrow_view(tmp_path):
    folder = tiny.write_split(tmp_path / "split")
    pd.DataFrame({"item_id": ["0", None], "title": ["a", "b"]}).to_parquet(folder / "items.parquet")
    with pytest.raises(DataError, match=r"items.parquet, column 'item_id': 1 missing values"):
        processed.read_part_table(folder, "items", ["item_id", "title"])


def test_unknown_part_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown part 'interactions'"):
        processed.part_path(tmp_path, "interactions")


def test_every_view_reads_the_same_sequences(tmp_path):
    folder = tiny.write_split(tmp_path / "split")
    titles = read_titles(folder)
    seqs = load_sequences(folder)
    data = read_split(folder)
    before_test = read_histories(folder, before="test")
    for u, user in enumerate(seqs.user_ids):
        rows = slice(seqs.first[u], seqs.first[u + 1] if u + 1 < len(seqs.first) else len(seqs.item))
        items = [seqs.item_ids[i] for i in seqs.item[rows]]
        assert user_history(folder, user) == [titles[i] for i in items]
        assert before_test[user] == items[:-1]
        coded = [*data.train[data.users.index(user)], data.valid[data.users.index(user)]]
        assert [data.item_ids[c - 1] for c in coded] == items[:-1]
