"""genrec.models.genrec.sft_data, sft_loss and sft_trainer: prompt records to a TRL dataset, the EOS check,
the LM-head compaction, the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genrec.models.genrec import sft_data, sft_loss, sft_trainer
from genrec.errors import DataError
from genrec.config.params import LoraParams, Params, TrainParams
from genrec.data.prompts import PromptTemplate

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)

TITLES = [f"Film number {n}, The ({1950 + n})" for n in range(30)]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer (like SmolLM2's) trained on the titles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TITLES + [PromptTemplate().template], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def write_records(path: Path, n: int, history: int = 8) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            titles = TITLES[i % 10:i % 10 + history + 1]
            fh.write(json.dumps({"user_id": f"u{i}", "instruction": "Which title comes next?",
                                 "history_titles": titles[:-1], "output": titles[-1]}) + "\n")
    return path


def test_prompt_dataset_fits_the_budget_and_counts_truncation(tokenizer, tmp_path):
    path = write_records(tmp_path / "train.jsonl", 6)
    template = PromptTemplate(max_history=8)
    data, stats = sft_data.prompt_dataset(path, template, tokenizer, max_tokens=10_000, limit=None, seed=0)
    assert stats == {"records": 6, "truncated": 0, "titles_dropped": 0}
    full = len(tokenizer(data[0]["prompt"] + data[0]["completion"])["input_ids"])
    data, stats = sft_data.prompt_dataset(path, template, tokenizer, max_tokens=full - 5, limit=None, seed=0)
    assert stats["truncated"] == 6 and stats["titles_dropped"] >= 6
    for row in data:
        assert len(tokenizer(row["prompt"] + row["completion"])["input_ids"]) + 1 <= full - 5
        assert row["completion"] in TITLES  # the target is never cut


def test_prompt_dataset_subsample_is_seeded(tokenizer, tmp_path):
    path = write_records(tmp_path / "train.jsonl", 20)
    template = PromptTemplate()
    first = sft_data.prompt_dataset(path, template, tokenizer, 10_000, limit=5, seed=3)[0]["prompt"]
    assert first == sft_data.prompt_dataset(path, template, tokenizer, 10_000, limit=5, seed=3)[0]["prompt"]
    assert first != sft_data.prompt_dataset(path, template, tokenizer, 10_000, limit=5, seed=4)[0]["prompt"]
    assert len(first) == 5


def test_prompt_dataset_bad_records_name_the_row(tokenizer, tmp_path):
    path = write_records(tmp_path / "train.jsonl", 2)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError, match="row 3"):
        sft_data.prompt_dataset(path, PromptTemplate(), tokenizer, 10_000, None, 0)
    path.write_text(json.dumps({"instruction": "x", "history_titles": []}) + "\n")
    with pytest.raises(DataError, match="row 1.*'output'"):
        sft_data.prompt_dataset(path, PromptTemplate(), tokenizer, 10_000, None, 0)
    write_records(path, 1)
    with pytest.raises(DataError, match="train.max_seq_length"):
        sft_data.prompt_dataset(path, PromptTemplate(), tokenizer, 5, None, 0)


def test_sft_config_carries_the_params(tmp_path):
    tp = TrainParams(batch_size=16, micro_batch_size=4, learning_rate=3e-4, warmup=0.1, max_steps=7, bf16=False,
                     eval_steps=None)
    config = sft_trainer.sft_config(Params(train=tp), tmp_path, num_processes=2)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 2)
    assert (config.learning_rate, config.warmup_steps, config.max_steps, config.max_length) == (3e-4, 0.1, 7, 256)
    assert config.completion_only_loss and not config.bf16 and config.eval_strategy == "no"
    assert config.report_to == []  # the stage logs to MLflow itself, into the run whose id it saves
    lora = sft_trainer.lora_config(LoraParams(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (8, 16, 0.05, {"q_proj", "v_proj"})


def test_completion_positions_only_gives_the_same_loss_and_gradients():
    """TRL's fused head with every position scored, with only labelled ones, and plain full logits agree."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    add_fused_lm_head(model)
    model = get_peft_model(model, sft_trainer.lora_config(LoraParams(dropout=0.0)))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # off its zero init, so that lora_A gets gradients too
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :15] = -100
    shifted = labels[:, 1:]

    def loss_and_grads(mode):
        model.zero_grad()
        if mode == "logits":
            log_probs = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
            log_probs = log_probs.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (shifted != -100)
        else:
            with sft_loss.completion_positions_only(mode == "compact"):
                log_probs = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        loss = -log_probs.sum() / (shifted != -100).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ref_loss, ref_grads = loss_and_grads("logits")
    assert all(g.abs().max() > 0 for g in ref_grads)
    for mode in ("every position", "compact"):
        loss, grads = loss_and_grads(mode)
        assert torch.allclose(loss, ref_loss, atol=1e-6), mode
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, ref_grads)), mode


