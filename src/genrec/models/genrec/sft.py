"""How genrec fine-tunes: params -> `SFTConfig` + `LoraConfig` -> `SFTTrainer`, in one of two formats.

Shared by the train stage (which adds inputs checks, resume, MLflow and outputs) and
bench/train_cpu.py (which times exactly this trainer).

`sequence` (default): each user's training titles become documents (`SequenceEncoder.windows`: a
header line, then one title a line, <= max_seq_length tokens, cut at title boundaries) with the loss
on every title token and its line end. Documents are packed best-fit-decreasing into rows of
max_seq_length (`trl.pack_dataset`) and `PackedCollator` restarts the position ids at every
document and passes no attention mask, so transformers builds a block-causal mask
(`masking_utils.find_packed_sequence_indices`): no document attends to another, and hardly a
token is padding. Only training items ever enter a document.

`instruction` (the paper's):

For a prompt/completion dataset TRL 1.16 appends the tokenizer's EOS *text* to each completion,
tokenises prompt + completion, and masks the prompt tokens out of the loss (completion-only loss;
`DataCollatorForCompletionOnlyLM` no longer exists). `check_prepared` verifies the result: one EOS
ends every completion (a tokenizer that adds its own EOS would give two) and nothing was cut.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from pathlib import Path

from genrec.models.genrec.backbone import load_backbone
from genrec.errors import DataError
from genrec.models.genrec.evaluation import pad_token_id
from genrec.config.params import LoraParams, Params, TrainParams
from genrec.data.prompts import PromptTemplate, SequenceEncoder, fit_to_token_budget
from genrec.data.sequences import read_histories, read_titles

log = logging.getLogger(__name__)


def build_trainer(params: Params, base_dir: Path, prompts_dir: Path, template: PromptTemplate, output_dir: Path,
                  num_processes: int = 1, dtype: str | None = None, processed_dir: Path | None = None):
    """The SFTTrainer for `params.train`: backbone + LoRA, training data and a valid subsample.

    Args:
        template: The prompt template; its `format` (sequence | instruction) decides the data.
        output_dir: The Trainer's output_dir (checkpoints).
        processed_dir: The split (`sequence` format reads the users' training items from it).
        dtype: Weights dtype of the frozen backbone; None: bfloat16 when bf16 autocast is on, else
            float32. Under autocast the matmuls run in bf16 either way; bf16 weights halve the memory
            of weights and activations (5.8 GB peak RSS with float32 weights for SmolLM2-135M at
            batch 8) and took 5-12% less CPU time per step (bench/train_cpu.py). The LoRA weights
            stay float32 (PEFT's default).

    Returns:
        (trainer, stats): stats counts records, truncated prompts, tokens and completion tokens.
    """
    from transformers import set_seed
    from trl import SFTTrainer

    tp = params.train
    sequence = template.format == "sequence"
    config = sft_config(params, output_dir, num_processes, sequence=sequence)
    if dtype is None:
        dtype = "bfloat16" if config.bf16 else "float32"
    model, tokenizer = load_backbone(base_dir, dtype=dtype)
    if sequence:
        if processed_dir is None:
            raise DataError("the sequence format reads the split", fix="pass --processed data/processed/<dataset>")
        encoder = SequenceEncoder(template, tokenizer)
        train_data, stats = sequence_dataset(processed_dir, encoder, tp.max_seq_length, tp.max_train_samples, tp.seed,
                                             recent=tp.recent_windows)
        valid_data = next_title_dataset(processed_dir, encoder, tp.max_seq_length, tp.max_valid_samples, tp.seed)
        collator = PackedCollator(pad_token_id(tokenizer))
    else:
        train_data, stats = prompt_dataset(prompts_dir / "train.jsonl", template, tokenizer, tp.max_seq_length,
                                           tp.max_train_samples, tp.seed)
        valid_data, _ = prompt_dataset(prompts_dir / "valid.jsonl", template, tokenizer, tp.max_seq_length,
                                       tp.max_valid_samples, tp.seed)
        collator = None
    set_seed(tp.seed)  # LoRA's A matrices are drawn when SFTTrainer wraps the model
    trainer = (model_loss_trainer(tp.completion_logits_only) if sequence else SFTTrainer)(model=model, args=config, train_dataset=train_data, eval_dataset=valid_data,
                         processing_class=tokenizer, peft_config=lora_config(tp.lora), data_collator=collator)
    if not sequence:
        stats.update(check_prepared(trainer.train_dataset, tokenizer.eos_token_id, tp.max_seq_length))
    return trainer, stats


def sequence_dataset(processed_dir: Path, encoder: SequenceEncoder, max_tokens: int, limit: int | None, seed: int,
                     recent: int | None = None):
    """Every user's training titles as `encoder.windows` (each user's latest `recent` windows only, when set),
    a seeded subsample of `limit` windows, BFD-packed.

    Returns:
        (datasets.Dataset with input_ids, labels and seq_lengths per packed row, stats).
    """
    from datasets import Dataset
    from tqdm import tqdm
    from trl import pack_dataset

    titles = read_titles(processed_dir)
    docs, skipped = [], 0
    histories = read_histories(processed_dir, before="train")
    for user, items in tqdm(histories.items(), desc="documents", unit="user", mininterval=10,
                            disable=len(histories) < 20_000):
        windows, n = encoder.windows([titles[i] for i in items], max_tokens, latest=recent)
        docs += windows
        skipped += n
    if not docs:
        raise DataError("no training documents: every user's training titles are empty", path=processed_dir,
                        fix="check the split (rerun `genrec split`)")
    if limit is not None and len(docs) > limit:
        docs = random.Random(seed).sample(docs, limit)
    if skipped:
        log.warning("%d training titles are longer than train.max_seq_length=%d with the header: left out",
                    skipped, max_tokens)
    tokens = sum(len(ids) for ids, _ in docs)
    target_tokens = sum(sum(t != -100 for t in labels) for _, labels in docs)
    data = Dataset.from_dict({"input_ids": [ids for ids, _ in docs], "labels": [lab for _, lab in docs]})
    packed = pack_dataset(data, max_tokens, strategy="bfd")
    rows = len(packed)
    log.info("%d users -> %d documents (%d tokens, %.0f%% with a loss) packed into %d rows of %d tokens (%.1f%% "
             "padding)", len(histories), len(docs), tokens, 100 * target_tokens / max(tokens, 1), rows, max_tokens,
             100 * (1 - tokens / max(rows * max_tokens, 1)))
    stats = {"users": len(histories), "records": len(docs), "packed_rows": rows, "tokens": tokens,
             "completion_tokens": target_tokens, "titles_skipped": skipped}
    return packed, stats


def next_title_dataset(processed_dir: Path, encoder: SequenceEncoder, max_tokens: int, limit: int | None, seed: int):
    """Validation loss data: per (sampled) user, the evaluation prompt from its training titles, then the
    valid title line, with the loss on that line only (the next-title loss the recommender is judged on)."""
    from datasets import Dataset

    titles = read_titles(processed_dir)
    valid = read_histories(processed_dir, before="test")  # train items, then the valid item last
    users = sorted(valid)
    if limit is not None and len(users) > limit:
        users = sorted(random.Random(seed).sample(users, limit))
    ids_list, labels_list = [], []
    for user in users:
        *history, target = [titles[i] for i in valid[user]]
        line = encoder.line_ids(target)
        prompt, _ = encoder.prompt_ids(history, max_tokens - len(line))
        ids_list.append(prompt + line)
        labels_list.append([-100] * len(prompt) + line)
    return Dataset.from_dict({"input_ids": ids_list, "labels": labels_list,
                              "seq_lengths": [[len(ids)] for ids in ids_list]})


class PackedCollator:
    """Packed rows -> input_ids, labels and position ids that restart at every document; no attention mask.

    Without a mask, transformers derives a block-causal mask from the position ids (a position that does
    not follow its predecessor starts a new sequence), so packed documents never attend to each other.
    It does so only without a KV cache (`masking_utils._preprocess_mask_arguments`), hence
    `use_cache=False` in every batch. Right padding forms its own "document" with labels -100.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.as_tensor(e["input_ids"])
            labels[row, :n] = torch.as_tensor(e["labels"])
            lengths = list(e["seq_lengths"]) + ([width - n] if width > n else [])
            positions[row] = torch.cat([torch.arange(length) for length in lengths])
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}



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
    """The final norm's output for `inputs`, with the model's own LM head given no position at all.

    An empty `logits_to_keep` index: with `logits_to_keep=1` the head's input is the strided view
    `hidden[:, -1:]`, which CPU matmul turns into a batched product over a per-row copy of the
    [vocabulary x hidden] weight (450 MB for 8 rows of SmolLM2, at every micro-batch).
    """
    import torch

    none = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
    return model(**inputs, logits_to_keep=none, output_hidden_states=True).hidden_states[-1]


