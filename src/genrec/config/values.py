"""The kinds of value a params.yaml key takes, as strict pydantic types, and pydantic's errors as our messages.

Strict, so that YAML's guesses do not pass silently: a bool is no number (YAML reads yes, no, on and off as
booleans) and a number is no bool or text. Three conversions that YAML needs are made on purpose: an integral
float is an int (`10.0`), text such as `1e-3` is a float (PyYAML follows YAML 1.1, where a float needs a dot),
and a float field keeps an int as written, so the resolved config (MLflow params, the copy beside every
artifact) shows `5` where params.yaml says 5.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import (AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter,
                      ValidationError, WrapValidator)
from pydantic_core import PydanticCustomError

SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)
"""Every params section: an unknown key is an error; each field's docstring is its description."""

_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _integral_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _exponent_text_as_float(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value) else value


def _int_as_written(value: Any, handler: Any) -> Any:
    number = handler(value)
    return value if type(value) is int else number


Int = Annotated[int, Strict(), BeforeValidator(_integral_float_as_int)]
Float = Annotated[float, Strict(), AllowInfNan(False), BeforeValidator(_exponent_text_as_float),
                  WrapValidator(_int_as_written)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]


def _folder_name(name: str) -> str:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"expected a plain folder name, e.g. ml-latest-small, got {name!r}")
    return name


def _each_once(names: list[str]) -> list[str]:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{twice[0]!r} is listed twice")
    return names


def _hex_digest(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"expected 64 hex digits or null, got {text!r}")
    return text


def _adamw(name: str) -> str:
    if not name.startswith("adamw"):
        raise ValueError(f"expected an AdamW variant, e.g. adamw_torch, got {name!r}")
    return name


def _cut_offs(k: list[int]) -> list[int]:
    if any(cut < 1 for cut in k):
        raise ValueError(f"expected cut-offs >= 1, e.g. [5, 10], got {k!r}")
    return k


RANKING_METRIC = re.compile(r"(hr|ndcg)_at_[1-9][0-9]*")
"""The ranking metrics genrec writes and can recompute per user (`genrec.evaluation.metrics.PER_USER`'s families
at any cut-off; tests/config/test_params.py checks the two agree)."""


def _ranking_metric(name: str) -> str:
    if not RANKING_METRIC.fullmatch(name):
        raise ValueError(f"expected a ranking metric hr_at_<k> or ndcg_at_<k> with k in eval.k, e.g. ndcg_at_10, "
                         f"got {name!r}")
    return name


FolderName = Annotated[Text, AfterValidator(_folder_name)]
FolderNames = Annotated[list[FolderName], Field(min_length=1), AfterValidator(_each_once)]
Sha256 = Annotated[Text, AfterValidator(_hex_digest)]
AdamW = Annotated[Text, AfterValidator(_adamw)]
CutOffs = Annotated[list[Int], Field(min_length=1), AfterValidator(_cut_offs)]

IngestFormat = Literal["auto", "movielens", "movielens-dat", "amazon-2014", "amazon-2018", "generic"]
HistoryFormat = Literal["lines", "quoted", "comma"]
HISTORY_FORMATS = get_args(HistoryFormat)
ModelInit = Literal["pretrained", "random"]
Dtype = Literal["bfloat16", "float32", "float16"]
ResumeMode = Literal["auto", "never"]
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
TrainFormat = Literal["sequence", "instruction"]
EvalSplit = Literal["test", "valid"]
EvalDtype = Literal["auto", "bfloat16", "float32", "float16"]
Device = Literal["auto", "cpu", "cuda"]
EvalDevice = Literal["auto", "cpu", "cuda", "spread"]
IndexMethod = Literal["random", "sequential", "collaborative", "semantic"]
GenrecText = Literal["codes", "codes+title"]
IndexMethods = Annotated[list[IndexMethod], Field(min_length=1), AfterValidator(_each_once)]
SasrecSelect = Literal["hr_at_10", "ndcg_at_10"]
PromoteMetric = Annotated[Text, AfterValidator(_ranking_metric)]


def related(field: str, text: str) -> PydanticCustomError:
    """A section validator's problem with `field` (pydantic places it at the section; the message names the field)."""
    return PydanticCustomError("related", text, {"field": field})


# Messages, one line a key. A hint here is the plain annotation (get_type_hints drops the Annotated parts above).

Problem = tuple[str, str]
"""(dotted key, the line that names it): the key finds the line of params.yaml the value came from."""

_RANGES = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_CHECKS = _RANGES | {"value_error", "related"}
"""pydantic error types of a value's range or rule rather than its type."""


@functools.cache
def hints(cls: type, extras: bool = False) -> dict[str, Any]:
    """Field annotations: plain (for messages), or with the pydantic types above (`extras`)."""
    return get_type_hints(cls, include_extras=extras)