def test_the_private_trl_switch_exists_in_the_pinned_trl(root):
    """`completion_positions_only` overrides TRL's private `_use_triton`: fail when TRL moves or drops it,
    or when pyproject.toml pins another TRL than the one the override was written for."""
    import tomllib

    import trl
    import trl.trainer.utils as trl_utils

    pins = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"trl=={sft_loss.TRL_PATCHED_VERSION}" in pins
    assert trl.__version__ == sft_loss.TRL_PATCHED_VERSION
    assert callable(getattr(trl_utils, "_use_triton", None)), "trl.trainer.utils._use_triton is gone"
    original = trl_utils._use_triton
    with sft_loss.completion_positions_only(True):
        assert trl_utils._use_triton is not original and trl_utils._use_triton(torch.device("cpu"))
    assert trl_utils._use_triton is original


def test_another_trl_version_is_left_unpatched(monkeypatch):
    import trl
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl, "__version__", "99.0.0")
    original = trl_utils._use_triton
    with sft_loss.completion_positions_only(True):
        assert trl_utils._use_triton is original


def test_check_prepared_rejects_a_double_or_missing_eos():
    from datasets import Dataset

    ok = {"input_ids": [[5, 6, 7, 2]], "labels": [[-100, -100, 7, 2]]}
    assert sft_data.check_prepared(Dataset.from_dict(ok), eos_token_id=2, max_length=8) == {
        "tokens": 4, "completion_tokens": 2}
    for bad in ({"input_ids": [[5, 6, 2, 2]], "labels": [[-100, -100, 2, 2]]},   # tokenizer added a second EOS
                {"input_ids": [[5, 6, 7, 8]], "labels": [[-100, -100, 7, 8]]}):  # truncated: EOS cut off
        with pytest.raises(RuntimeError, match="exactly one EOS"):
            sft_data.check_prepared(Dataset.from_dict(bad), eos_token_id=2, max_length=8)


def test_batch_size_must_split_over_micro_batches_and_processes(tmp_path):
    assert sft_trainer.accumulation_steps(TrainParams(batch_size=128, micro_batch_size=4), num_processes=4) == 8
    with pytest.raises(DataError, match="train.batch_size=6"):
        sft_trainer.accumulation_steps(TrainParams(batch_size=6, micro_batch_size=2), num_processes=2)


def test_verify_adapter_fails_loudly_on_empty_or_untrained_adapters(tmp_path):
    from safetensors.torch import save_file

    initial = {"m.lora_A.weight": torch.ones(2, 4), "m.lora_B.weight": torch.zeros(4, 2)}
    path = tmp_path / "adapter_model.safetensors"
    with pytest.raises(RuntimeError, match="saved 0 tensors"):
        sft_trainer.verify_adapter(tmp_path, initial)  # no file at all
    save_file({"m.lora_A.weight": torch.ones(2, 4)}, path)
    with pytest.raises(RuntimeError, match="saved 1 tensors"):
        sft_trainer.verify_adapter(tmp_path, initial)
    save_file({k: v.clone() for k, v in initial.items()}, path)
    with pytest.raises(RuntimeError, match="still equal their initialisation"):
        sft_trainer.verify_adapter(tmp_path, initial)
    save_file({"m.lora_A.weight": torch.ones(2, 4), "m.lora_B.weight": torch.full((4, 2), 1e-3)}, path)
    sft_trainer.verify_adapter(tmp_path, initial)


def write_split(folder: Path) -> Path:
    """A leave-one-out split whose valid and test items appear in no training sequence."""
    train = {u: [(u * 3 + p) % 20 for p in range(6 + u)] for u in range(4)}  # items 0..19 only
    sequences = {f"u{u}": [str(i) for i in items + [20 + u, 25 + u]]  # valid: 20-23, test: 25-28
                 for u, items in train.items()}
    return tiny_genrec.write_split(folder, sequences, {str(i): t for i, t in enumerate(TITLES)},
                                   timestamp=lambda u, p: p)


