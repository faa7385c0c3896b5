"""The catalogue as a token prefix trie, stored as flat tensors so beam search looks it up in bulk.

Titles, not item ids, are what the model generates, and several items can share a title (5 titles
in ml-latest-small belong to two movieIds each). `Catalogue` therefore holds one entry per
distinct title with the list of its item ids, and the trie has one leaf per distinct title: a
generated title is a hit when its item ids contain the target.

Trie layout (CSR): node 0 is the root; the children of node n are the edges
`offsets[n]:offsets[n+1]`, sorted by token; each title's path ends with an EOS edge into its leaf,
and a leaf's only edge is EOS back to itself (what HF's search sees after a finished title).
Node `n_nodes` is a dead node without children: beams whose score is -inf are parked there.
`edge_keys = parent * key_base + token` is sorted, so one `searchsorted` advances every beam at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np
import torch


def normalise_text(text: str) -> str:
    """Strip and collapse whitespace, as ingest does to titles."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Catalogue:
    """Distinct titles (sorted) and, for each, the ids of the items that carry it."""

    titles: tuple[str, ...]
    item_ids: tuple[tuple[str, ...], ...]

    @classmethod
    def from_items(cls, items) -> Catalogue:
        """Group an items table (a pandas DataFrame with item_id and title) by title.

        Raises:
            ValueError: when the table is empty (there is nothing to recommend).
        """
        if items.empty:
            raise ValueError("the catalogue is empty: items.parquet has no rows")
        groups = items.astype({"item_id": str, "title": str}).groupby("title", sort=True)["item_id"]
        titles, ids = zip(*((title, tuple(sorted(group))) for title, group in groups))
        return cls(titles=tuple(titles), item_ids=tuple(ids))

    def shared_titles(self) -> int:
        """Number of titles carried by more than one item."""
        return sum(len(ids) > 1 for ids in self.item_ids)

    @cached_property
    def title_of_item(self) -> dict[str, int]:
        """Title index of every item id."""
        return {item: t for t, ids in enumerate(self.item_ids) for item in ids}

    @cached_property
    def _by_text(self) -> dict[str, int]:
        return {normalise_text(t): i for i, t in enumerate(self.titles)}

    def find_title(self, text: str) -> int | None:
        """Index of the title equal to `text` after whitespace normalisation (the paper's exact match)."""
        return self._by_text.get(normalise_text(text))

    def covered_titles(self, item_ids: Iterable[str]) -> list[int]:
        """Sorted indices of the titles all of whose items are in `item_ids` (what exclusion removes).

        A shared title stays available until the user has every item carrying it.
        """
        owned = set(item_ids)
        touched = {self.title_of_item[i] for i in owned if i in self.title_of_item}
        return sorted(t for t in touched if owned.issuperset(self.item_ids[t]))


@dataclass(frozen=True)
class TitleTrie:
    """Token prefix trie over the catalogue titles (each path ends with EOS), as tensors."""

    offsets: torch.Tensor         # [n_nodes + 2] int64: children of n are edges offsets[n]:offsets[n+1]
    edge_tokens: torch.Tensor     # [n_edges] int64, sorted within each parent
    edge_children: torch.Tensor   # [n_edges] int64
    edge_keys: torch.Tensor       # [n_edges] int64: parent * key_base + token, sorted
    node_title: torch.Tensor      # [n_nodes + 1] int64: title index of a leaf, -1 elsewhere
    title_paths: torch.Tensor     # [n_titles, max_length] int64: nodes below the root on each path, -1 padded
    subtree_titles: torch.Tensor  # [n_nodes + 1] int64: leaves at or below each node
    key_base: int
    eos_token_id: int
    max_length: int               # tokens of the longest title, EOS included

    @property
    def n_nodes(self) -> int:
        return self.node_title.numel() - 1

    @property
    def dead(self) -> int:
        """Id of the node without children that -inf beams are parked on."""
        return self.n_nodes

    def to(self, device: torch.device | str) -> TitleTrie:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return TitleTrie(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})


def build_title_trie(token_ids: Sequence[Sequence[int]], eos_token_id: int) -> TitleTrie:
    """Trie over title token sequences; title i's leaf is reached by `token_ids[i] + [eos]`.

    Raises:
        ValueError: for no titles, an empty token sequence, one that already contains EOS, or two
            titles with the same tokens (the model could not tell them apart).
    """
    if not token_ids:
        raise ValueError("the catalogue is empty: no titles to build a trie from")
    children: list[dict[int, int]] = [{}]
    paths = []
    for title, ids in enumerate(token_ids):
        if not ids or eos_token_id in ids:
            raise ValueError(f"title {title}: token ids {list(ids)!r} are empty or contain EOS {eos_token_id}")
        node, path = 0, []
        for token in ids:
            node = _child(children, node, token)
            path.append(node)
        if eos_token_id in children[node]:
            raise ValueError(f"title {title} has the same tokens as an earlier title: {list(ids)!r}")
        path.append(_child(children, node, eos_token_id))
        paths.append(path)
    for path in paths:
        # After a whole title only EOS may follow, as with a `prefix_allowed_tokens_fn` that never
        # returns an empty list (HF raises on one). HF keeps such post-EOS beams as fillers.
        children[path[-1]][eos_token_id] = path[-1]
    return _to_tensors(children, paths, eos_token_id)


