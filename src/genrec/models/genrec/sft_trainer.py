"""How genrec fine-tunes: params -> `SFTConfig` + `LoraConfig` -> `SFTTrainer`, in one of two formats.

Shared by the train stage (which adds inputs checks, resume, MLflow and outputs) and
bench/train_cpu.py (which times exactly this trainer). The data of each format is built in
`genrec.models.genrec.sft_data`, the `sequence` format's loss in `genrec.models.genrec.sft_loss`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genrec.config.params import LoraParams, Params, TrainParams
from genrec.data.prompts import PromptTemplate, SequenceEncoder
from genrec.errors import DataError
from genrec.models.genrec.backbone import load_backbone
from genrec.models.genrec.code_tokens import FULL_EMBEDDING, add_code_tokens, trainable_tokens, view_codes
from genrec.models.genrec.evaluation import pad_token_id
from genrec.models.genrec.sft_data import (PackedCollator, check_prepared, next_title_dataset, prompt_dataset,
                                          sequence_dataset)
from genrec.models.genrec.sft_loss import model_loss_trainer

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
    codes = view_codes(processed_dir)  # an item view: GenRec on codes, each code a new trainable token
    code_rows = trainable_tokens(model, add_code_tokens(model, tokenizer, codes)) if codes else None
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
    trainer_class = adapter_saving(model_loss_trainer(tp.completion_logits_only) if sequence else SFTTrainer)
    trainer = trainer_class(model=model, args=config, train_dataset=train_data, eval_dataset=valid_data,
                         processing_class=tokenizer, peft_config=lora_config(tp.lora, code_rows), data_collator=collator)
    if not sequence:
        stats.update(check_prepared(trainer.train_dataset, tokenizer.eos_token_id, tp.max_seq_length))
    return trainer, stats


def adapter_saving(trainer_class):
    """`trainer_class` whose saves (checkpoints and the final adapter) gather the adapter only under FSDP.

    transformers' `save_model` under FSDP with a full state dict gathers every weight, frozen backbone
    included, onto the main process's CPU (~13.5 GB at 7B, at every checkpoint), then PEFT keeps the
    adapter. Here only the trainable weights are gathered (`adapter_state_dict`), on every process; the
    main one writes them. Without FSDP the Trainer's own save runs.
    """
    class AdapterSavingTrainer(trainer_class):
        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            if not self.is_fsdp_enabled:
                return super().save_model(output_dir, _internal_call)
            self._save(output_dir or self.args.output_dir, state_dict=adapter_state_dict(self.model))

    return AdapterSavingTrainer


def adapter_state_dict(model) -> dict:
    """The trainable weights of a sharded (FSDP2) model, whole and on the CPU of the main process (empty elsewhere).

    Every process must call it: each trainable weight is all-gathered in turn (LoRA weights: megabytes).
    Frozen weights are never gathered; torch's `get_model_state_dict(ignore_frozen_params=True)` still
    gathers a frozen LM head tied to the embedding.
    """
    import torch
    from torch.distributed.tensor import DTensor

    main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = param.full_tensor() if isinstance(param, DTensor) else param.detach()
            if main:
                state[name] = whole.cpu()
    return state


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
    bf16, fp16 = precision(tp.bf16, cuda)
    return SFTConfig(
        output_dir=str(output_dir), seed=tp.seed, data_seed=tp.seed, use_cpu=not cuda,
        num_train_epochs=tp.epochs, max_steps=tp.max_steps or -1,
        per_device_train_batch_size=tp.micro_batch_size, per_device_eval_batch_size=tp.micro_batch_size,
        gradient_accumulation_steps=accumulation_steps(tp, num_processes),
        learning_rate=tp.learning_rate, warmup_steps=tp.warmup, lr_scheduler_type=tp.lr_scheduler,
        weight_decay=tp.weight_decay, optim=tp.optimizer,
        max_length=tp.max_seq_length, completion_only_loss=True, packing=False,
        bf16=bf16, fp16=fp16, activation_checkpointing=tp.activation_checkpointing,
        logging_steps=tp.logging_steps, logging_first_step=True,
        eval_strategy="steps" if tp.eval_steps else "no", eval_steps=tp.eval_steps,
        save_strategy="steps", save_steps=tp.save_steps, save_total_limit=tp.save_total_limit,
        report_to="none", ddp_find_unused_parameters=False, ddp_timeout=tp.process_timeout, dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True} if sequence else None,
    )


def precision(setting: str | bool, cuda: bool) -> tuple[bool, bool]:
    """(bf16, fp16) autocast for `train.bf16` on this machine (`choose_precision` with what torch reports)."""
    import torch

    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    cpu_bf16 = False
    if not cuda:
        try:
            cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            pass
    return choose_precision(setting, cuda=cuda, native_bf16=native_bf16, cpu_bf16=cpu_bf16)


def choose_precision(setting: str | bool, *, cuda: bool, native_bf16: bool, cpu_bf16: bool) -> tuple[bool, bool]:
    """(bf16, fp16) for `train.bf16`: auto is bf16 on GPUs that compute in bf16 (Ampere and newer) and on CPUs
    where oneDNN has bf16 kernels (AVX512 and newer); a GPU that only emulates bf16 (T4, V100:
    `torch.cuda.is_bf16_supported()` says yes unless asked `including_emulation=False`) would run every
    matmul several times slower, so it gets fp16 autocast with the Trainer's gradient scaler (the LoRA
    weights stay float32). true / false force bf16 on / off (false: float32).
    """
    if setting != "auto":
        return bool(setting), False
    if cuda and not native_bf16:
        log.warning("train.bf16=auto: this GPU has no native bf16; training with fp16 autocast and a gradient scaler")
        return False, True
    return (native_bf16 if cuda else cpu_bf16), False


def lora_config(lp: LoraParams, trainable_token_indices: dict[str, list[int]] | None = None):
    """LoRA on `lp.target_modules`; with `trainable_token_indices`, those embedding rows train too (code tokens)."""
    from peft import LoraConfig

    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=list(lp.target_modules),
                      bias="none", task_type="CAUSAL_LM", trainable_token_indices=trainable_token_indices)


def lora_state(model) -> dict:
    """A detached copy of the adapter weights, keyed as PEFT saves them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()
            if FULL_EMBEDDING not in k}  # as `slim_adapter` leaves the file


SET_FIELDS = ("target_modules", "exclude_modules")
"""adapter_config.json fields PEFT holds as sets and writes as lists in the set's iteration order."""


def stable_adapter_config(path: Path) -> None:
    """Rewrite PEFT's adapter_config.json with its set fields sorted, so one recipe writes the same bytes.

    PEFT writes `target_modules` in the set's iteration order, which follows the process's string hash
    seed: two trainings with identical weights wrote different files, so different adapter hashes
    (`genrec.tracking.registry.adapter_hash`) and a new registry version each time.
    """
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    for key in SET_FIELDS:
        if isinstance(config.get(key), list) and all(isinstance(v, str) for v in config[key]):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


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