def test_sequence_documents_hold_training_items_only(tokenizer, tmp_path):
    from genrec.data.prompts import SequenceEncoder

    processed = write_split(tmp_path / "processed")
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=5), tokenizer)
    packed, stats = sft_data.sequence_dataset(processed, encoder, 96, None, 0)
    header = tokenizer.decode(encoder.header_ids)
    lines = []
    for row in packed:
        assert len(row["input_ids"]) <= 96 and sum(row["seq_lengths"]) == len(row["input_ids"])
        lines += [line for line in tokenizer.decode(row["input_ids"]).replace(header, "").split("\n") if line]
    expected = [TITLES[(u * 3 + p) % 20] for u in range(4) for p in range(6 + u)]
    assert sorted(lines) == sorted(expected)  # every training title once, and nothing else
    assert not {TITLES[i] for i in range(20, 30)} & set(lines)  # no valid or test title
    assert stats["users"] == 4 and stats["completion_tokens"] < stats["tokens"]
    valid = sft_data.next_title_dataset(processed, encoder, 96, None, 0)
    for row, u in zip(valid, range(4)):
        target = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert tokenizer.decode(target) == TITLES[20 + u] + "\n"  # the loss is on the valid title only


def test_recent_windows_keep_each_users_latest_training_titles(tokenizer, tmp_path):
    from genrec.data.prompts import SequenceEncoder

    processed = write_split(tmp_path / "processed")
    encoder = SequenceEncoder(PromptTemplate.sequence(max_history=5), tokenizer)
    header_tokens = len(encoder.header_ids)
    line = max(len(encoder.line_ids(title)) for title in TITLES)
    budget = header_tokens + 2 * line  # room for two titles at least
    packed, stats = sft_data.sequence_dataset(processed, encoder, budget, None, 0, recent=1)
    header = tokenizer.decode(encoder.header_ids)
    docs = [tokenizer.decode(row["input_ids"][start:start + n])
            for row in packed for start, n in zip(accumulate_starts(row["seq_lengths"]), row["seq_lengths"])]
    assert stats["records"] == 4  # one window per user
    for u in range(4):
        train = [TITLES[(u * 3 + p) % 20] for p in range(6 + u)]
        mine = [d for d in docs if d.replace(header, "").split("\n")[:-1] == train[-len(d.replace(header, "")
                                                                                         .split("\n")[:-1]):]]
        assert mine, f"user u{u}: no document ends with the latest training title"
    everything, _ = sft_data.sequence_dataset(processed, encoder, budget, None, 0)
    assert len(everything) > len(packed)


@pytest.mark.parametrize("num_items", [None, 37])
def test_the_lean_sequence_loss_equals_the_models_own_loss_and_gradients(num_items):
    """labelled_lm_loss (LM head on labelled positions, chunked float32 cross-entropy) = transformers' loss."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    model = get_peft_model(model, sft_trainer.lora_config(LoraParams(dropout=0.0)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(0, 300, (3, 23), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100   # a header
    labels[2, 17:] = -100  # right padding
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    def loss_and_grads(lean):
        model.zero_grad()
        if lean:
            hidden = sft_loss.final_hidden_states(model, input_ids=ids)
            # chunk_rows=7: chunks that do not divide the 57 labelled rows
            loss = sft_loss.labelled_lm_loss(hidden, labels, model.get_output_embeddings(),
                                             kwargs.get("num_items_in_batch"), chunk_rows=7)
        else:
            loss = model(input_ids=ids, labels=labels, **kwargs).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ref_loss, ref_grads = loss_and_grads(False)
    loss, grads = loss_and_grads(True)
    assert all(g.abs().max() > 0 for g in ref_grads)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_chunked_cross_entropy_matches_torch_in_bfloat16():
    logits = torch.randn(50, 1000, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (50,), generator=torch.Generator().manual_seed(1))
    loss = sft_loss.chunked_cross_entropy(logits, targets, chunk_rows=16)
    loss.backward()
    ours = logits.grad.clone()
    logits.grad = None
    ref = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(ours, logits.grad)
    assert sft_loss.chunked_cross_entropy(logits[:0], targets[:0]).item() == 0.0


def test_final_hidden_states_gives_the_bits_all_hidden_states_gave_under_mixed_precision():
    """The decoder's output through a hook = hidden_states[-1] of output_hidden_states=True, with the model wrapped
    as accelerate wraps it under bf16 (autocast, outputs upcast to float32): same loss and LoRA gradients, bit
    for bit, and no layer's states come back."""
    from accelerate.utils import convert_outputs_to_fp32
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    model = get_peft_model(model.to(torch.bfloat16), sft_trainer.lora_config(LoraParams(dropout=0.0)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward))
    ids = torch.randint(0, 300, (3, 23), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    none = torch.zeros(0, dtype=torch.long)
    lora = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(hidden):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sft_loss.labelled_lm_loss(hidden, labels, model.get_output_embeddings())
        loss.backward()
        grads = [p.grad.clone() for p in lora]
        model.zero_grad()
        return loss.detach(), grads

    every_layer = model(input_ids=ids, logits_to_keep=none, output_hidden_states=True)
    assert len(every_layer.hidden_states) == 3 and every_layer.hidden_states[-1].dtype == torch.float32
    loss, grads = loss_and_grads(every_layer.hidden_states[-1])
    hidden = sft_loss.final_hidden_states(model, input_ids=ids)
    assert hidden.dtype == torch.bfloat16  # the decoder's own output, not an upcast copy
    ours, our_grads = loss_and_grads(hidden)
    assert torch.equal(ours, loss) and all(g.abs().max() > 0 for g in grads)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, grads))
    assert not model.get_decoder()._forward_hooks  # the hook is removed