def labelled_lm_loss(hidden, labels, head, num_items_in_batch=None, chunk_rows: int = 16):
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


def chunked_cross_entropy(logits, targets, chunk_rows: int = 16):
    """sum_i (logsumexp(logits_i) - logits_i[target_i]) in float32, forward and backward `chunk_rows` rows
    at a time: a [chunk x vocabulary] float32 block (3 MB for 16 x 49k) stays in cache, where the one-shot
    `cross_entropy(logits.float(), ...)` streams ~400 MB per pass for 2,048 tokens. Gradients are exact
    softmax minus one-hot, in the logits' dtype."""
    import torch

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


def accumulation_steps(tp: TrainParams, num_processes: int) -> int:
    """batch_size / (micro_batch_size x processes), as the GenRec reference derived it.

    Raises:
        DataError: if that does not divide evenly.
    """
    per_step = tp.micro_batch_size * num_processes
    if tp.batch_size % per_step:
        raise DataError(f"train.batch_size={tp.batch_size} is not a multiple of micro_batch_size x processes "
                        f"= {per_step}", fix="Change train.batch_size or train.micro_batch_size")
    return tp.batch_size // per_step


def sft_config(params: Params, output_dir: Path, num_processes: int, sequence: bool = False):
    """The SFTConfig for `params.train`: gradient accumulation = batch_size / (micro_batch_size x processes).

    sequence: the data comes tokenised, labelled and packed (`sequence_dataset`), so TRL's preparation is skipped.
    """
    import torch
    from trl import SFTConfig

    tp = params.train
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir), seed=tp.seed, data_seed=tp.seed, use_cpu=not cuda,
        num_train_epochs=tp.epochs, max_steps=tp.max_steps or -1,
        per_device_train_batch_size=tp.micro_batch_size, per_device_eval_batch_size=tp.micro_batch_size,
        gradient_accumulation_steps=accumulation_steps(tp, num_processes),
        learning_rate=tp.learning_rate, warmup_steps=tp.warmup, lr_scheduler_type=tp.lr_scheduler,
        weight_decay=tp.weight_decay, optim=tp.optimizer,
        max_length=tp.max_seq_length, completion_only_loss=True, packing=False,
        bf16=use_bf16(tp.bf16, cuda), fp16=False, activation_checkpointing=tp.activation_checkpointing,
        logging_steps=tp.logging_steps, logging_first_step=True,
        eval_strategy="steps" if tp.eval_steps else "no", eval_steps=tp.eval_steps,
        save_strategy="steps", save_steps=tp.save_steps, save_total_limit=tp.save_total_limit,
        report_to="none", ddp_find_unused_parameters=False, dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True} if sequence else None,
    )