@functools.cache
def _field_type(cls: type, name: str) -> TypeAdapter:
    return TypeAdapter(hints(cls, extras=True)[name])


def has_type(cls: type, name: str, value: Any) -> bool:
    """Whether `value` has the type of field `name` of `cls`, whatever its range."""
    try:
        _field_type(cls, name).validate_python(value)
    except ValidationError as err:
        return all(e["type"] in _CHECKS for e in err.errors())
    return True


def unknown_key(prefix: str, key: Any, known: list[str]) -> Problem:
    close = difflib.get_close_matches(str(key), known, n=1)
    fix = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(known)}"
    return f"{prefix}{key}", f"{prefix}{key}: unknown key; {fix}"


def validation_problems(errors: list[dict], raw: dict, root: type) -> list[Problem]:
    """pydantic's errors of validating `raw` as `root`, one line a problem.

    A value of one member of a union (`int | Literal["all"]`) that fails only that member's range is reported
    for the range, not also as the wrong type for the other members.
    """
    found = [(error["type"] in _CHECKS, _problem(error, raw, root)) for error in errors]
    checked = {key for is_check, (key, _) in found if is_check}
    return list(dict.fromkeys(problem for is_check, problem in found if is_check or problem[0] not in checked))


def _problem(error: dict, raw: dict, root: type) -> Problem:
    section, keys, value, leaf = root, [], raw, False
    for part in error["loc"]:  # down the sections to the field; a union member or list index after it is no key
        if part not in hints(section):
            break
        keys.append(part)
        value = value.get(part) if isinstance(value, dict) else None
        leaf = not dataclasses.is_dataclass(hints(section)[part])
        if leaf:
            break
        section = hints(section)[part]
    key, kind = ".".join(keys), error["type"]
    if kind in ("unexpected_keyword_argument", "invalid_key"):
        return unknown_key(f"{key}." if key else "", error["loc"][len(keys)], list(hints(section)))
    if kind == "related":
        key = f"{key}.{error['ctx']['field']}"
        return key, f"{key}: {error['msg']}"
    if kind == "value_error":
        return key, f"{key}: {error['ctx']['error']}"
    if not leaf:
        return key, f"{key}: expected a section of keys, got {value!r}"
    field, hint = section.__pydantic_fields__[keys[-1]], hints(section)[keys[-1]]
    if kind in _RANGES:
        bounds = {b: getattr(m, b) for m in field.metadata for b in ("ge", "gt", "lt") if hasattr(m, b)}
        return key, range_problem(key, value, hint, bounds or error["ctx"], field.examples)
    return key, type_problem(key, value, hint)


def _alternatives(hint: Any) -> list[str]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return [text for member in get_args(hint) for text in _alternatives(member)]
    if origin is Literal:
        return [str(choice) for choice in get_args(hint)]
    if origin is list and get_origin(get_args(hint)[0]) is Literal:
        return [f"a list of names among {', '.join(str(c) for c in get_args(get_args(hint)[0]))}"]
    if origin is list:
        return [f"a non-empty list of {_alternatives(get_args(hint)[0])[0].split(' ', 1)[1]}s"]
    return {bool: ["true", "false"], int: ["an integer"], float: ["a number"], str: ["a non-empty string"],
            type(None): ["null"]}[hint]


def type_problem(key: str, value: Any, hint: Any) -> str:
    """One line: `key: expected <type>, got <value>` (or `key=<value>: use one of ...` for a choice)."""
    choices = _alternatives(hint)
    if get_origin(hint) is Literal:
        return f"{key}={value!r}: use one of {', '.join(choices)}"
    expected = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
    text = f"{key}: expected {expected}, got {value!r}"
    if str in (hint, *get_args(hint)) and isinstance(value, (bool, int, float)):
        why = " (YAML reads yes, no, on and off as booleans)" if isinstance(value, bool) else ""
        text += f"; quote it to mean text{why}"
    return text


def range_problem(key: str, value: Any, hint: Any, bounds: dict[str, Any], examples: list | None) -> str:
    """One line: `key: expected an integer >= 1, got 0`, or an interval: `a number in [0, 1)`."""
    members = get_args(hint) or (hint,)
    kind = "a number" if float in members else "an integer"
    if "lt" not in bounds:
        low = f">= {bounds['ge']}" if "ge" in bounds else f"> {bounds['gt']}"
        return f"{key}: expected {kind} {low}, got {value!r}"
    kind = "a probability" if bounds == {"gt": 0, "lt": 1} else kind
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}"
    text = f"{key}: expected {kind} in {low}, {bounds['lt']})"
    text += f", e.g. {examples[0]}," if examples else ""
    text += " or null" if type(None) in members else ""
    return f"{text}, got {value!r}"
