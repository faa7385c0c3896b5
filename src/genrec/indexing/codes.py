"""Item representations: every catalogue item named by a short tuple of codes, one tuple per item.

A generative recommender writes an item somehow. GenRec writes its title; P5 writes an id. How items
are named decides much of the result (Hua et al. 2023, "How to Index Item IDs for Recommendation
Foundation Models"; TIGER, Rajput et al. 2023), so genrec builds every representation the same way, as
an `ItemCodes`: for each item a tuple of `depth` integer codes, level `l` drawing from `level_sizes[l]`
values, every tuple naming exactly one item. A model writes level l's code c as the token `<{a..}_c>`
(`code_token`): level letters keep `<a_3>` and `<b_3>` apart, and the closing bracket keeps `<a_1>`
out of `<a_12>`.

- `random`: one code per item, a seeded permutation of the catalogue (P5's random indexing).
- `sequential`: one code per item, numbered by first appearance in the TRAINING sequences. Leaky:
  consecutive numbers let a model guess "the last history id + 1"; built to measure that, never a default.
- `collaborative` (genrec.indexing.collaborative) and `semantic` (genrec.indexing.semantic): a code per
  level of a hierarchical clustering, then a last code that numbers the items sharing that prefix.

The files (data/index/<dataset>/<method>/): `codes.json` (method, leaky, depth, level sizes, params,
the codes by item id) and `stats.json` (`code_stats`).
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from genrec.errors import DataError
from genrec.io import write_json

CODES_FILE = "codes.json"
STATS_FILE = "stats.json"
LEAKY = frozenset({"sequential"})
"""Methods whose codes carry information about the evaluation order (reported as leakage, never a result)."""


def code_token(level: int, code: int) -> str:
    """The token of `code` at `level`: <a_12> for level 0, <b_7> for level 1, ..."""
    return f"<{string.ascii_lowercase[level]}_{code}>"


@dataclass(frozen=True)
class ItemCodes:
    """The code tuple of every catalogue item under one method."""

    method: str
    codes: dict[str, tuple[int, ...]]
    """Item id -> its codes, one per level."""
    level_sizes: tuple[int, ...]
    """Values level l may take: codes at level l lie in 0 .. level_sizes[l] - 1."""
    settings: dict = field(default_factory=dict)
    """What built it (seed, levels, clusters...), recorded beside the codes."""

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def leaky(self) -> bool:
        return self.method in LEAKY

    def tokens(self, item_id: str) -> list[str]:
        """The item's code tokens, level by level."""
        return [code_token(level, code) for level, code in enumerate(self.codes[item_id])]

    def text(self, item_id: str) -> str:
        """The item as one string of its code tokens, e.g. "<a_12><b_7><c_3>"."""
        return "".join(self.tokens(item_id))

    def vocabulary(self) -> list[str]:
        """Every token a code may use, level by level (also codes no item uses)."""
        return [code_token(level, code) for level, size in enumerate(self.level_sizes) for code in range(size)]

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / CODES_FILE, {
            "method": self.method, "leaky": self.leaky, "depth": self.depth, "level_sizes": list(self.level_sizes),
            "settings": self.settings, "codes": {item: list(codes) for item, codes in self.codes.items()}})

    @classmethod
    def load(cls, folder: str | Path) -> ItemCodes:
        """Read `codes.json` from an index folder.

        Raises:
            DataError: no such file (naming the stage that writes it).
        """
        path = Path(folder) / CODES_FILE
        if not path.is_file():
            raise DataError("not an item index (no codes.json)", path=folder,
                            fix="build it with `genrec index` (dvc repro index@<dataset>)")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(method=data["method"], codes={str(k): tuple(int(c) for c in v) for k, v in data["codes"].items()},
                   level_sizes=tuple(int(s) for s in data["level_sizes"]), settings=data.get("settings", {}))


def from_numbers(method: str, numbers: dict[str, int], settings: dict | None = None) -> ItemCodes:
    """A one-level index from item -> number (0 .. N-1)."""
    return ItemCodes(method, {item: (int(n),) for item, n in numbers.items()}, (len(numbers),), settings or {})


def random_codes(item_ids: Iterable[str], seed: int) -> ItemCodes:
    """A seeded permutation of the catalogue (sorted by item id first, so input order is irrelevant) onto 0..N-1."""
    ordered = sorted(set(item_ids))
    numbers = np.random.default_rng(seed).permutation(len(ordered))
    return from_numbers("random", dict(zip(ordered, numbers.tolist())), {"seed": seed})


