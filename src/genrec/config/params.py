"""Typed parameters: `Params`, the sections of params.yaml (genrec.config.sections), loaded and validated once.

`load_params` reads the YAML, lays the dataset's own entry of `dataset_params` over it, applies the command line's
`section.key=value` overrides (which win) and validates every section with pydantic. Every problem is collected
before one `ParamsError` names each bad key, with its line in params.yaml when the value came from there.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from genrec.config.sections import (AuditParams, EvalParams, IndexParams, IngestParams, LoraParams, ModelParams, P5Params, PromoteParams,
                                    PromptsParams, ReportParams, SasrecParams, SplitParams, TrackingParams,
                                    TrainParams)
from genrec.config.values import (HISTORY_FORMATS, SECTION, FolderName, FolderNames, Problem, has_type, hints,
                                  type_problem, unknown_key, validation_problems)

__all__ = ["HISTORY_FORMATS", "AuditParams", "EvalParams", "IndexParams", "IngestParams", "LoraParams", "ModelParams", "P5Params", "Params",
           "ParamsError", "PromoteParams", "PromptsParams", "ReportParams", "SasrecParams", "SplitParams",
           "TrackingParams", "TrainParams", "load_params", "parse_override", "to_dict"]


class ParamsError(ValueError):
    """Raised with every problem found in a params file, one per line.

    `lines` holds the problems one by one, each naming the file (and its line where known): what
    `genrec check-params` prints.
    """

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or [message]


@dataclass(frozen=True, config=SECTION)
class Params:
    dataset: FolderName = "ml-latest-small"
    """The dataset a command works on; also its folder name under data/. dvc.yaml sets it per stage instance."""
    datasets: FolderNames = Field(default_factory=lambda: ["ml-latest-small", "toys-p5"])
    """The datasets `dvc repro` builds side by side: dvc.yaml repeats every stage (but base_model) per name."""
    ingest: IngestParams = Field(default_factory=IngestParams)
    split: SplitParams = Field(default_factory=SplitParams)
    prompts: PromptsParams = Field(default_factory=PromptsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    index: IndexParams = Field(default_factory=IndexParams)
    p5: P5Params = Field(default_factory=P5Params)
    sasrec: SasrecParams = Field(default_factory=SasrecParams)
    report: ReportParams = Field(default_factory=ReportParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    audit: AuditParams = Field(default_factory=AuditParams)


def to_dict(params: Any) -> dict:
    """The resolved params as plain data (for MLflow, and to save beside every artifact)."""
    return dataclasses.asdict(params)


# Reading the file: YAML with the line of every key.

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, the problem on one line) of a PyYAML error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    return (mark.line + 1 if mark else None), " ".join(str(problem).split())


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """{"split.user_core": 43, ...}: the 1-based line of every key of a YAML mapping, under its dotted name."""
    lines = {}
    for key_node, value_node in node.value if isinstance(node, yaml.MappingNode) else []:
        if isinstance(key_node, yaml.ScalarNode):
            lines[prefix + key_node.value] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, f"{prefix}{key_node.value}."))
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The file's mapping of sections and the line of each key in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        raw = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        line, problem = _yaml_problem(err)
        raise ParamsError(f"{path}{f', line {line}' if line else ''}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    if raw is None:
        raise ParamsError(f"{path}: empty; expected the sections of params.yaml (dataset, split, train, ...)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (dataset, split, train, ...), "
                          f"got a {type(raw).__name__}")
    return raw, _key_lines(node)


# Overrides: the command line's `key=value` words and the dataset's entry of dataset_params.

def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value), the value parsed as YAML (`null`, `5`, `[q, v]`)."""
    key, equals, raw = text.partition("=")
    # `++key=value` and `+key=value` are DVC's (Hydra's) add-or-set forms, e.g. from `genrec preset`.
    keys = key.strip().lstrip("+").split(".")
    if not equals or not all(keys):
        raise ParamsError(f"override {text!r}: expected key=value, e.g. split.user_core=10")
    try:
        return keys, yaml.load(raw, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: the value is not valid YAML: {_yaml_problem(err)[1]}") from None


def _apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or `split:` with nothing under it
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ParamsError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


DATASET_PARAMS = "dataset_params"
"""params.yaml's per-dataset layer: {dataset: {dotted.key: value} or nested sections, or null}."""

NOT_PER_DATASET = {
    "dataset": "it names the dataset", "datasets": "it lists the datasets",
    DATASET_PARAMS: "entries do not nest",
    "train.accelerate_profile": "dvc.yaml reads it into the launch command of every dataset",
    "eval.accelerate_profile": "dvc.yaml reads it into the launch command of every dataset",
}
"""Keys a `dataset_params` entry may not set, each with the reason."""


def _entry_overrides(cls: type, node: dict, keys: list[str], prefix: str, problems: list[Problem],
                     out: list[tuple[list[str], Any]]) -> None:
    """The leaves of one `dataset_params` entry (nested sections or dotted keys) as (keys, value) overrides.

    Unknown keys, values of the wrong type and keys in NOT_PER_DATASET go to `problems`, named under `prefix`
    (`dataset_params.<dataset>.`); range checks run later, on the params the entry produces.
    """
    fields = hints(cls)
    for key, value in node.items():
        head, *rest = str(key).split(".")
        path = [*keys, head]
        dotted = ".".join(path)
        if head not in fields:
            problems.append(unknown_key(prefix + "".join(f"{k}." for k in keys), head, list(fields)))
        elif dotted in NOT_PER_DATASET:
            why = NOT_PER_DATASET[dotted]
            problems.append((prefix + dotted, f"{prefix}{dotted}: not settable per dataset ({why})"))
        elif dataclasses.is_dataclass(fields[head]):
            value = {".".join(rest): value} if rest else value
            if isinstance(value, dict):
                _entry_overrides(fields[head], value, path, prefix, problems, out)
            else:
                problems.append((prefix + dotted, f"{prefix}{dotted}: expected a section of keys, got {value!r}"))
        elif rest:
            problems.append((prefix + dotted, f"{prefix}{dotted}: not a section, so {prefix}{dotted}.{'.'.join(rest)} "
                                              "does not exist"))
        elif not has_type(cls, head, value):
            problems.append((prefix + dotted, type_problem(prefix + dotted, value, fields[head])))
        else:
            out.append((path, value))


def dataset_overrides(raw: dict, problems: list[Problem]) -> dict[str, list[tuple[list[str], Any]]]:
    """Every entry of `raw["dataset_params"]` as (keys, value) overrides, by dataset; problems of all entries
    (not only the active dataset's) go to `problems`, so a typo in another dataset's entry is caught early.

    When the file has the section, every name in `datasets` needs an entry (`{}` or null for none): dvc.yaml's
    stages depend on `dataset_params.<dataset>`, and DVC refuses a params key that is absent. A file without it
    (a resolved config saved by `to_dict`) has nothing to lay over its sections.
    """
    if DATASET_PARAMS not in raw:
        return {}
    entries = raw[DATASET_PARAMS]
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        problems.append((DATASET_PARAMS, f"{DATASET_PARAMS}: expected a mapping of dataset names to params keys, "
                                         f"got {entries!r}"))
        return {}
    out = {}
    for name, entry in entries.items():
        prefix = f"{DATASET_PARAMS}.{name}."
        out[str(name)] = []
        if entry is None:
            continue
        if not isinstance(entry, dict):
            problems.append((prefix[:-1], f"{prefix[:-1]}: expected a mapping of params keys (e.g. p5.epochs: 3) "
                                          f"or null, got {entry!r}"))
            continue
        _entry_overrides(Params, entry, [], prefix, problems, out[str(name)])
    datasets = raw.get("datasets")
    for name in datasets if isinstance(datasets, list) else []:
        if isinstance(name, str) and name not in entries:
            problems.append((DATASET_PARAMS, f"{DATASET_PARAMS}: no entry for {name!r} of datasets; add `{name}: {{}}` "
                                             f"(dvc.yaml's stages depend on {DATASET_PARAMS}.<dataset>)"))
    return out


# Validation: pydantic's errors as one line a key.

def _empty_sections_as_defaults(raw: dict, cls: type) -> None:
    """`split:` with nothing under it reads as null; it means the section's defaults."""
    for name, hint in hints(cls).items():
        if dataclasses.is_dataclass(hint) and name in raw:
            if raw[name] is None:
                raw[name] = {}
            elif isinstance(raw[name], dict):
                _empty_sections_as_defaults(raw[name], hint)


def _under(key: str, keys: set[str]) -> bool:
    """Whether `key` is one of `keys` or inside one of them (`split.user_core` is inside `split`)."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Read `path`, lay the dataset's `dataset_params` entry over it, apply `key=value` overrides (which win)
    and validate everything at once.

    The dataset, and the entries themselves, are those after the overrides: `--set dataset=toys-p5` picks
    toys-p5's entry, and `--set dataset_params.toys-p5=null` drops it.

    Raises:
        ParamsError: one line for one problem; else every unknown key and invalid value, one a line, each
            with its dotted name and, for a value from the file, its line. Also for a missing, unreadable,
            empty or non-YAML file.
    """
    path = Path(path)
    raw, lines = _read_yaml(path)
    parsed = [parse_override(text) for text in overrides]
    final = copy.deepcopy(raw)
    for keys, value in parsed:
        _apply_override(final, keys, value)
    problems: list[Problem] = []
    layers = dataset_overrides(final, problems)
    dataset = final.get("dataset") if isinstance(final.get("dataset"), str) else None
    layer = layers.get(dataset, [])
    raw.pop(DATASET_PARAMS, None)
    for keys, value in layer:
        _apply_override(raw, keys, value)
    for keys, value in parsed:
        if keys[0] != DATASET_PARAMS:
            _apply_override(raw, keys, value)
    _empty_sections_as_defaults(raw, Params)
    try:
        params = TypeAdapter(Params).validate_python(raw)
    except ValidationError as err:
        built = validation_problems(err.errors(), raw, Params)
    else:
        built = []
    # A problem of a value the entry set (and no override replaced) says where the value came from.
    from_command_line = {".".join(keys) for keys, _ in parsed}
    from_entry = {".".join(keys) for keys, _ in layer}
    for key, text in built:
        if not _under(key, from_command_line) and _under(key, from_entry):
            key, text = f"{DATASET_PARAMS}.{dataset}.{key}", f"{text} (set by {DATASET_PARAMS}.{dataset})"
        problems.append((key, text))
    if problems:
        raise _params_error(path, [(None if _under(key, from_command_line) else lines.get(key), text)
                                   for key, text in problems])
    return params


def _params_error(path: Path, problems: list[tuple[int | None, str]]) -> ParamsError:
    """One line for one problem, else one a line; each with its line in `path` where the value came from there."""
    lines = [f"{path}{f', line {line}' if line else ''}: {text}" for line, text in problems]
    if len(problems) == 1:
        return ParamsError(lines[0])
    return ParamsError(f"{path}: {len(problems)} invalid parameters:\n  - "
                       + "\n  - ".join(f"line {line}: {text}" if line else text for line, text in problems), lines)