def test_cross_entropy_chunks_are_16_rows_on_cpu_and_a_256_mib_block_on_cuda():
    class CudaLogits:
        is_cuda, shape = True, (2048, 49152)

    assert sft_loss.chunk_rows_for(torch.zeros(2, 49152)) == 16
    assert sft_loss.chunk_rows_for(CudaLogits()) == 1365
    logits = torch.randn(40, 1000, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(1))
    sft_loss.chunked_cross_entropy(logits, targets, chunk_rows=40).backward()
    whole = logits.grad.clone()
    logits.grad = None
    sft_loss.chunked_cross_entropy(logits, targets).backward()  # the CPU default, 16 rows
    assert torch.equal(logits.grad, whole)


def accumulate_starts(lengths):
    starts, at = [], 0
    for n in lengths:
        starts.append(at)
        at += n
    return starts


def test_packed_rows_never_attend_across_documents():
    """The loss of two packed documents equals the losses of each alone: position ids restart per document."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation="sdpa")).eval()
    a, b = list(range(3, 15)), list(range(20, 29))
    collate = sft_data.PackedCollator(pad_token_id=0)
    packed = collate([{"input_ids": a + b, "labels": a + b, "seq_lengths": [len(a), len(b)]},
                      {"input_ids": b, "labels": b, "seq_lengths": [len(b)]}])
    assert "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == list(range(len(a))) + list(range(len(b)))
    assert packed["labels"][1, len(b):].eq(-100).all()  # right padding carries no loss
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
    torch.testing.assert_close(logits[0, :len(a)], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0, len(a):len(a) + len(b)], alone_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1, :len(b)], alone_b, atol=1e-5, rtol=1e-4)


def test_the_readme_4gpu_command_splits_and_the_defaults_name_the_keys(root):
    """The README's `4gpu` command splits the default batch over 4 processes (accumulation 1); the defaults
    alone stop with both keys named."""
    import re

    import yaml

    from genrec.config.params import load_params

    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    command = re.search(r"`(dvc exp run -S train\.accelerate_profile=4gpu[^`]*)`", readme).group(1)
    overrides = re.findall(r"-S (\S+)", command)
    params = load_params(root / "params.yaml", overrides)
    processes = yaml.safe_load((root / "configs" / "accelerate" / f"{params.train.accelerate_profile}.yaml").read_text())
    assert processes["num_processes"] == 4
    assert sft_trainer.accumulation_steps(params.train, processes["num_processes"]) == 1
    with pytest.raises(DataError, match=r"train\.batch_size=8 .* micro_batch_size") as err:
        sft_trainer.accumulation_steps(load_params(root / "params.yaml").train, processes["num_processes"])
    assert "\n" not in str(err.value) and "train.micro_batch_size" in str(err.value)


def test_one_lora_recipe_writes_one_adapter_config_whatever_the_hash_seed(tmp_path):
    """PEFT writes target_modules in its set's order, which follows PYTHONHASHSEED; genrec sorts it."""
    import os
    import subprocess
    import sys

    from genrec.models.genrec.sft_trainer import stable_adapter_config

    script = ("import sys; from peft import LoraConfig; LoraConfig(r=2, target_modules=['q_proj', 'k_proj', 'v_proj', "
              "'o_proj', 'gate_proj', 'up_proj', 'down_proj']).save_pretrained(sys.argv[1])")
    written = []
    for seed in range(6):
        folder = tmp_path / str(seed)
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)})
        raw = (folder / "adapter_config.json").read_bytes()
        stable_adapter_config(folder / "adapter_config.json")
        written.append((raw, (folder / "adapter_config.json").read_bytes()))
    assert len({raw for raw, _ in written}) > 1  # PEFT alone: the order changes with the seed
    assert len({stable for _, stable in written}) == 1
    assert b'"down_proj",\n    "gate_proj"' in written[0][1]
