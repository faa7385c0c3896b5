"""Catalogue grouping and the tensorised title trie: paths, allowed tokens, exclusions, bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from genrec.decoding.trie import Catalogue, advance, allowed_tokens, build_title_trie, excluded_node_keys

EOS = 1
TITLES = [(5, 6, 7), (5, 6), (5, 8), (9,)]  # (5, 6) is a prefix of (5, 6, 7)


def walk(trie, tokens):
    node = torch.tensor([0])
    for t in tokens:
        node = advance(trie, node, torch.tensor([t]))
    return int(node)


def allowed(trie, node, users=None, closed=None):
    rows, tokens = allowed_tokens(trie, torch.tensor([node]), users, closed)
    assert rows.tolist() == [0] * len(tokens)
    return set(tokens.tolist())


def test_catalogue_groups_shared_titles():
    items = pd.DataFrame({"item_id": ["1", "2", "3", "4"], "title": ["B (1999)", "A (1990)", "B (1999)", "C"]})
    cat = Catalogue.from_items(items)
    assert cat.titles == ("A (1990)", "B (1999)", "C")
    assert cat.item_ids == (("2",), ("1", "3"), ("4",))
    assert cat.shared_titles() == 1
    assert cat.covered_titles(["1"]) == []  # item 3 still carries "B (1999)"
    assert cat.covered_titles(["1", "3", "4", "99"]) == [1, 2]
    assert cat.find_title("  B  (1999) ") == 1 and cat.find_title("B") is None
    with pytest.raises(ValueError, match="empty"):
        Catalogue.from_items(items.iloc[:0])


def test_every_title_ends_at_its_own_leaf():
    trie = build_title_trie(TITLES, EOS)
    assert trie.max_length == 4
    for index, title in enumerate(TITLES):
        leaf = walk(trie, [*title, EOS])
        assert int(trie.node_title[leaf]) == index
        assert allowed(trie, leaf) == {EOS}  # only EOS after a whole title, as HF sees it
        assert walk(trie, [*title, EOS, EOS]) == leaf
    assert int(trie.node_title[walk(trie, [5, 6])]) == -1  # a prefix is not a leaf
    assert walk(trie, [5, 7]) == trie.dead and walk(trie, [5, 7, 6]) == trie.dead
    assert walk(trie, [100]) == trie.dead  # a token beyond every trie token


def test_allowed_tokens_per_node():
    trie = build_title_trie(TITLES, EOS)
    assert allowed(trie, 0) == {5, 9}
    assert allowed(trie, walk(trie, [5])) == {6, 8}
    assert allowed(trie, walk(trie, [5, 6])) == {7, EOS}
    assert allowed(trie, trie.dead) == set()


def test_exclusions_close_only_prefixes_with_nothing_left():
    trie = build_title_trie(TITLES, EOS)
    closed = excluded_node_keys(trie, [[1], [0, 1, 1], [0, 1, 2, 3]])
    user = lambda u: torch.tensor([u])  # noqa: E731
    # user 0 excludes (5, 6): EOS after it closes, the path to (5, 6, 7) stays
    assert allowed(trie, walk(trie, [5, 6]), user(0), closed) == {7}
    assert allowed(trie, 0, user(0), closed) == {5, 9}
    # user 1 excludes (5, 6, 7) and (5, 6): the node (5, 6) closes, (5, 8) remains
    assert allowed(trie, walk(trie, [5]), user(1), closed) == {8}
    # user 2 excludes everything: nothing can start
    assert allowed(trie, 0, user(2), closed) == set()
    assert excluded_node_keys(trie, [[], []]).numel() == 0


@pytest.mark.parametrize("titles, message", [
    ([], "empty"), ([(5,), ()], "empty"), ([(5, EOS)], "contain EOS"), ([(5, 6), (5, 6)], "same tokens"),
])
def test_bad_catalogues_are_refused(titles, message):
    with pytest.raises(ValueError, match=message):
        build_title_trie(titles, EOS)


def test_allowed_tokens_for_many_rows_at_once():
    trie = build_title_trie(TITLES, EOS)
    nodes = torch.tensor([walk(trie, [5, 6]), trie.dead, 0, walk(trie, [9, EOS])])
    rows, tokens = allowed_tokens(trie, nodes)
    assert sorted(zip(rows.tolist(), tokens.tolist())) == [(0, EOS), (0, 7), (2, 5), (2, 9), (3, EOS)]
