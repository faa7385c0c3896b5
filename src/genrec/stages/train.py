"""Train stage: LoRA fine-tuning of the backbone with TRL's SFTTrainer, tracked in MLflow.

Launch (what dvc.yaml runs; profiles cpu | 1gpu | 4gpu | fsdp in configs/accelerate/):

    accelerate launch --config_file configs/accelerate/cpu.yaml -m genrec.cli train \\
        --base models/base --prompts data/prompts/<dataset> --processed data/processed/<dataset> \\
        --out models/<dataset>/genrec --curve reports/<dataset>/learning_curve

`genrec train ...` without the launcher runs the same thing in one process.

params -> `SFTConfig` + `LoraConfig` -> `SFTTrainer(peft_config=...)` (built in `genrec.models.genrec.sft_trainer`). The
`sequence` format (default) trains on every training title of every user (documents from the split,
packed); `instruction` trains the paper's prompt/completion records (`genrec.data.prompts.fit_to_token_budget`:
the oldest history titles are dropped to fit `train.max_seq_length`, never the target; loss on the
completion, which ends with exactly one EOS, checked). The template used is saved beside the adapter.
With `train.curve_steps`, validation HR/NDCG on `train.curve_users` users are measured during training
(`genrec.models.genrec.curve`) and written to `--curve` and the MLflow run, which also records the split as its
training dataset and the machine's CPU/memory/GPU use (`tracking.system_metrics`).

Checkpoints go to `<out>.checkpoints/`, outside the DVC out (which DVC deletes before a rerun), so
`train.resume: auto` continues after a kill from the last complete checkpoint of the same
configuration (and in the same MLflow run). The folder is removed once the outputs are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

from genrec.models.genrec import sft_loss, sft_trainer
from genrec.tracking import runs as tracking
from genrec.models.genrec.backbone import check_local_dir
from genrec.models.genrec.code_tokens import slim_adapter
from genrec.models.genrec.curve import curve_data, learning_curve_callback, write_curve
from genrec.errors import DataError
from genrec.io import atomic_path, write_json
from genrec.config.layout import ACCELERATE_CONFIGS, accelerate_profile_path
from genrec.config.params import Params, to_dict
from genrec.data.prompts import PromptTemplate

log = logging.getLogger(__name__)

STATE_FILE = "genrec_state.json"
"""In the checkpoints folder: the configuration fingerprint and the MLflow run id, for resume."""


def run(params: Params, *, base_dir: Path, prompts_dir: Path, out_dir: Path, processed_dir: Path | None = None,
        curve_dir: Path | None = None) -> dict:
    """Fine-tune LoRA adapters on the training prompts and write them with their lineage to `out_dir`.

    Writes (atomically) adapter_model.safetensors + adapter_config.json, the tokenizer, template.json
    (the prompt template used), config.json (resolved params, backbone and training summary),
    trainer_state.json (loss history) and mlflow_run.json (run_id, experiment_id, tracking_uri).

    Raises:
        DataError: bad input (no tokenizer, LoRA targets absent, missing accelerate profile, empty or
            malformed prompts), before the backbone is loaded.
        RuntimeError: if the saved adapter is empty or still at its initialisation.
    """
    from genrec.models.processes import broadcast, check_shared_folder, main_only, process_state

    base_dir, prompts_dir, out_dir = Path(base_dir), Path(prompts_dir), Path(out_dir)
    processed_dir = Path(processed_dir) if processed_dir is not None else None
    tp = params.train
    template = check_inputs(params, base_dir, prompts_dir, processed_dir)

    # The process group gets train.process_timeout before the Trainer exists (its ddp_timeout comes too late).
    state = process_state(tp.process_timeout)
    sft_trainer.accumulation_steps(tp, state.num_processes)
    hashes = tracking.data_hashes([base_dir, prompts_dir] + ([processed_dir] if tp.format == "sequence" else []))
    fingerprint = config_fingerprint(params, hashes)
    ckpt_dir = checkpoint_dir(out_dir)
    # The main process decides where to resume and every process follows: machines never decide apart.
    resume_from, run_id = broadcast(state, main_only(state, lambda: decide_resume(ckpt_dir, tp.resume, fingerprint)))
    check_shared_folder(state, ckpt_dir)

    trainer, train_stats = sft_trainer.build_trainer(params, base_dir, prompts_dir, template, ckpt_dir,
                                                     state.num_processes, processed_dir=processed_dir)
    tokenizer = trainer.processing_class
    initial = sft_trainer.lora_state(trainer.model)
    curve = None
    if tp.curve_steps and processed_dir is not None:  # every process: the curve's decoding is shared out
        data = curve_data(prompts_dir, processed_dir, template, tokenizer, tp.curve_users, params.eval)
        rows = train_stats.get("packed_rows") or train_stats["records"]
        curve = learning_curve_callback(tokenizer, template, data, tp.curve_steps,
                                        tp.batch_size * train_stats["tokens"] / max(rows, 1), trainer.args.bf16,
                                        log_to_mlflow=state.is_main_process, processes=state)
        trainer.add_callback(curve)

    main = state.is_main_process  # only the main process logs to MLflow and writes outputs
    with contextlib.ExitStack() as stack:  # leaving it ends the MLflow run: FAILED if anything raised
        mlrun = main_only(state, lambda: open_run(stack, params, run_id, fingerprint, ckpt_dir, processed_dir,
                                                  hashes, base_dir, prompts_dir))
        if main:
            trainer.add_callback(mlflow_logger())
        with sft_loss.completion_positions_only(tp.completion_logits_only):
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            eval_loss = final_eval_loss(trainer)
        final = ckpt_dir / "final"
        trainer.save_model(str(final))  # every process: FSDP gathers the adapter only, the main one writes it
        summary = {**train_stats, "global_step": trainer.state.global_step, "train_loss": result.training_loss,
                   "eval_loss": eval_loss, "resumed_from": resume_from and resume_from.name,
                   "train_seconds": round(result.metrics.get("train_runtime", 0.0), 1),
                   "effective_batch_size": tp.batch_size, "processes": state.num_processes,
                   "bf16": trainer.args.bf16, "fp16": trainer.args.fp16, "device": str(trainer.args.device)}

        def finish():
            write_outputs(out_dir, final, trainer, tokenizer, template, initial, mlrun, {
                "params": to_dict(params), "base_model": backbone_info(base_dir, trainer.model, hashes),
                "training": summary})
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            if curve_dir is not None:
                write_curve(Path(curve_dir), curve.points if curve else [], run_name(params, fingerprint))

        main_only(state, finish)  # a failure here ends every process now, with its error
    log.info("trained %d steps (train loss %.4f, valid loss %s); wrote %s", summary["global_step"],
             result.training_loss, summary["eval_loss"], out_dir)
    return {"out_dir": str(out_dir), "run_id": mlrun.info.run_id if main else None, **summary}


def decide_resume(ckpt_dir: Path, mode: str, fingerprint: str) -> tuple[Path | None, str | None]:
    """On the main process: the checkpoint to resume from and its MLflow run (`find_resume_point`), with the
    folder made ready for it (`prepare_checkpoint_dir`)."""
    resume_from, run_id = find_resume_point(ckpt_dir, mode, fingerprint)
    prepare_checkpoint_dir(ckpt_dir, resume_from)
    return resume_from, run_id


def open_run(stack: contextlib.ExitStack, params: Params, run_id: str | None, fingerprint: str, ckpt_dir: Path,
             processed_dir: Path | None, hashes: dict[str, str], base_dir: Path, prompts_dir: Path):
    """On the main process: the MLflow run (the checkpoint's, when it still exists) entered into `stack`, its
    inputs and params logged and its id written beside the checkpoints (for resume)."""
    if run_id is not None and not tracking.run_exists(params, run_id):
        log.warning("MLflow run %s of the checkpoint is gone from %s: logging to a new run", run_id,
                    tracking.tracking_uri(params))
        run_id = None
    mlrun = stack.enter_context(tracking.start_or_resume_run(
        params, run_id=run_id, run_name=run_name(params, fingerprint), system_metrics=params.tracking.system_metrics))
    write_json(ckpt_dir / STATE_FILE, {"fingerprint": fingerprint, "run_id": mlrun.info.run_id})
    if processed_dir is not None:  # instruction prompts come from the same split
        tracking.log_split_input(params, processed_dir, "train", "training")
    if run_id is None:  # a resumed run has them (same fingerprint); MLflow refuses to change a param
        tracking.log_params(params, {"data": {
            "base": hashes[str(base_dir)], "prompts": hashes[str(prompts_dir)],
            "base_path": str(base_dir), "prompts_path": str(prompts_dir)}})
    return mlrun


def final_eval_loss(trainer) -> float:
    """The validation loss after the last step: the Trainer's own if it just evaluated, else evaluate now."""
    last = trainer.state.log_history[-2:]  # an evaluation at the last step precedes the train summary
    done = [h["eval_loss"] for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step]
    return done[-1] if done else trainer.evaluate()["eval_loss"]


def checkpoint_dir(out_dir: Path) -> Path:
    """`<out>.checkpoints/` beside the output: DVC deletes its outs before a rerun, this survives."""
    return out_dir.with_name(out_dir.name + ".checkpoints")


def check_inputs(params: Params, base_dir: Path, prompts_dir: Path, processed_dir: Path | None = None
                 ) -> PromptTemplate:
    """Every bad-input check that needs no training: one-line DataErrors naming the param or path.

    Returns:
        The prompt template to train with: `sequence` with `train.prompt_history` titles, or the one the
        prompts stage wrote (prompts_dir/template.json) for `instruction`.
    """
    profile = accelerate_profile_path(params.train.accelerate_profile)
    if not profile.is_file():
        available = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))) or "none here"
        raise DataError(f"train.accelerate_profile={params.train.accelerate_profile!r}: {profile} does not exist",
                        fix=f"Use a profile in {ACCELERATE_CONFIGS}/ ({available}) or a path to an accelerate YAML")
    check_local_dir(base_dir, key="--base")
    check_lora_targets(base_dir, params.train.lora.target_modules)
    template_path = prompts_dir / "template.json"
    if not template_path.is_file():
        raise DataError("no prompt template", path=template_path, fix="Run `genrec prompts` (dvc repro prompts)")
    for name in ("train.jsonl", "valid.jsonl"):
        path = prompts_dir / name
        if not path.is_file() or not any(line.strip() for line in path.open(encoding="utf-8")):
            raise DataError("no prompt records", path=path,
                            fix="Run `genrec prompts`; if it wrote none, relax split.user_core/item_core")
    if params.train.format == "sequence":
        for name in ("train.parquet", "items.parquet"):
            if processed_dir is None or not (processed_dir / name).is_file():
                raise DataError(f"train.format=sequence reads the split's {name}", path=processed_dir,
                                fix="pass --processed data/processed/<dataset> (run `genrec split` first)")
        return PromptTemplate.sequence(params.train.prompt_history)
    return PromptTemplate.load(template_path)


