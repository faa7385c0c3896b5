"""GenRec on an item index, end to end on a tiny world: the item view, code tokens trained with the adapter,
saved and reloaded with it, and a code-trie search that only returns real items."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import tiny_genrec
from genrec.config.params import EvalParams, LoraParams, PromptsParams, TrainParams
from genrec.errors import DataError
from genrec.indexing.codes import ItemCodes, separate_collisions
from genrec.io import split_fingerprint
from genrec.stages import evaluate, item_view, prompts, train

ROOT = Path(__file__).resolve().parents[2]


def two_level_codes(items: list[str]) -> ItemCodes:
    """Items in groups of 5 by id order, then a last code: the shape of a semantic index."""
    ordered = sorted(items, key=int)
    return separate_collisions("semantic", {item: (i // 5,) for i, item in enumerate(ordered)},
                               [len(ordered) // 5 + 1])


def tiny_params(tmp: Path):
    params = tiny_genrec.params(tmp)
    tp = TrainParams(format="sequence", seed=3, epochs=1, max_steps=8, recent_windows=None, max_valid_samples=None,
                     batch_size=4, micro_batch_size=4, learning_rate=2e-2, warmup=1, max_seq_length=64, bf16=False,
                     logging_steps=2, eval_steps=None, save_steps=100, prompt_history=4,
                     accelerate_profile=str(ROOT / "configs" / "accelerate" / "cpu.yaml"),
                     lora=LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    return dataclasses.replace(params, train=tp, prompts=PromptsParams(train_targets=2),
                               eval=EvalParams(batch_size=4, bootstrap_samples=20, max_new_tokens=None))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    processed = tiny_genrec.write_split(tmp / "processed")
    codes = two_level_codes(list(pd.read_parquet(processed / "items.parquet")["item_id"]))
    codes.save(tmp / "index")
    texts = tiny_genrec.TITLES + ["Recent items:"] + codes.vocabulary()
    base = tiny_genrec.write_backbone(tmp / "base", texts=texts)
    params = tiny_params(tmp)
    item_view.run(params, processed_dir=processed, index_dir=tmp / "index", out_dir=tmp / "view")
    prompts.run(params, processed_dir=tmp / "view", out_dir=tmp / "prompts")
    trained = train.run(params, base_dir=base, prompts_dir=tmp / "prompts", processed_dir=tmp / "view",
                        out_dir=tmp / "model")
    return tmp, params, codes, trained


def test_the_view_keeps_the_split_and_names_items_by_codes(world):
    tmp, _, codes, _ = world
    assert split_fingerprint(tmp / "view") == split_fingerprint(tmp / "processed")
    items = pd.read_parquet(tmp / "view" / "items.parquet")
    titles = pd.read_parquet(tmp / "processed" / "items.parquet").set_index("item_id")["title"]
    for item, text, shown in zip(items["item_id"], items["title"], items["display_title"]):
        assert text == codes.text(item) and shown == titles[item]
    assert ItemCodes.load(tmp / "view") == codes


def test_code_tokens_are_saved_with_the_adapter(world):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tmp, _, codes, _ = world
    tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
    for token in codes.vocabulary():
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token  # each code is one whole token
    assert len(tokenizer(codes.text("3"), add_special_tokens=False)["input_ids"]) == codes.depth
    adapter = load_file(tmp / "model" / "adapter_model.safetensors")
    assert not [k for k in adapter if "base_layer" in k]  # not the whole resized embedding, only the trained rows
    rows = [k for k in adapter if "trainable_tokens" in k]
    assert rows and any(v.shape[0] == len(codes.vocabulary()) for k, v in adapter.items() if k in rows)
    config = json.loads((tmp / "model" / "adapter_config.json").read_text())
    assert sorted(next(iter(config["trainable_token_indices"].values()))) == \
        sorted(tokenizer.convert_tokens_to_ids(codes.vocabulary()))


def test_the_code_rows_trained_and_reload(world):
    """The reloaded model's code embeddings are the trained ones, not the resized backbone's mean rows."""
    from genrec.models.genrec.backbone import load_backbone
    from genrec.models.genrec.evaluation import load_model

    tmp, _, codes, _ = world
    merged, tokenizer, _ = load_model(tmp / "base", tmp / "model", tmp / "prompts", "float32", "cpu")
    ids = tokenizer.convert_tokens_to_ids(codes.vocabulary())
    base, base_tokenizer = load_backbone(tmp / "base", dtype="float32")
    mean = base.get_input_embeddings().weight.mean(0)
    trained = merged.get_input_embeddings().weight[ids]
    assert not torch.allclose(trained, mean.expand_as(trained), atol=1e-4)
    assert merged.get_input_embeddings().weight.shape[0] == len(tokenizer) > len(base_tokenizer)
    # Tied embeddings: the LM head scores the code tokens with the same trained rows.
    assert torch.equal(merged.get_output_embeddings().weight[ids], trained)


def test_evaluation_returns_only_real_items(world):
    tmp, params, codes, _ = world
    metrics = evaluate.run(params, base_dir=tmp / "base", model_dir=tmp / "model", prompts_dir=tmp / "prompts",
                           processed_dir=tmp / "view", metrics_path=tmp / "m.json", predictions_path=tmp / "p.jsonl")
    written = json.loads((tmp / "m.json").read_text())
    assert written["model"] == "genrec-semantic" and written["index"] == "semantic"
    assert metrics["valid_beam_share"] == 1.0 and written["split_fingerprint"] == split_fingerprint(tmp / "processed")
    text_of = {codes.text(item): item for item in codes.codes}
    for line in (tmp / "p.jsonl").read_text().splitlines():
        for entry in json.loads(line)["ranked"]:
            assert entry["title"] in text_of and entry["item_ids"] == [text_of[entry["title"]]]


def test_an_index_not_naming_the_catalogue_is_refused(world, tmp_path):
    tmp, params, codes, _ = world
    partial = ItemCodes("semantic", dict(list(codes.codes.items())[:-1]), codes.level_sizes)
    partial.save(tmp_path / "index")
    with pytest.raises(DataError, match="1 catalogue items have no codes"):
        item_view.run(params, processed_dir=tmp / "processed", index_dir=tmp_path / "index", out_dir=tmp_path / "v")
    assert not (tmp_path / "v").exists()