def _child(children: list[dict[int, int]], node: int, token: int) -> int:
    if token not in children[node]:
        children[node][token] = len(children)
        children.append({})
    return children[node][token]


def _to_tensors(children: list[dict[int, int]], paths: list[list[int]], eos_token_id: int) -> TitleTrie:
    n = len(children)
    parents = np.repeat(np.arange(n), [len(c) for c in children])
    tokens = np.fromiter((t for c in children for t in c), dtype=np.int64, count=len(parents))
    kids = np.fromiter((k for c in children for k in c.values()), dtype=np.int64, count=len(parents))
    order = np.lexsort((tokens, parents))
    parents, tokens, kids = parents[order], tokens[order], kids[order]
    offsets = np.zeros(n + 2, dtype=np.int64)
    np.add.at(offsets, parents + 1, 1)
    offsets = np.cumsum(offsets)  # the dead node n gets the empty range offsets[n]:offsets[n+1]
    key_base = int(tokens.max()) + 1
    max_length = max(len(p) for p in paths)
    title_paths = np.full((len(paths), max_length), -1, dtype=np.int64)
    node_title = np.full(n + 1, -1, dtype=np.int64)
    for title, path in enumerate(paths):
        title_paths[title, :len(path)] = path
        node_title[path[-1]] = title
    subtree = np.bincount(title_paths[title_paths >= 0], minlength=n + 1)
    subtree[0] = len(paths)
    as_tensor = torch.from_numpy
    return TitleTrie(offsets=as_tensor(offsets), edge_tokens=as_tensor(tokens), edge_children=as_tensor(kids),
                     edge_keys=as_tensor(parents * key_base + tokens), node_title=as_tensor(node_title),
                     title_paths=as_tensor(title_paths), subtree_titles=as_tensor(subtree), key_base=key_base,
                     eos_token_id=eos_token_id, max_length=max_length)


def advance(trie: TitleTrie, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Child of each node along each token; the dead node where no such edge exists."""
    keys = nodes * trie.key_base + tokens
    pos = torch.searchsorted(trie.edge_keys, keys).clamp(max=trie.edge_keys.numel() - 1)
    found = (trie.edge_keys[pos] == keys) & (tokens < trie.key_base) & (nodes != trie.dead)
    return torch.where(found, trie.edge_children[pos], torch.full_like(nodes, trie.dead))


def excluded_node_keys(trie: TitleTrie, excluded_titles: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sorted keys `user * (n_nodes + 1) + node` of the nodes each user may not enter.

    A node is closed to a user when every title below it is excluded for that user, so beams
    never waste a step on a prefix that can only end in an excluded title. With exclusions the
    search equals HF beam search over that user's own trie (the catalogue minus the excluded titles).
    """
    width = trie.n_nodes + 1
    keys = []
    for user, titles in enumerate(excluded_titles):
        if not len(titles):
            continue
        unique = torch.unique(torch.as_tensor(list(titles), dtype=torch.long))  # a title counts once
        nodes = trie.title_paths[unique.to(trie.title_paths.device)].flatten()
        nodes, counts = torch.unique(nodes[nodes >= 0], return_counts=True)
        closed = nodes[counts == trie.subtree_titles[nodes]]
        keys.append(user * width + closed)
    if not keys:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(keys)).values


def allowed_tokens(trie: TitleTrie, nodes: torch.Tensor, users: torch.Tensor | None = None,
                   closed_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) pairs of every token each row's node may continue with.

    Args:
        trie: The catalogue trie (on the device of `nodes`).
        nodes: [rows] trie node of each beam.
        users: [rows] user (index into the exclusion lists) of each beam; with `closed_keys`.
        closed_keys: From `excluded_node_keys`; children closed to a row's user are left out.
    """
    starts, ends = trie.offsets[nodes], trie.offsets[nodes + 1]
    counts = ends - starts
    # The output size is data-dependent: read it once (one host sync) and hand it to both repeat_interleaves,
    # which would each read it otherwise.
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    edges = (torch.arange(total, device=nodes.device)
             + torch.repeat_interleave(starts - first, counts, output_size=total))
    if closed_keys is not None and closed_keys.numel():
        keys = users[rows] * (trie.n_nodes + 1) + trie.edge_children[edges]
        pos = torch.searchsorted(closed_keys, keys).clamp(max=closed_keys.numel() - 1)
        open_ = (closed_keys[pos] != keys).nonzero().flatten()  # one sync for both selections below
        rows, edges = rows[open_], edges[open_]
    return rows, trie.edge_tokens[edges]


def node_log_mass(trie: TitleTrie, title_probs: torch.Tensor) -> torch.Tensor:
    """[users, n_nodes + 1] log of the probability mass of the titles at or below each trie node.

    The root holds all of it; the dead node (no titles) holds log 1 = 0 so steps into it add nothing.
    """
    paths = trie.title_paths.cpu()
    users, n_titles = title_probs.shape
    mass = torch.zeros((users, trie.n_nodes + 1), dtype=torch.float64)
    valid = paths >= 0
    nodes = paths[valid]  # every (title, node on its path) pair
    owners = torch.arange(n_titles).unsqueeze(1).expand_as(paths)[valid]
    mass.index_add_(1, nodes, title_probs[:, owners])
    mass[:, 0] = title_probs.sum(1)
    log_mass = mass.clamp(min=1e-30).log()
    log_mass[:, trie.dead] = 0.0
    return log_mass.to(torch.float32)