def sequential_codes(train_sequences: Iterable[Sequence[str]], item_ids: Iterable[str]) -> ItemCodes:
    """Consecutive numbers in order of first appearance in the TRAINING sequences (OpenP5's ordering).

    Args:
        train_sequences: each user's training items, oldest first, users in a fixed order. Valid and
            test items must not be passed: numbering them by appearance would give the answer away outright.
        item_ids: the whole catalogue; items never seen in training get the last numbers, in id order.
    """
    numbers: dict[str, int] = {}
    for sequence in train_sequences:
        for item in sequence:
            numbers.setdefault(item, len(numbers))
    for item in sorted(set(item_ids) - numbers.keys()):
        numbers[item] = len(numbers)
    return from_numbers("sequential", numbers)


def separate_collisions(method: str, prefixes: dict[str, tuple[int, ...]], level_sizes: Sequence[int],
                        settings: dict | None = None) -> ItemCodes:
    """Append a last code numbering the items that share a prefix (0, 1, ... in item-id order).

    The prefixes come from a clustering; two items in the same leaf cluster would otherwise have the same
    tuple. The last level's size is the largest number of items sharing one prefix.
    """
    seen: Counter = Counter()
    codes = {}
    for item in sorted(prefixes):
        prefix = tuple(int(c) for c in prefixes[item])
        codes[item] = prefix + (seen[prefix],)
        seen[prefix] += 1
    return ItemCodes(method, codes, tuple(int(s) for s in level_sizes) + (max(seen.values(), default=1),),
                     settings or {})


def check_codes(codes: ItemCodes, item_ids: Iterable[str], path: str | Path) -> None:
    """Prove the index names the catalogue: every item exactly one tuple, every tuple exactly one item.

    Also: every tuple has `depth` codes and each code lies within its level's size.

    Raises:
        DataError: naming the first offending item (or tuple) and how many there are.
    """
    catalogue = set(item_ids)
    missing = sorted(catalogue - codes.codes.keys())
    if missing:
        raise DataError(f"{codes.method} index: {len(missing)} catalogue items have no codes (e.g. {missing[0]!r})",
                        path=path, fix="rebuild the index on this split (dvc repro index@<dataset>)")
    extra = sorted(codes.codes.keys() - catalogue)
    if extra:
        raise DataError(f"{codes.method} index: {len(extra)} coded items are not in the catalogue "
                        f"(e.g. {extra[0]!r})", path=path,
                        fix="rebuild the index on this split (dvc repro index@<dataset>)")
    for item, tuple_ in codes.codes.items():
        if len(tuple_) != codes.depth:
            raise DataError(f"{codes.method} index: item {item!r} has {len(tuple_)} codes, expected {codes.depth}",
                            path=path)
        bad = [level for level, c in enumerate(tuple_) if not 0 <= c < codes.level_sizes[level]]
        if bad:
            raise DataError(f"{codes.method} index: item {item!r} has code {tuple_[bad[0]]} at level {bad[0]}, "
                            f"outside 0..{codes.level_sizes[bad[0]] - 1}", path=path)
    owners: dict[tuple[int, ...], list[str]] = {}
    for item, tuple_ in codes.codes.items():
        owners.setdefault(tuple_, []).append(item)
    shared = {t: items for t, items in owners.items() if len(items) > 1}
    if shared:
        tuple_, items = next(iter(shared.items()))
        raise DataError(f"{codes.method} index: {len(shared)} code tuples name several items (e.g. {list(tuple_)} "
                        f"names {sorted(items)[:3]})", path=path,
                        fix="the index must separate collisions with a last code")


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy (bits) of a distribution given by counts."""
    counts = np.asarray([c for c in counts if c > 0], dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_stats(codes: ItemCodes, seconds: float) -> dict:
    """What an index looks like, for stats.json and MLflow.

    - items, depth (codes per item), tokens (vocabulary of code tokens);
    - collision_rate: share of items sharing their tuple without the last code with another item (for a
      clustering, what the last code had to separate; 0 for one-level indexes);
    - per level (keyed by its token letter, a, b, ...): values used, their share of the level's size, entropy in bits and its maximum log2(size).
    """
    tuples = list(codes.codes.values())
    out: dict = {"method": codes.method, "leaky": codes.leaky, "items": len(tuples), "depth": codes.depth,
                 "tokens": sum(codes.level_sizes), "seconds": round(seconds, 2)}
    if codes.depth > 1:
        prefixes = Counter(t[:-1] for t in tuples)
        out["collision_rate"] = round(sum(n for n in prefixes.values() if n > 1) / max(len(tuples), 1), 6)
        out["max_items_per_prefix"] = max(prefixes.values(), default=0)
    else:
        out["collision_rate"] = 0.0
    levels = {}
    for level, size in enumerate(codes.level_sizes):
        counts = Counter(t[level] for t in tuples)
        levels[string.ascii_lowercase[level]] = ({"size": size, "used": len(counts), "use": round(len(counts) / size, 6),
                       "entropy_bits": round(entropy_bits(counts.values()), 4),
                       "max_entropy_bits": round(math.log2(size), 4) if size > 1 else 0.0})
    out["levels"] = levels
    return out