def use_bf16(setting: str | bool, cuda: bool) -> bool:
    """`train.bf16`: auto is on for GPUs with bf16 and for CPUs where oneDNN has bf16 kernels (AVX512 and newer)."""
    import torch

    if setting != "auto":
        return bool(setting)
    if cuda:
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lora_config(lp: LoraParams):
    from peft import LoraConfig

    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=list(lp.target_modules),
                      bias="none", task_type="CAUSAL_LM")


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSON-lines file."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append((line_no, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"not JSON ({err.msg})", path=path, row=line_no,
                                    fix="Rerun `genrec prompts`") from None
    return records


def prompt_dataset(path: Path, template: PromptTemplate, tokenizer, max_tokens: int, limit: int | None,
                   seed: int):
    """Prompt/completion records from a prompts file, a seeded subsample of `limit`, each fit to `max_tokens`.

    Returns:
        (datasets.Dataset with `prompt` and `completion` columns, stats: records, truncated, titles_dropped).
    """
    from datasets import Dataset
    from tqdm import tqdm

    records = read_jsonl(path)
    if limit is not None and len(records) > limit:
        records = random.Random(seed).sample(records, limit)
    prompts, completions, truncated, dropped = [], [], 0, 0
    for row, record in tqdm(records, desc=f"fitting {path.name}", unit="record", mininterval=10,
                            disable=len(records) < 20_000):
        try:
            prompt, completion, n_dropped = fit_to_token_budget(
                template, record["instruction"], record["history_titles"], record["output"], tokenizer, max_tokens)
        except KeyError as err:
            raise DataError(f"record without {err}", path=path, row=row, fix="Rerun `genrec prompts`") from None
        except ValueError as err:
            raise DataError(str(err), path=path, row=row, fix="Raise train.max_seq_length") from None
        prompts.append(prompt)
        completions.append(completion)
        truncated += n_dropped > 0
        dropped += n_dropped
    log.info("%s: %d records; %d lost %d history titles to fit %d tokens", path, len(records), truncated,
             dropped, max_tokens)
    stats = {"records": len(records), "truncated": truncated, "titles_dropped": dropped}
    return Dataset.from_dict({"prompt": prompts, "completion": completions}), stats


