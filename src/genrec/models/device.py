"""The torch device a model runs on, chosen by one rule for every model family.

`eval.device` (GenRec and P5 decoding) and `sasrec.device` are `auto | cpu | cuda`; P5 training has no
key and always asks for `auto`. auto: the GPU when torch sees one, else the CPU. cuda: the GPU, or a
`DataError` naming the key when there is none. cpu: the CPU. `eval.device` may also be `spread`: GenRec
loads its backbone over every visible GPU (`genrec.models.genrec.evaluation.load_model`); its inputs go
where `auto` puts them.
"""

from __future__ import annotations

import contextlib

from genrec.errors import DataError


def choose_device(requested: str = "auto", *, key: str = "eval.device", process_gpu: bool = True):
    """The torch device for `requested` (auto | cpu | cuda; spread as auto).

    Args:
        key: The param `requested` came from; the error for a missing GPU names it.
        process_gpu: Decoding runs under `accelerate launch`, one process a GPU: the GPU is this process's
            own (`cuda:<LOCAL_RANK>`, else torch's current device). False: plain `cuda`, torch's current
            device, for code that one process runs (SASRec, P5 training).

    Raises:
        DataError: `cuda` when torch sees no CUDA device.
    """
    import os

    import torch

    if requested == "cpu":
        return torch.device("cpu")
    requested = "auto" if requested == "spread" else requested
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise DataError(f"{key}=cuda, but torch sees no CUDA device",
                            fix=f"Set {key}=auto (or cpu), or install a CUDA build of torch on a GPU machine")
        return torch.device("cpu")
    if not process_gpu:
        return torch.device("cuda")
    local_rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local_rank) if local_rank else torch.cuda.current_device())


@contextlib.contextmanager
def decoding_threads(deterministic: bool, device):
    """Decode with one CPU thread when `eval.deterministic` asks for lists that are the same run to run.

    A threaded reduction may add in an order that depends on how the work was split (and, with MKL, on the
    alignment of the buffers): on some CPUs (a 2-core Xeon with AMX) three runs of one evaluation gave three
    predictions files, while one thread (or MKL's `MKL_CBWR=COMPATIBLE`, which must be set before the process
    starts) gave identical ones. On the GPU nothing is changed.

    Yields:
        {"decode_threads": threads used on the CPU (None on a GPU), "lists_reproducible": whether the lists
        are the same run to run by construction: one thread, or MKL_CBWR set; else False}, for the metrics file.
    """
    import os

    import torch

    if torch.device(device).type != "cpu":
        yield {"decode_threads": None, "lists_reproducible": False}
        return
    before = torch.get_num_threads()
    threads = 1 if deterministic else before
    torch.set_num_threads(threads)
    try:
        yield {"decode_threads": threads, "lists_reproducible": threads == 1 or bool(os.environ.get("MKL_CBWR"))}
    finally:
        torch.set_num_threads(before)
