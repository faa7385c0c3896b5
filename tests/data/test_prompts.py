"""Prompt building: history formats, template I/O, truncation and token budgets with a real tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from genrec.config.params import PromptsParams
from genrec.data.prompts import (
    DEFAULT_TEMPLATE,
    INSTRUCTIONS,
    SEQUENCE_HEADER,
    SEQUENCE_TEMPLATE,
    PromptTemplate,
    SequenceEncoder,
    build_completion,
    build_prompt,
    choose_instruction,
    completion_token_ids,
    fit_to_token_budget,
    format_history,
    parse_history,
    truncate_history,
)

TRICKY = [
    "American President, The (1995)",
    'Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964)',
    'He Said "No", She Said "Yes" (2001)',
    "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "Léon: The Professional (a.k.a. The Professional) (Léon) (1994)",
    "千と千尋の神隠し (2001)",
    "Back\\slash {braces} (2000)",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (the GPT-2/LLaMA-3/SmolLM2 kind), trained here: no hub download."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [build_prompt(PromptTemplate(), i, TRICKY) + TRICKY[0] for i in INSTRUCTIONS]
    tok.train_from_iterator(corpus * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("fmt", ["lines", "quoted"])
def test_unambiguous_formats_round_trip(fmt):
    for titles in (TRICKY, TRICKY[:1], []):
        assert parse_history(format_history(titles, fmt), fmt) == titles


def test_quoted_format_is_json_literals():
    assert format_history(["A, B (1999)", "C"], "quoted") == '"A, B (1999)", "C"'
    assert format_history(["Amélie"], "quoted") == '"Amélie"'


def test_comma_format_is_ambiguous_and_not_parsed():
    one_title = format_history(["American President, The (1995)"], "comma")
    two_titles = format_history(["American President", "The (1995)"], "comma")
    assert one_title == two_titles == "American President, The (1995)"
    with pytest.raises(ValueError, match="ambiguous"):
        parse_history(one_title, "comma")


def test_lines_rejects_titles_it_could_not_parse_back():
    with pytest.raises(ValueError):
        format_history(["a\nb"], "lines")
    with pytest.raises(ValueError):
        format_history([""], "lines")
    with pytest.raises(ValueError):
        format_history(["a"], "tabs")


def test_template_validates_and_round_trips(tmp_path):
    t = PromptTemplate(history_format="quoted", max_history=3, instructions=("Next?", "What now?"))
    t.save(tmp_path / "template.json")
    assert PromptTemplate.load(tmp_path / "template.json") == t
    assert json.loads((tmp_path / "template.json").read_text())["instructions"] == ["Next?", "What now?"]
    assert PromptTemplate.from_dict(PromptTemplate().to_dict()) == PromptTemplate()
    assert PromptTemplate.from_params(PromptsParams(max_history=4, history_format="comma")).max_history == 4
    with pytest.raises(ValueError, match="placeholders"):
        PromptTemplate(template="{instruction} {history} {target}")
    with pytest.raises(ValueError, match="placeholders"):
        PromptTemplate(template="{history}")
    with pytest.raises(ValueError):
        PromptTemplate(history_format="tabs")
    with pytest.raises(ValueError, match="unknown"):
        PromptTemplate.from_dict({"system": "You are helpful"})


def test_defaults_are_short_and_clean():
    assert len(INSTRUCTIONS) >= 5 and len(set(INSTRUCTIONS)) == len(INSTRUCTIONS)
    assert all("\n" not in i and "noqa" not in i and len(i) < 100 for i in INSTRUCTIONS)
    assert DEFAULT_TEMPLATE.endswith(":\n") and "noqa" not in DEFAULT_TEMPLATE


def test_build_prompt_uses_last_titles_and_never_the_target():
    template = PromptTemplate(max_history=3)
    history = [f"Film {i} (199{i})" for i in range(6)]
    prompt = build_prompt(template, INSTRUCTIONS[0], history)
    assert prompt.startswith(INSTRUCTIONS[0])
    assert format_history(history[-3:], "lines") in prompt
    assert "Film 2 (1992)" not in prompt and "Target (2000)" not in prompt
    assert prompt + build_completion("Target (2000)") == prompt + "Target (2000)"


def test_braces_in_titles_are_not_template_fields():
    prompt = build_prompt(PromptTemplate(), "Next?", [TRICKY[-1]])
    assert TRICKY[-1] in prompt


def test_truncate_drops_oldest_first():
    titles = ["a", "bb", "ccc", "dddd"]
    calls = []

    def fits(kept):
        calls.append(list(kept))
        return sum(map(len, kept)) <= 7

    assert truncate_history(titles, fits) == ["ccc", "dddd"]
    assert truncate_history(titles, lambda kept: True) == titles
    assert truncate_history(titles, lambda kept: len(kept) == 0) == []
    with pytest.raises(ValueError):
        truncate_history(titles, lambda kept: False)


def test_truncate_calls_fits_logarithmically():
    calls = []

    def fits(kept):
        calls.append(len(kept))
        return len(kept) <= 37

    assert len(truncate_history(list(range(1000)), fits)) == 37
    assert len(calls) <= 2 + 11


def test_completion_tokens_split_cleanly(tokenizer):
    template = PromptTemplate()
    prompt = build_prompt(template, INSTRUCTIONS[1], TRICKY[:3])
    for title in TRICKY:
        completion = build_completion(title)
        joint = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        alone = tokenizer(completion, add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert joint == prompt_ids + alone
        assert completion_token_ids(template, tokenizer, title) == alone


def test_completion_token_ids_detects_a_merging_boundary(tokenizer):
    # A template ending in a space: byte-level BPE glues that space to the title's first word.
    glued = PromptTemplate(template="{instruction}\n{history}\nNext: ")
    with pytest.raises(ValueError, match="merges"):
        completion_token_ids(glued, tokenizer, "The Professional (1994)")


def test_fit_to_token_budget(tokenizer):
    template = PromptTemplate(max_history=5)
    history, target = TRICKY[:6], TRICKY[6]
    full_prompt, completion, dropped = fit_to_token_budget(template, "Next?", history, target, tokenizer, 10_000)
    assert dropped == 0 and completion == target and full_prompt == build_prompt(template, "Next?", history)
    need_all = n_tokens(tokenizer, full_prompt + completion) + 1

    prompt, completion, dropped = fit_to_token_budget(template, "Next?", history, target, tokenizer, need_all - 1)
    assert dropped >= 1 and completion == target
    assert n_tokens(tokenizer, prompt + completion) + 1 <= need_all - 1
    assert prompt == build_prompt(template, "Next?", history[-5 + dropped:])  # the oldest went first
    assert target not in prompt

    bare = n_tokens(tokenizer, build_prompt(template, "Next?", []) + target) + 1
    prompt, _, dropped = fit_to_token_budget(template, "Next?", history, target, tokenizer, bare)
    assert dropped == 5 and prompt == build_prompt(template, "Next?", [])
    with pytest.raises(ValueError, match="empty history"):
        fit_to_token_budget(template, "Next?", history, target, tokenizer, bare - 1)


def test_fit_to_token_budget_for_evaluation_counts_only_the_prompt(tokenizer):
    template = PromptTemplate(max_history=5)
    prompt_only = n_tokens(tokenizer, build_prompt(template, "Next?", TRICKY[:5]))
    prompt, completion, dropped = fit_to_token_budget(template, "Next?", TRICKY[:5], "", tokenizer, prompt_only)
    assert (completion, dropped) == ("", 0)
    _, _, dropped = fit_to_token_budget(template, "Next?", TRICKY[:5], "", tokenizer, prompt_only - 1)
    assert dropped >= 1


def test_choose_instruction_is_deterministic_and_varied():
    picks = [choose_instruction(42, f"u{u}", p, INSTRUCTIONS) for u in range(50) for p in range(4)]
    again = [choose_instruction(42, f"u{u}", p, INSTRUCTIONS) for u in reversed(range(50)) for p in range(4)]
    assert picks == [again[(49 - i // 4) * 4 + i % 4] for i in range(len(again))]
    assert set(picks) == set(INSTRUCTIONS)
    other_seed = [choose_instruction(7, f"u{u}", p, INSTRUCTIONS) for u in range(50) for p in range(4)]
    assert other_seed != picks


def test_choose_instruction_is_stable_across_processes():
    # Python's hash() changes with PYTHONHASHSEED; the choice must not.
    code = ("from genrec.data.prompts import INSTRUCTIONS, choose_instruction as c; "
            "print([INSTRUCTIONS.index(c(42, f'u{u}', 3, INSTRUCTIONS)) for u in range(20)])")
    outputs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    expected = [INSTRUCTIONS.index(choose_instruction(42, f"u{u}", 3, INSTRUCTIONS)) for u in range(20)]
    assert outputs == {f"{expected}\n"}


def test_choose_instruction_is_pinned():
    # A regression pin: changing the hash silently changes every generated prompts dataset.
    assert [INSTRUCTIONS.index(choose_instruction(42, str(u), 3, INSTRUCTIONS)) for u in range(12)] == [
        4, 3, 5, 3, 5, 1, 1, 0, 0, 3, 4, 5]


def test_sequence_template_round_trips_and_ends_lines(tmp_path):
    template = PromptTemplate.sequence(max_history=3)
    template.save(tmp_path / "t.json")
    assert PromptTemplate.load(tmp_path / "t.json") == template
    assert template.format == "sequence" and template.end_text == "\n" and PromptTemplate().end_text == ""
    assert build_prompt(template, SEQUENCE_HEADER, ["A (1)", "B (2)", "C (3)", "D (4)"]) == \
        f"{SEQUENCE_HEADER}\nB (2)\nC (3)\nD (4)\n"
    with pytest.raises(ValueError, match="history_format"):
        PromptTemplate(template=SEQUENCE_TEMPLATE, history_format="quoted", format="sequence")
    with pytest.raises(ValueError, match="format="):
        PromptTemplate(format="chat")


def test_sequence_windows_cut_at_title_boundaries_with_every_title_once(tokenizer):
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=20), tokenizer)
    titles = [f"Title number {i} ({1990 + i})" for i in range(40)]
    windows, skipped = encoder.windows(titles, max_tokens=64)
    assert skipped == 0 and len(windows) > 3
    seen = []
    for ids, labels in windows:
        assert len(ids) == len(labels) <= 64
        assert ids[:len(encoder.header_ids)] == encoder.header_ids
        assert set(labels[:len(encoder.header_ids)]) == {-100}  # no loss on the header
        body = ids[len(encoder.header_ids):]
        assert labels[len(encoder.header_ids):] == body  # loss on every title token and its line end
        assert body[-1] == encoder.end_id
        seen += tokenizer.decode(body).split("\n")[:-1]
    assert seen == titles  # in order, each exactly once, none cut
    assert encoder.end_id == tokenizer("\n", add_special_tokens=False)["input_ids"][0]


def test_sequence_windows_latest_fill_backwards_from_the_last_title(tokenizer):
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=20), tokenizer)
    titles = [f"Title number {i} ({1990 + i})" for i in range(43)]
    every, _ = encoder.windows(titles, max_tokens=64, latest=100)
    assert len(every) > 3

    def body(window):
        return tokenizer.decode(window[0][len(encoder.header_ids):]).split("\n")[:-1]

    assert sum((body(w) for w in every), []) == titles  # still every title once, in order
    latest, _ = encoder.windows(titles, max_tokens=64, latest=2)
    assert latest == every[-2:]
    assert body(latest[-1])[-1] == titles[-1]
    line = len(encoder.line_ids(titles[-1]))
    assert len(latest[-1][0]) > 64 - line  # the window that ends at the latest title is full
    first, _ = encoder.windows(titles, max_tokens=64)
    assert len(first[-1][0]) < len(latest[-1][0])  # filled from the start, the last window is the remainder


def test_sequence_windows_skip_a_title_longer_than_the_budget(tokenizer):
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=20), tokenizer)
    windows, skipped = encoder.windows(["Short (1)", "A very long title " * 20, "Other (2)"], max_tokens=40)
    assert skipped == 1
    assert tokenizer.decode(windows[0][0][len(encoder.header_ids):]) == "Short (1)\nOther (2)\n"


def test_sequence_prompt_keeps_the_latest_titles_that_fit(tokenizer):
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=3), tokenizer)
    titles = [f"Title number {i} ({1990 + i})" for i in range(6)]
    ids, dropped = encoder.prompt_ids(titles, max_tokens=1000)
    assert dropped == 0
    assert tokenizer.decode(ids) == build_prompt(encoder.template, SEQUENCE_HEADER, titles)
    small = len(encoder.header_ids) + len(encoder.line_ids(titles[-1])) + 1
    ids, dropped = encoder.prompt_ids(titles, max_tokens=small)
    assert dropped == 2 and tokenizer.decode(ids) == f"{SEQUENCE_HEADER}\n{titles[-1]}\n"
