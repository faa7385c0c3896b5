"""The one prompt definition shared by the prompts stage, training and evaluation.

A record is instruction + history (the titles before the target, oldest first) + completion (the
target title). GenRec's reference code joined the history with bare commas although titles hold
commas ("American President, The (1995)") and copied its prompt function into three files that
drifted apart; here the text is built only by `build_prompt` + `build_completion`, the template
used is saved as JSON beside every artifact, and the default history format is unambiguous.

Tokenisation boundary: the template ends with a single newline after a non-space character and
the completion is the bare title (no leading space, no EOS). A byte-level BPE tokenizer (GPT-2,
LLaMA-3, SmolLM2) pre-splits a lone newline from the word after it, so
`ids(prompt + completion) == ids(prompt) + ids(completion)` and evaluation can build its title trie
from `tokenizer(build_completion(title))`. `completion_token_ids` checks that split for any
tokenizer (SentencePiece ones differ) and returns the completion ids as they appear in context.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from genrec.io import write_json
from genrec.config.params import HISTORY_FORMATS, PromptsParams

INSTRUCTIONS: tuple[str, ...] = (
    "Given this user's history, oldest first, predict the title they will choose next.",
    "Here are the titles a user chose, in order. Which title comes next?",
    "Based on the history below, name the title this user is most likely to pick next.",
    "A user enjoyed these titles in this order. Which title will they enjoy next?",
    "Recommend the next title for a user with the history below.",
    "What will this user choose next, given the titles they chose before?",
)
"""Phrasings of the paper's "given the viewing history, what will they watch next?" (one per record)."""

DEFAULT_TEMPLATE = "{instruction}\n\n### History:\n{history}\n\n### Next:\n"
"""Short on purpose (every token costs on CPU); the completion follows the final newline directly."""

SEQUENCE_TEMPLATE = "{instruction}\n{history}\n"
"""`sequence` format: a one-line header, then one title a line, each line ended by a newline."""

SEQUENCE_HEADER = "A user's choices, oldest first, one title per line:"
"""The header of every `sequence` document and evaluation prompt (the format's only "instruction")."""

FORMATS = ("instruction", "sequence")

_PLACEHOLDERS = {"instruction", "history"}


