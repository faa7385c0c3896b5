"""`eval.device`: where GenRec and P5 decode (the GPU when there is one, under accelerate the process's own)."""

from __future__ import annotations

import pytest
import torch

from genrec.models.genrec.backbone import inference_device
from genrec.errors import DataError
from genrec.config.params import ParamsError, load_params

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_cpu_is_the_cpu():
    assert inference_device("cpu") == torch.device("cpu")


@no_cuda
def test_auto_without_a_gpu_is_the_cpu():
    assert inference_device("auto") == torch.device("cpu")


@no_cuda
def test_cuda_without_a_gpu_is_refused_naming_the_key():
    with pytest.raises(DataError, match="eval.device=cuda, but torch sees no CUDA device"):
        inference_device("cuda")


def test_auto_with_a_gpu_takes_the_accelerate_process_gpu(monkeypatch):
    """Under `accelerate launch`, process k of a machine decodes on cuda:k (LOCAL_RANK)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert inference_device("auto") == torch.device("cuda", 3)
    assert inference_device("cuda") == torch.device("cuda", 3)
    assert inference_device("cpu") == torch.device("cpu")


def test_the_param_is_validated(root):
    assert load_params(root / "params.yaml").eval.device == "auto"
    with pytest.raises(ParamsError, match="eval.device"):
        load_params(root / "params.yaml", ["eval.device=gpu"])
