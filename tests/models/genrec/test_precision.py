"""`train.bf16` on each kind of machine: bf16 where it is computed natively, fp16 on GPUs that only emulate it."""

import pytest

from genrec.models.genrec.sft_trainer import choose_precision, precision


@pytest.mark.parametrize("machine,native_bf16,cpu_bf16,expected", [
    ("cuda", True, False, (True, False)),    # A100, H100: bf16 autocast
    ("cuda", False, False, (False, True)),   # T4, V100: torch says bf16 "is supported" by emulation; fp16 + scaler
    ("cpu", False, True, (True, False)),     # AVX512-BF16 / AMX CPUs: oneDNN bf16 kernels
    ("cpu", False, False, (False, False)),   # older CPUs: float32
])
def test_auto_picks_what_the_machine_computes_natively(machine, native_bf16, cpu_bf16, expected):
    assert choose_precision("auto", cuda=machine == "cuda", native_bf16=native_bf16, cpu_bf16=cpu_bf16) == expected


@pytest.mark.parametrize("setting,expected", [(True, (True, False)), (False, (False, False))])
def test_true_and_false_force_bf16_on_or_off(setting, expected):
    assert choose_precision(setting, cuda=True, native_bf16=False, cpu_bf16=False) == expected


def test_this_machine_asks_torch_without_emulation():
    """On this (CUDA-less) machine the answer is the CPU's: never fp16, bf16 as oneDNN reports it."""
    import torch

    bf16, fp16 = precision("auto", cuda=False)
    assert not fp16 and bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