def check_prepared(dataset, eos_token_id: int, max_length: int) -> dict:
    """Check TRL's tokenised dataset: every sequence ends its completion with exactly one EOS, uncut.

    Returns:
        Token counts: tokens (non-padding) and completion_tokens (with EOS), summed over the dataset.
    """
    tokens = completion_tokens = 0
    for batch in dataset.iter(batch_size=1024):
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            target = [t for t in labels if t != -100]
            if len(ids) > max_length or not target or target[-1] != eos_token_id or target.count(eos_token_id) != 1:
                raise RuntimeError(f"a training sequence does not end with exactly one EOS ({eos_token_id}) in its "
                                   f"completion: {target[-8:]}; check the tokenizer's automatic special tokens")
            tokens += len(ids)
            completion_tokens += len(target)
    return {"tokens": tokens, "completion_tokens": completion_tokens}


TRL_PATCHED_VERSION = "1.16.0"
"""The TRL (pinned in pyproject.toml) whose private `trl.trainer.utils._use_triton` `completion_positions_only`
overrides; with any other version the override is skipped (tests/test_sft.py checks the name still exists)."""


@contextlib.contextmanager
def completion_positions_only(enabled: bool):
    """Let TRL's fused LM head project only the positions that have a label, on CPUs too.

    TRL compacts to labelled positions only where Triton runs (CUDA/XPU) and scores every position
    elsewhere (to keep tile shapes fixed for compilers such as Neuron's). Eager CPU training has no such
    constraint, and with ~150-token prompts and ~10-token completions the full projection costs
    SmolLM2-135M 1.8x the CPU time per step (bench/train_cpu.py). The math is the same (tests/test_sft.py).

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


def lora_state(model) -> dict:
    """A detached copy of the adapter weights, keyed as PEFT saves them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}


def verify_adapter(adapter_dir: Path, initial: dict) -> None:
    """Fail loudly unless the saved adapter holds every LoRA tensor and lora_B moved off its zero init.

    An unpinned peft once saved a ~1 KB empty adapter in the GenRec reference code.
    """
    import torch
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    saved = load_file(path) if path.is_file() else {}
    if not saved or set(saved) != set(initial):
        raise RuntimeError(f"{path}: saved {len(saved)} tensors, expected the {len(initial)} LoRA tensors trained")
    unchanged = [k for k in saved if "lora_B" in k and torch.equal(saved[k], initial[k].to(saved[k].dtype))]
    if unchanged:
        raise RuntimeError(f"{path}: {len(unchanged)} lora_B tensors still equal their initialisation "
                           f"(e.g. {unchanged[0]}); training did not update the adapter")