@dataclass(frozen=True)
class PromptTemplate:
    """How a record becomes text; saved beside the adapter so evaluation uses what training used."""

    template: str = DEFAULT_TEMPLATE
    """Text with exactly the placeholders {instruction} and {history}."""
    history_format: str = "lines"
    """lines | quoted | comma: how `format_history` writes the titles."""
    max_history: int = 10
    """Only the latest this many history titles are written."""
    instructions: tuple[str, ...] = INSTRUCTIONS
    """Phrasings `choose_instruction` picks from."""
    format: str = "instruction"
    """instruction: a completion ends with EOS | sequence: every title line ends with a newline, the end marker."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r}: use one of {', '.join(FORMATS)}")
        if self.format == "sequence" and (self.history_format != "lines" or not self.template.endswith("}\n")):
            raise ValueError("format 'sequence' needs history_format 'lines' and a template ending '{history}\\n'")
        fields = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        if fields != _PLACEHOLDERS:
            raise ValueError(f"template placeholders {sorted(fields)}: expected exactly "
                             "{instruction} and {history}")
        if self.history_format not in HISTORY_FORMATS:
            raise ValueError(f"history_format={self.history_format!r}: use one of {', '.join(HISTORY_FORMATS)}")
        if not isinstance(self.max_history, int) or self.max_history < 1:
            raise ValueError(f"max_history={self.max_history!r}: expected an integer >= 1")
        if not self.instructions or not all(isinstance(i, str) and i for i in self.instructions):
            raise ValueError("instructions: expected at least one non-empty string")
        object.__setattr__(self, "instructions", tuple(self.instructions))

    def to_dict(self) -> dict:
        return {"template": self.template, "history_format": self.history_format,
                "max_history": self.max_history, "instructions": list(self.instructions), "format": self.format}

    @classmethod
    def from_dict(cls, d: dict) -> PromptTemplate:
        unknown = set(d) - {"template", "history_format", "max_history", "instructions", "format"}
        if unknown:
            raise ValueError(f"prompt template: unknown keys {sorted(unknown)}")
        d = dict(d)
        if "instructions" in d:
            d["instructions"] = tuple(d["instructions"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write the template as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PromptTemplate:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_params(cls, p: PromptsParams) -> PromptTemplate:
        return cls(history_format=p.history_format, max_history=p.max_history)

    @classmethod
    def sequence(cls, max_history: int) -> PromptTemplate:
        """The `sequence` format: header line, then titles one per line; the prompt keeps the latest `max_history`."""
        return cls(template=SEQUENCE_TEMPLATE, history_format="lines", max_history=max_history,
                   instructions=(SEQUENCE_HEADER,), format="sequence")

    @property
    def end_text(self) -> str:
        """Text that ends a completion before any special token: the line end for `sequence`, none otherwise."""
        return "\n" if self.format == "sequence" else ""


def format_history(titles: Sequence[str], fmt: str) -> str:
    """Write history titles as one string.

    Args:
        titles: Titles, oldest first (whitespace-normalised, so none holds a newline).
        fmt: `lines` (one title a line), `quoted` (JSON string literals joined by ", ") or `comma`
            (the paper's bare ", " join: ambiguous, kept only to reproduce the paper).

    Raises:
        ValueError: for an unknown format, or a title that `lines` could not write unambiguously.
    """
    if fmt == "lines":
        text = "\n".join(titles)
        if text.count("\n") != max(len(titles) - 1, 0) or not all(titles):
            raise ValueError(f"format 'lines' needs non-empty titles without newlines: {list(titles)!r}")
        return text
    if fmt == "quoted":
        return ", ".join(json.dumps(t, ensure_ascii=False) for t in titles)
    if fmt == "comma":
        return ", ".join(titles)
    raise ValueError(f"history format {fmt!r}: use one of {', '.join(HISTORY_FORMATS)}")


def parse_history(text: str, fmt: str) -> list[str]:
    """The exact inverse of `format_history` for `lines` and `quoted`.

    Raises:
        ValueError: for `comma`, whose join cannot be undone: ["A, B (1999)", "C"] and
            ["A", "B (1999)", "C"] both give "A, B (1999), C".
    """
    if fmt == "lines":
        return text.split("\n") if text else []
    if fmt == "quoted":
        return json.loads(f"[{text}]")
    if fmt == "comma":
        raise ValueError("history format 'comma' is ambiguous (titles contain ', '); it cannot be parsed back")
    raise ValueError(f"history format {fmt!r}: use one of {', '.join(HISTORY_FORMATS)}")


def build_prompt(template: PromptTemplate, instruction: str, history_titles: Sequence[str]) -> str:
    """The text the model sees before the completion, from the last `template.max_history` titles."""
    history = format_history(list(history_titles)[-template.max_history:], template.history_format)
    return template.template.format(instruction=instruction, history=history)


def build_completion(title: str) -> str:
    """The completion for a target title: the bare title (no leading space; the trainer adds EOS).

    The prompt ends with a newline, so the title starts a line exactly as each title does in the
    `lines` history format; see the module docstring for why the token split stays clean.
    """
    return title


def completion_token_ids(template: PromptTemplate, tokenizer, title: str) -> list[int]:
    """Token ids of `build_completion(title)` as they appear after the prompt.

    Tokenises the template's text after {history} with and without the completion and returns the
    difference, so the ids match what training saw for any tokenizer.

    Raises:
        ValueError: when the tokenizer merges the prompt's last token with the completion's first.
    """
    tail = template.template.split("{history}", 1)[1].format(instruction="")
    head = _token_ids(tokenizer, tail)
    ids = _token_ids(tokenizer, tail + build_completion(title))
    if ids[:len(head)] != head:
        raise ValueError(f"tokenizer merges the prompt end {tail!r} with the completion {title!r}")
    return ids[len(head):]


def truncate_history(history_titles: Sequence[str], fits: Callable[[Sequence[str]], bool]) -> list[str]:
    """Drop the oldest titles until `fits(kept)` holds; the target is never the caller's to lose.

    Binary search over how many titles to drop, so `fits` (monotone: fewer titles never fit worse)
    is called O(log n) times.

    Returns:
        The longest suffix of `history_titles` that fits; [] if not even one title fits.

    Raises:
        ValueError: if `fits([])` is False (the prompt and target alone are too long).
    """
    titles = list(history_titles)
    if fits(titles):
        return titles
    if not fits([]):
        raise ValueError("the prompt with an empty history and its target does not fit the budget")
    too_few, enough = 0, len(titles)  # dropping too_few does not fit; dropping enough does
    while enough - too_few > 1:
        mid = (too_few + enough) // 2
        if fits(titles[mid:]):
            enough = mid
        else:
            too_few = mid
    return titles[enough:]


def fit_to_token_budget(template: PromptTemplate, instruction: str, history_titles: Sequence[str],
                        target_title: str, tokenizer, max_tokens: int) -> tuple[str, str, int]:
    """Build prompt and completion whose tokens (plus one EOS) fit in `max_tokens`.

    Only the last `template.max_history` titles are considered; the oldest of those are dropped
    first. With `target_title=""` (evaluation) only the prompt is counted, with no EOS.

    Returns:
        (prompt, completion, n_dropped): n_dropped counts titles dropped from the last
        `max_history` to meet the budget.

    Raises:
        ValueError: if the prompt with no history plus the completion exceeds `max_tokens`.
    """
    completion = build_completion(target_title) if target_title else ""
    eos = 1 if target_title else 0
    titles = list(history_titles)[-template.max_history:]

    def fits(kept: Sequence[str]) -> bool:
        text = build_prompt(template, instruction, kept) + completion
        return len(_token_ids(tokenizer, text)) + eos <= max_tokens

    try:
        kept = truncate_history(titles, fits)
    except ValueError:
        raise ValueError(f"target {target_title!r} with an empty history needs more than {max_tokens} tokens") from None
    return build_prompt(template, instruction, kept), completion, len(titles) - len(kept)


def choose_instruction(seed: int, user_id: str, position: int, instructions: Sequence[str]) -> str:
    """The phrasing for one record, fixed by (seed, user, position) whatever the processing order.

    Uses sha256 rather than `hash()`, which Python randomises per process.
    """
    digest = hashlib.sha256(f"{seed}\x1f{user_id}\x1f{position}".encode()).digest()
    return instructions[int.from_bytes(digest[:8], "big") % len(instructions)]


def _token_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` read as text: a title holding `<|endoftext|>` or `<|im_start|>` gets the ids of those
    characters, never the special token, so it neither ends a line early nor breaks the title trie."""
    return list(text_token_ids(tokenizer, text, add_special_tokens=False))


def text_token_ids(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """`tokenizer(text)`'s ids with every special token's text split as plain text (`split_special_tokens`);
    the tokenizer's own special tokens (a BOS) are added as usual with `add_special_tokens`."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"])


class SequenceEncoder:
    """Token ids of `sequence` documents (training) and prompts (evaluation), built line by line.

    A document is the header line, then one title a line. Each title is tokenised alone and followed by
    the newline token, the end marker: training, evaluation and the trie all use these same ids, so the
    model is scored on exactly what it was taught, whatever the tokenizer would make of the joined text.
    """

    def __init__(self, template: PromptTemplate, tokenizer):
        if template.format != "sequence":
            raise ValueError(f"SequenceEncoder needs a 'sequence' template, not {template.format!r}")
        self.template, self.tokenizer = template, tokenizer
        head = template.template.split("{history}", 1)[0].format(instruction=template.instructions[0])
        # Special tokens (a BOS) as the trainer adds them to a document's start.
        self.header_ids = list(tokenizer(head)["input_ids"])
        end = _token_ids(tokenizer, template.end_text)
        if len(end) != 1:
            raise ValueError(f"the tokenizer splits the line end {template.end_text!r} into {end}: "
                             "the sequence format needs it as one token")
        self.end_id = end[0]
        self._titles: dict[str, list[int]] = {}

    def title_ids(self, title: str) -> list[int]:
        """A title's tokens without the end marker (cached)."""
        ids = self._titles.get(title)
        if ids is None:
            ids = _token_ids(self.tokenizer, build_completion(title))
            if not ids or self.end_id in ids:
                raise ValueError(f"title {title!r} tokenises to {ids}: empty or holding the line end")
            self._titles[title] = ids
        return ids

    def line_ids(self, title: str) -> list[int]:
        """A title line: its tokens and the end marker."""
        return self.title_ids(title) + [self.end_id]

    def prompt_ids(self, history_titles: Sequence[str], max_tokens: int) -> tuple[list[int], int]:
        """Header plus the latest `template.max_history` titles that fit `max_tokens`.

        Returns:
            (token ids, titles dropped from the latest max_history to fit).
        """
        titles = list(history_titles)[-self.template.max_history:]
        budget = max_tokens - len(self.header_ids)
        if budget < 0:
            raise ValueError(f"the header alone needs {len(self.header_ids)} tokens, more than {max_tokens}")
        kept: list[list[int]] = []
        for title in reversed(titles):
            line = self.line_ids(title)
            if len(line) > budget:
                break
            kept.append(line)
            budget -= len(line)
        ids = list(self.header_ids)
        for line in reversed(kept):
            ids += line
        return ids, len(titles) - len(kept)

    def windows(self, titles: Sequence[str], max_tokens: int,
                latest: int | None = None) -> tuple[list[tuple[list[int], list[int]]], int]:
        """A user's training titles as documents of <= `max_tokens` tokens, cut at title boundaries.

        Every document starts with the header (no loss); each title line carries the loss on all its
        tokens and its end marker. Consecutive windows do not overlap, so one epoch sees each title once.

        Args:
            latest: None: windows filled from the first title on, all of them. N: windows filled from the
                latest title backwards (the last window is full and ends where the valid item follows),
                only the latest N of them.

        Returns:
            ([(input_ids, labels)], titles skipped because header + title alone exceed max_tokens).
        """
        budget = max_tokens - len(self.header_ids)
        lines, skipped = [], 0
        for title in titles:
            line = self.line_ids(title)
            if len(line) > budget:
                skipped += 1
            else:
                lines.append(line)
        groups: list[list[list[int]]] = []
        used = budget + 1  # forces a new group at the first line
        for line in (lines if latest is None else reversed(lines)):
            if used + len(line) > budget:
                if latest is not None and len(groups) == latest:
                    break
                groups.append([])
                used = 0
            groups[-1].append(line)
            used += len(line)
        if latest is not None:
            groups = [group[::-1] for group in reversed(groups)]
        out = []
        for group in groups:
            ids, labels = list(self.header_ids), [-100] * len(self.header_ids)
            for line in group:
                ids += line
                labels += line
            out.append((ids, labels))
        return out, skipped
