"""eval.batch_size=auto: the KV cache a token, the batch that fits, and the number a model gets."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, T5Config

from genrec.decoding import memory
from genrec.decoding.memory import auto_batch_size, kv_bytes_per_token, resolve_batch_size

GiB = 2**30


@pytest.mark.parametrize("config, dtype_bytes, expected", [
    # SmolLM2-135M: 30 layers, 3 KV heads of 576 / 9 = 64 dims, bf16: 2 x 30 x 3 x 64 x 2
    (LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576), 2, 23_040),
    # a 7B of 28 layers, 4 KV heads of 128 dims (head_dim given), bf16: 2 x 28 x 4 x 128 x 2
    (LlamaConfig(num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, hidden_size=3584,
                 head_dim=128), 2, 57_344),
    # T5-small's decoder: 6 layers, 8 heads of d_kv 64, float32: 2 x 6 x 8 x 64 x 4
    (T5Config(num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, d_model=512), 4, 24_576),
])
def test_kv_bytes_per_token(config, dtype_bytes, expected):
    assert kv_bytes_per_token(config, dtype_bytes) == expected


def test_auto_batch_size_by_hand():
    # The 7B above, prompts of 256 tokens, 10 beams of 20 tokens, a 152,064-token vocabulary. One user:
    # 57,344 x (256 + 10 x 20) = 26,148,864 bytes of cache + 4 x 10 x 152,064 x 4 = 24,330,240 of scores
    # = 50,479,104. 4 GiB free, 80% of it planned: int(3,435,973,836.8) // 50,479,104 = 68.
    assert auto_batch_size(4 * GiB, 57_344, 456, 10, 152_064) == 68
    assert auto_batch_size(40 * GiB, 57_344, 456, 10, 152_064) == memory.AUTO_MAX  # 680 fit: capped
    assert auto_batch_size(10 * 2**20, 57_344, 456, 10, 152_064) == 1  # not even one: one, and the OOM retry
    assert auto_batch_size(4 * GiB, 57_344, 456, 10, 152_064, usable=0.4, cap=32) == 32  # 34 fit


def fake_gpu_model(free_bytes: int, monkeypatch) -> SimpleNamespace:
    """A stand-in for a bf16 SmolLM2 on cuda:0 with `free_bytes` free (there is no GPU here)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 80 * GiB))
    config = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
                         vocab_size=49_152)
    return SimpleNamespace(device=torch.device("cuda", 0), config=config,
                           parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))


def test_auto_on_a_gpu_fills_its_free_memory_and_logs_the_choice(monkeypatch, caplog):
    model = fake_gpu_model(GiB, monkeypatch)
    # 23,040 x 456 + 4 x 10 x 49,152 x 4 = 10,506,240 + 7,864,320 = 18,370,560 a user;
    # int(0.8 x 2^30) = 858,993,459 // 18,370,560 = 46
    with caplog.at_level(logging.INFO, logger="genrec.decoding.memory"):
        assert resolve_batch_size("auto", model, 456, 10) == 46
    assert "eval.batch_size=auto: 46 users a batch" in caplog.text


def test_a_number_is_kept_and_auto_on_the_cpu_is_the_documented_default():
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert resolve_batch_size(7, cpu, 456, 10) == 7
    assert resolve_batch_size("auto", cpu, 456, 10) == memory.CPU_BATCH_SIZE == 32