def check_lora_targets(base_dir: Path, targets: list[str]) -> None:
    """Raise unless every LoRA target names a module of the backbone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [name for name, _ in model.named_modules()]
    # PEFT matches a target string against the end of each module name (`q_proj`, `self_attn.q_proj`)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        raise DataError(f"train.lora.target_modules: {missing} not in the {config.model_type} backbone",
                        path=base_dir / "config.json", fix=f"Use some of its linear layers: {', '.join(sorted(leaves))}")


def run_name(params: Params, fingerprint: str) -> str:
    """`genrec-<backbone>-r<lora r>-<config fingerprint[:8]>`: tells runs apart in the MLflow UI (MLflow's
    random names repeat here, because the trainer seeds `random` before the run starts)."""
    backbone = Path(str(params.model.base).rstrip("/")).name
    return f"genrec-{backbone}-r{params.train.lora.r}-{fingerprint[:8]}"


def config_fingerprint(params: Params, hashes: dict[str, str]) -> str:
    """sha256 of what fixes the training trajectory: `train` params (not resume/logging/saving) and the inputs.

    Upstream params (prompts, model, ...) act through the inputs, whose content hashes are included.
    """
    ignored = ("resume", "logging_steps", "eval_steps", "save_steps", "save_total_limit")
    train = {k: v for k, v in to_dict(params.train).items() if k not in ignored}
    text = json.dumps({"dataset": params.dataset, "train": train, "inputs": hashes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def find_resume_point(ckpt_dir: Path, mode: str, fingerprint: str) -> tuple[Path | None, str | None]:
    """(last complete checkpoint, its MLflow run id) to resume from, or (None, None) to start fresh.

    A checkpoint is complete once trainer_state.json exists (the Trainer writes it last). Checkpoints of
    another configuration (fingerprint) are never resumed.
    """
    state_file = ckpt_dir / STATE_FILE
    if mode == "never" or not state_file.is_file():
        return None, None
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        log.info("%s holds checkpoints of another configuration: starting fresh", ckpt_dir)
        return None, None
    complete = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not complete:
        return None, None
    last = max(complete, key=_step)
    log.info("resuming from %s (MLflow run %s)", last, state.get("run_id"))
    return last, state.get("run_id")


def prepare_checkpoint_dir(ckpt_dir: Path, resume_from: Path | None) -> None:
    """Empty the folder for a fresh start, or drop checkpoints newer than (half-written after) `resume_from`."""
    if resume_from is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    else:
        for path in ckpt_dir.glob("checkpoint-*"):
            if _step(path) > _step(resume_from):
                shutil.rmtree(path)
    ckpt_dir.mkdir(parents=True, exist_ok=True)


def _step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def backbone_info(base_dir: Path, model, hashes: dict[str, str]) -> dict:
    """What the adapter was trained on; `num_parameters` counts the backbone with the LoRA layers injected."""
    config = model.get_base_model().config
    return {"path": str(base_dir), "hash": hashes.get(str(base_dir)), "model_type": config.model_type,
            "architectures": config.architectures, "num_parameters": model.get_base_model().num_parameters(),
            "trainable_parameters": model.get_nb_trainable_parameters()[0]}


def write_outputs(out_dir: Path, adapter_dir: Path, trainer, tokenizer, template: PromptTemplate, initial: dict,
                  mlrun, config: dict) -> None:
    """Assemble the model folder atomically, verify the adapter, and log it to the MLflow run."""
    import mlflow

    with atomic_path(out_dir) as tmp:
        shutil.copytree(adapter_dir, tmp)
        sft_trainer.stable_adapter_config(tmp / "adapter_config.json")
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.json holds the resolved params
        tokenizer.save_pretrained(tmp)
        template.save(tmp / "template.json")
        write_json(tmp / "config.json", config)
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        tracking.write_run_file(tmp / tracking.RUN_FILE, mlrun)
        slim_adapter(tmp / "adapter_model.safetensors")  # GenRec on codes: the trained rows, not the whole embedding
        sft_trainer.verify_adapter(tmp, initial)
        mlflow.log_artifacts(str(tmp), artifact_path="model")
        mlflow.log_dict(template.to_dict(), "prompt_template.json")


def mlflow_logger():
    """A TrainerCallback logging every Trainer log (loss, eval_loss, ...) to the active MLflow run at its step."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=state.global_step)

    return MlflowLogger()
