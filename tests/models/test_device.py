"""genrec.models.device.choose_device: where GenRec and P5 decode and SASRec and P5 train (the GPU when
there is one, under accelerate the process's own)."""

from __future__ import annotations

import pytest
import torch

from genrec.config.params import ParamsError, load_params
from genrec.errors import DataError
from genrec.models.device import choose_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize("process_gpu", [True, False])
def test_cpu_is_the_cpu(process_gpu):
    assert choose_device("cpu", process_gpu=process_gpu) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("process_gpu", [True, False])
def test_auto_without_a_gpu_is_the_cpu(process_gpu):
    assert choose_device("auto", process_gpu=process_gpu) == torch.device("cpu")


@no_cuda
def test_cuda_without_a_gpu_is_refused_naming_the_key():
    with pytest.raises(DataError, match="eval.device=cuda, but torch sees no CUDA device. Set eval.device=auto"):
        choose_device("cuda")
    with pytest.raises(DataError, match="sasrec.device=cuda, but torch sees no CUDA device. Set sasrec.device=auto"):
        choose_device("cuda", key="sasrec.device", process_gpu=False)


def test_auto_with_a_gpu_takes_the_accelerate_process_gpu(monkeypatch):
    """Under `accelerate launch`, process k of a machine decodes on cuda:k (LOCAL_RANK)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert choose_device("auto") == torch.device("cuda", 3)
    assert choose_device("cuda") == torch.device("cuda", 3)
    assert choose_device("spread") == torch.device("cuda", 3)  # inputs go where auto puts them


@no_cuda
def test_spread_without_a_gpu_is_the_cpu():
    assert choose_device("spread") == torch.device("cpu")
    assert choose_device("cpu") == torch.device("cpu")


def test_without_accelerate_the_gpu_is_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert choose_device("auto") == torch.device("cuda", 1)


def test_single_process_code_gets_plain_cuda(monkeypatch):
    """SASRec and P5 training: `cuda` without an index, whatever LOCAL_RANK says (P5 logs the type)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert choose_device("auto", process_gpu=False) == torch.device("cuda")
    assert choose_device("cuda", key="sasrec.device", process_gpu=False) == torch.device("cuda")
    assert choose_device("auto", process_gpu=False).type == "cuda"


def test_the_params_are_validated(root):
    params = load_params(root / "params.yaml")
    assert params.eval.device == "auto" and params.sasrec.device in ("auto", "cpu", "cuda")
    with pytest.raises(ParamsError, match="eval.device"):
        load_params(root / "params.yaml", ["eval.device=gpu"])
    with pytest.raises(ParamsError, match="sasrec.device"):
        load_params(root / "params.yaml", ["sasrec.device=gpu"])


@pytest.mark.parametrize("deterministic", [True, False])
def test_decoding_threads_follow_eval_deterministic_and_are_restored(deterministic, monkeypatch):
    """eval.deterministic decodes on one CPU thread (the lists then repeat run to run on every CPU) and says so;
    otherwise the threads stay as they were and the lists are reproducible only with MKL_CBWR set."""
    import torch

    from genrec.models.device import decoding_threads

    monkeypatch.delenv("MKL_CBWR", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with decoding_threads(deterministic, torch.device("cpu")) as record:
            inside = torch.get_num_threads()
        assert torch.get_num_threads() == 2
        assert inside == record["decode_threads"] == (1 if deterministic else 2)
        assert record["lists_reproducible"] is deterministic
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
        with decoding_threads(False, "cpu") as record:
            assert record == {"decode_threads": 2, "lists_reproducible": True}
    finally:
        torch.set_num_threads(before)
