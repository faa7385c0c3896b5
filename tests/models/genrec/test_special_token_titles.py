"""Titles are text: a title holding a special token's text (`<|endoftext|>`, `<|pad|>`) is trained and ranked as
its characters, and a decode budget too short for the catalogue is refused in one line.

A tiny world of 8 titles, two of them with special-token text; a 2-layer random LLaMA whose byte-level BPE
tokenizer has `<|endoftext|>` (EOS) and `<|pad|>` as special tokens. Such a title used to pass ingest, split and
prompts and then stop evaluation in build_title_trie with a traceback.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import tiny_genrec as tiny
from genrec.config.params import EvalParams
from genrec.data.prompts import PromptTemplate, SequenceEncoder
from genrec.errors import DataError
from genrec.stages import evaluate

SPECIAL = ["Heat <|endoftext|> (1995)", "<|pad|>Babe (1995)"]
TITLES = [*SPECIAL, "Toy Story (1995)", "Casino (1995)", "Sabrina (1995)", "Nixon (1995)", "Powder (1995)",
          "Balto (1995)"]
SEQUENCES = {f"u{u}": [str((u * 3 + p * 5) % len(TITLES)) for p in range(5)] for u in range(6)}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("special")
    processed = tiny.write_split(tmp / "processed", SEQUENCES, titles={str(i): t for i, t in enumerate(TITLES)})
    template = PromptTemplate.sequence(max_history=5)
    prompts = tmp / "prompts"
    prompts.mkdir()
    template.save(prompts / "template.json")
    (prompts / "test.jsonl").write_text("".join(json.dumps({
        "user_id": user, "instruction": template.instructions[0], "history_titles": [], "target_item_id": items[-1]})
        + "\n" for user, items in SEQUENCES.items()))
    base = tiny.write_backbone(tmp / "base", TITLES + [template.template])
    return {"tmp": tmp, "processed": processed, "prompts": prompts, "base": base, "template": template}


def tokenizer(world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(world["base"])


def test_training_documents_hold_the_titles_characters_not_the_special_tokens(world):
    from genrec.models.genrec.sft_data import sequence_dataset

    tok = tokenizer(world)
    encoder = SequenceEncoder(world["template"], tok)
    for title in SPECIAL:
        ids = encoder.title_ids(title)
        assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
        assert tok.decode(ids) == title
    packed, stats = sequence_dataset(world["processed"], encoder, 128, None, 0)
    assert stats["titles_skipped"] == 0
    labels = [t for row in packed["labels"] for t in row if t != -100]
    assert tok.eos_token_id not in labels and tok.pad_token_id not in labels
    assert stats["completion_tokens"] == sum(len(encoder.line_ids(TITLES[int(i)])) for items in SEQUENCES.values()
                                             for i in items[:-2])


def instruction_prompts(folder: Path) -> Path:
    """The test records in the `instruction` format (titles end with EOS there, and are the prompt's history)."""
    folder.mkdir()
    PromptTemplate(max_history=5).save(folder / "template.json")
    (folder / "test.jsonl").write_text("".join(json.dumps({
        "user_id": user, "instruction": "Which title comes next?", "target_item_id": items[-1],
        "history_titles": [TITLES[int(i)] for i in items[:-2]]}) + "\n" for user, items in SEQUENCES.items()))
    return folder


@pytest.mark.parametrize("form", ["sequence", "instruction"])
def test_evaluation_ranks_a_title_holding_special_token_text(world, tmp_path, form):
    """In the instruction format, EOS ends a title: `<|endoftext|>` read as EOS stopped build_title_trie."""
    p = replace(tiny.params(tmp_path), eval=replace(EvalParams(batch_size=4, bootstrap_samples=20), num_beams=8,
                                                    k=[5]))
    prompts = world["prompts"] if form == "sequence" else instruction_prompts(tmp_path / "prompts")
    metrics = evaluate.run(p, base_dir=world["base"], model_dir=None, prompts_dir=prompts,
                           processed_dir=world["processed"], metrics_path=tmp_path / "m.json",
                           predictions_path=tmp_path / "p.jsonl")
    assert metrics["users"] == len(SEQUENCES)
    ranked = [e["title"] for line in (tmp_path / "p.jsonl").read_text().splitlines()
              for e in json.loads(line)["ranked"]]
    assert set(SPECIAL) <= set(ranked)


def test_a_decode_budget_shorter_than_the_longest_title_is_refused_in_one_line(world, tmp_path):
    """eval.max_new_tokens=1 made every beam title-less while the protocol said invalid beams were impossible."""
    tok = tokenizer(world)
    encoder = SequenceEncoder(world["template"], tok)
    needed = max(len(encoder.title_ids(t)) for t in TITLES) + 1
    p = replace(tiny.params(tmp_path), eval=replace(EvalParams(batch_size=4, bootstrap_samples=20),
                                                    max_new_tokens=needed - 1))
    with pytest.raises(DataError, match=rf"eval.max_new_tokens={needed - 1} .* at least {needed}\b"):
        evaluate.run(p, base_dir=world["base"], model_dir=None, prompts_dir=world["prompts"],
                     processed_dir=world["processed"], metrics_path=tmp_path / "m.json",
                     predictions_path=tmp_path / "p.jsonl")
    assert not (tmp_path / "m.json").exists()
    p = replace(p, eval=replace(p.eval, max_new_tokens=needed, num_beams=2, k=[1]))
    assert evaluate.run(p, base_dir=world["base"], model_dir=None, prompts_dir=world["prompts"],
                        processed_dir=world["processed"], metrics_path=tmp_path / "m.json",
                        predictions_path=tmp_path / "p.jsonl")["users"] == len(SEQUENCES)


def test_the_instruction_format_refuses_a_title_holding_special_token_text_in_one_line(world, tmp_path):
    """TRL tokenises the instruction format's text itself and would make EOS of `<|endoftext|>`: refused, naming
    the prompts file, the row and the token (the sequence format trains such titles as text)."""
    from genrec.models.genrec.sft_data import prompt_dataset

    path = tmp_path / "train.jsonl"
    rows = [{"user_id": "u0", "instruction": "Recommend.", "history_titles": ["Toy Story (1995)"],
             "output": "Casino (1995)", "target_item_id": "3"},
            {"user_id": "u1", "instruction": "Recommend.", "history_titles": ["Toy Story (1995)"],
             "output": SPECIAL[0], "target_item_id": "0"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 2.*'<\|endoftext\|>'.*train\.format=sequence") as err:
        prompt_dataset(path, PromptTemplate(max_history=5), tokenizer(world), 128, None, 0)
    assert "\n" not in str(err.value)
