"""The training loss: causal-LM cross-entropy with the LM head applied to labelled positions only.

Two ways to it, one per training path: `model_loss_trainer` (the `sequence` format) computes the loss
itself (`labelled_lm_loss`, `chunked_cross_entropy`); `completion_positions_only` (the `instruction`
format) lets TRL's own fused LM head skip unlabelled positions on CPUs, through a private TRL switch.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def model_loss_trainer(lean: bool = True):
    """SFTTrainer whose training loss is causal-LM cross-entropy on the labelled positions only, computed lean.

    For `sequence` data ~94% of positions carry a loss, so TRL's fused, chunked LM head (which also
    computes entropy and top-1 accuracy over the vocabulary, and recomputes the head in backward) buys no
    memory worth its time on a CPU: 14.5 s against 9.7 s a step for SmolLM2-135M, micro-batch 8 x 256
    tokens (bench/train_cpu.py). The model's own loss (transformers' `ForCausalLMLoss`) is the same math
    but projects every position and copies all logits to float32 before a `cross_entropy` whose backward
    makes several passes over [tokens x vocabulary] floats: on 2 CPU cores that was ~1.1 s of a 7.3 s
    step. Here the model returns its last hidden states (no logits), the frozen LM head projects the
    positions that have a label, and `chunked_cross_entropy` does the float32 log-sum-exp and its gradient
    a few rows at a time, in cache (`lean`, from train.completion_logits_only; False: the model's own loss).
    Evaluation (and return_outputs) keeps the model's own loss. Everything
    else (data, collator, PEFT, accelerate, loss scaling across processes) stays TRL's and transformers'.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            if return_outputs or not model.training or not lean:
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            labels = inputs.pop("labels")
            # Through the (DDP-)wrapped model, so gradient synchronisation sees the forward.
            hidden = final_hidden_states(model, **inputs)
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            with self.accelerator.autocast():  # accelerate autocasts the model's forward only (and hands back fp32)
                loss = labelled_lm_loss(hidden, labels, head, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer.compute_loss
            return loss

    return ModelLossSFTTrainer


def final_hidden_states(model, **inputs):
    """The final norm's output for `inputs` (the decoder's last hidden state), with the model's own LM head
    given no position at all.

    The model is called whole, so that a DDP wrapper sees the forward and accelerate's autocast applies;
    the decoder's output is read by a forward hook. `output_hidden_states=True` would return every layer's
    states, and under mixed precision accelerate's `convert_outputs_to_fp32` copies each of them to float32
    (31 x [tokens x hidden] for SmolLM2) to keep one. The hook keeps the decoder's own dtype; under
    autocast the LM head casts to bf16 either way, so loss and gradients are the same bits
    (tests/models/genrec/test_sft.py). An empty `logits_to_keep` index: with `logits_to_keep=1` the head's input is
    the strided view `hidden[:, -1:]`, which CPU matmul turns into a batched product over a per-row copy of
    the [vocabulary x hidden] weight (450 MB for 8 rows of SmolLM2, at every micro-batch).
    """
    import torch

    from accelerate.utils import extract_model_from_parallel

    decoder = extract_model_from_parallel(model).get_decoder()
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        model(**inputs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device))
    finally:
        handle.remove()
    return captured[-1]


def labelled_lm_loss(hidden, labels, head, num_items_in_batch=None, chunk_rows: int | None = None):
    """Next-token cross-entropy of `head(hidden)` on the positions whose shifted label is not -100.

    The same value as transformers' `ForCausalLMLoss` (float32 logits, sum over labelled positions divided
    by `num_items_in_batch`, else their mean), with the LM head applied to labelled positions only.
    """
    shifted = labels[:, 1:]
    keep = shifted != -100
    logits = head(hidden[:, :-1][keep])
    total = chunked_cross_entropy(logits, shifted[keep], chunk_rows)
    if num_items_in_batch is None:
        return total / keep.sum().clamp(min=1)
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


CUDA_BLOCK_BYTES = 2**28
"""Float32 bytes of one cross-entropy chunk on CUDA (1,365 rows of SmolLM2's 49,152-token vocabulary)."""


def chunk_rows_for(logits) -> int:
    """Rows per cross-entropy chunk: 16 on CPU (a 3 MB block stays in cache); on CUDA, as many as fit
    CUDA_BLOCK_BYTES, since each chunk costs a handful of kernel launches (16 rows: ~240 launches for 2,048
    tokens, where one 256 MiB block takes 2 chunks). bench/sft_loss.py measures both."""
    if not logits.is_cuda:
        return 16
    return max(16, CUDA_BLOCK_BYTES // (4 * logits.shape[-1]))


def chunked_cross_entropy(logits, targets, chunk_rows: int | None = None):
    """sum_i (logsumexp(logits_i) - logits_i[target_i]) in float32, forward and backward `chunk_rows` rows
    at a time (default `chunk_rows_for(logits)`): on CPU a [16 x vocabulary] float32 block (3 MB for 16 x 49k)
    stays in cache, where the one-shot `cross_entropy(logits.float(), ...)` streams ~400 MB per pass for 2,048
    tokens. Gradients are exact softmax minus one-hot, in the logits' dtype."""
    import torch

    chunk_rows = chunk_rows or chunk_rows_for(logits)

    class ChunkedCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets):
            lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
            for start in range(0, logits.shape[0], chunk_rows):
                lse[start:start + chunk_rows] = torch.logsumexp(logits[start:start + chunk_rows].float(), dim=-1)
            picked = logits.gather(1, targets[:, None])[:, 0].float()
            ctx.save_for_backward(logits, targets, lse)
            return (lse - picked).sum()

        @staticmethod
        def backward(ctx, grad_output):
            logits, targets, lse = ctx.saved_tensors
            grad = torch.empty_like(logits)
            for start in range(0, logits.shape[0], chunk_rows):
                block = torch.exp(logits[start:start + chunk_rows].float() - lse[start:start + chunk_rows, None])
                block[torch.arange(block.shape[0], device=block.device), targets[start:start + chunk_rows]] -= 1
                grad[start:start + chunk_rows] = block.mul_(grad_output)
            return grad, None

    if logits.shape[0] == 0:
        return logits.float().sum()  # no labelled position: a zero that keeps the graph
    return ChunkedCrossEntropy.apply(logits, targets)


TRL_PATCHED_VERSION = "1.16.0"
"""The TRL (pinned in pyproject.toml) whose private `trl.trainer.utils._use_triton` `completion_positions_only`
overrides; with any other version the override is skipped (tests/models/genrec/test_sft.py checks the name still exists)."""


@contextlib.contextmanager
def completion_positions_only(enabled: bool):
    """Let TRL's fused LM head project only the positions that have a label, on CPUs too.

    TRL compacts to labelled positions only where Triton runs (CUDA/XPU) and scores every position
    elsewhere (to keep tile shapes fixed for compilers such as Neuron's). Eager CPU training has no such
    constraint, and with ~150-token prompts and ~10-token completions the full projection costs
    SmolLM2-135M 1.8x the CPU time per step (bench/train_cpu.py). The math is the same (tests/models/genrec/test_sft.py).

    The switch is TRL's private `_use_triton`, so it is overridden only on TRL_PATCHED_VERSION; on any
    other TRL this logs a warning and trains with TRL's own choice (slower on CPU, same result).
    """
    import trl
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if enabled and (trl.__version__ != TRL_PATCHED_VERSION or original is None):
        log.warning("TRL %s is not %s (or lacks trl.trainer.utils._use_triton): the LM head scores every "
                    "position on CPU", trl.__version__, TRL_PATCHED_VERSION)
        enabled = False
    if not enabled:
        yield
        return
    trl_utils._use_triton = lambda device: original(device) or device.type == "cpu"
    try:
        yield
    finally:
        trl_utils._use_triton = original
