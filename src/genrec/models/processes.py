"""The processes of one `accelerate launch`: joining them, and ending them all when one fails.

Every genrec command that may run under `accelerate launch` (train, the GenRec evaluate stages) starts its
process group here, with an explicit timeout: accelerate's `PartialState` calls `init_process_group`
without one, which leaves NCCL at torch's 10 minutes, and the Trainer's `ddp_timeout` arrives after the
group exists and is ignored. A collective that waits longer than the timeout (rank 0 tokenising a large
dataset while the others wait at a barrier) then kills the job.

Work that only the main process does (MLflow, writing outputs) goes through `main_only`: the outcome is
broadcast, so when the main process fails the others stop at once with its error instead of waiting in
their next collective until the timeout (or forever on another machine, where torchrun cannot see them).
"""

from __future__ import annotations

import datetime
import logging
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class PeerFailure(RuntimeError):
    """Raised on the other processes when the main process failed in `main_only`."""


def process_state(timeout_seconds: int, cpu: bool | None = None):
    """The accelerate `PartialState`, its process group (if several processes) created with `timeout_seconds`.

    Args:
        timeout_seconds: How long a collective may wait for the slowest process (`train.process_timeout`,
            `eval.process_timeout`).
        cpu: Join over gloo on the CPU; None: when torch sees no CUDA device (only then do several CPU
            processes join rather than each believing it is alone).
    """
    import torch
    from accelerate import PartialState

    if cpu is None:
        cpu = not torch.cuda.is_available()
    timeout = datetime.timedelta(seconds=timeout_seconds)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        current = group_timeout()
        if current is not None and current != timeout:
            log.warning("the process group exists already with a %s timeout, not %s", current, timeout)
        return PartialState(cpu=cpu)
    return PartialState(cpu=cpu, timeout=timeout)


def group_timeout():
    """The default process group's timeout (a timedelta), or None without one."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from torch.distributed import distributed_c10d

    group = distributed_c10d._get_default_group()
    for device in ("cpu", "cuda"):  # a gloo group has a CPU backend, an NCCL group a CUDA one
        try:
            return group._get_backend(torch.device(device)).options._timeout
        except (AttributeError, RuntimeError):
            continue
    return None


def smallest_of_processes(value: int) -> int:
    """The smallest `value` of the processes in torch's default process group; `value` without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return min(values)


def main_only(state, work: Callable[[], T]) -> T | None:
    """Run `work` on the main process only; every process learns whether it succeeded.

    Returns:
        What `work` returned on the main process; None on the others.

    Raises:
        The main process's own exception on the main process, and `PeerFailure` naming it on the others,
        right after the failure (not at the next collective's timeout).
    """
    if state is None or state.num_processes == 1:
        return work()
    result, failure = None, None
    if state.is_main_process:
        try:
            result = work()
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the others are told
            failure = err
    outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    from torch.distributed import broadcast_object_list

    broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise PeerFailure(f"the main process failed: {outcome[0]}")
    return result


def broadcast(state, value: T) -> T:
    """The main process's `value`, on every process (decisions that must agree, e.g. where to resume)."""
    if state is None or state.num_processes == 1:
        return value
    from torch.distributed import broadcast_object_list

    box = [value]
    broadcast_object_list(box, src=0)
    return box[0]


def check_shared_folder(state, folder) -> None:
    """Refuse to go on unless every process sees the same `folder` (checkpoints, outputs).

    Several machines must share one file system at the same path: only the main process writes the
    outputs and the checkpoints, and every process resumes from them. A file the main process writes
    must be visible to all.

    Raises:
        DataError: on every process, naming the processes that do not see it.
    """
    if state is None or state.num_processes == 1:
        return
    import os
    import uuid
    from pathlib import Path

    from torch.distributed import all_gather_object

    from genrec.errors import DataError

    folder = Path(folder)
    token = broadcast(state, f".shared-{uuid.uuid4().hex}" if state.is_main_process else None)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / token).write_text(str(os.getpid()), encoding="utf-8")
    state.wait_for_everyone()
    seen = [None] * state.num_processes
    all_gather_object(seen, (folder / token).is_file())
    state.wait_for_everyone()
    if state.is_main_process:
        (folder / token).unlink(missing_ok=True)
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        raise DataError(f"processes {blind} do not see the files the main process writes in {folder}",
                        fix="Run every machine on one shared file system, at the same path (docs/gpus.md)")
