"""The learning curve: validation HR@k / NDCG@k on a fixed, seeded sample of users during training.

Each point runs the evaluator's own constrained beam search (`genrec.models.genrec.evaluation`) on the model being
trained, on the same users every time, so the curve shows recommendation quality against optimizer
steps, tokens and seconds, not just the loss. Points go to the MLflow run as step metrics
(`curve_hr_at_10`, ...) and, at the end, to a CSV (a DVC plot) and a PNG.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from genrec.models.genrec.evaluation import (decode_lists, encode_prompts, read_catalogue, read_records, user_exclusions,
                               with_split_history)
from genrec.io import atomic_path
from genrec.evaluation.metrics import metric_label, metric_names, parse_metric, ranking_metrics, target_rank
from genrec.config.params import EvalParams
from genrec.data.prompts import PromptTemplate
from genrec.evaluation.outputs import sample_users
from genrec.decoding.trie import Catalogue

log = logging.getLogger(__name__)

COLUMNS = ("step", "tokens", "train_seconds", "loss", "users")
"""curve.csv's columns besides the ranking metrics, which follow eval.k (`metric_names`) between loss and users."""


@dataclass
class CurveData:
    """The validation users of the curve, encoded once."""

    records: list[dict]
    prompts: list[list[int]]
    excluded: list[list[int]]
    catalogue: Catalogue
    eval_params: EvalParams


def curve_data(prompts_dir: Path, processed_dir: Path, template: PromptTemplate, tokenizer, users: int,
               eval_params: EvalParams) -> CurveData:
    """A seeded sample of `users` validation users (eval.seed), prompts as `genrec evaluate` builds them."""
    e = dataclasses.replace(eval_params, split="valid", max_users=users)
    records = sample_users(read_records(Path(prompts_dir) / "valid.jsonl"), users, e.seed)
    if template.format == "sequence":
        records = with_split_history(records, processed_dir, "valid")
    catalogue = read_catalogue(Path(processed_dir) / "items.parquet")
    prompts, _ = encode_prompts(records, template, tokenizer, e.max_prompt_tokens)
    excluded = (user_exclusions(records, catalogue, processed_dir, "valid") if e.constrained and e.exclude_history
                else [[] for _ in records])
    return CurveData(records, prompts, excluded, catalogue, e)


def curve_point(model, tokenizer, template: PromptTemplate, data: CurveData, bf16: bool, state=None) -> dict:
    """HR@k / NDCG@k of `model` (the live model being trained, no copy) on the curve's users.

    The adapter is not merged (a merged copy would double the backbone's memory, ~13.5 GB at 7B): decoding
    runs the LoRA layers beside the frozen weights, in eval mode and without gradients, and the model is
    put back in training mode after. Under several processes (`state`), every process takes part:
    with data parallelism (DDP) each decodes its share of the users and the lists are gathered; with a
    sharded model (FSDP) every forward gathers weights from all processes, so every process decodes
    every user, in step (the same batches, hence the same forwards).
    """
    import torch

    shared = state if state is not None and state.num_processes > 1 and not is_sharded(model) else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            lists, _, _ = decode_lists(model, tokenizer, template, data.catalogue, data.prompts, data.excluded,
                                       data.eval_params, progress=False, state=shared)
    finally:
        model.train(was_training)
    ranks = [target_rank([entry["item_ids"] for entry in entries], str(r["target_item_id"]))
             for r, entries in zip(data.records, lists)]
    metrics = ranking_metrics(ranks, data.eval_params.k, 1, data.eval_params.seed)
    return {key: metrics[key] for key in metric_names(data.eval_params.k)}


def is_sharded(model) -> bool:
    """Whether `model`'s weights are sharded across processes (FSDP2 turns parameters into DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def learning_curve_callback(tokenizer, template: PromptTemplate, data: CurveData, every: int | None,
                            tokens_per_step: float, bf16: bool, log_to_mlflow: bool, processes=None):
    """A TrainerCallback that adds a curve point every `every` steps and at the end of training.

    Under several processes (`processes`, the accelerate state) every process must run it (`curve_point`
    shares the decoding out); only the one with `log_to_mlflow` logs.
    """
    from transformers import TrainerCallback

    class LearningCurve(TrainerCallback):
        def __init__(self):
            self.points: list[dict] = []
            self.start = time.perf_counter()
            self.paused = 0.0  # seconds spent on the curve itself, not training

        def _point(self, state, model):
            if self.points and self.points[-1]["step"] == state.global_step:
                return
            began = time.perf_counter()
            metrics = curve_point(model, tokenizer, template, data, bf16, processes)
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            point = {"step": state.global_step, "tokens": int(state.global_step * tokens_per_step),
                     "train_seconds": round(began - self.start - self.paused, 1),
                     "loss": losses[-1] if losses else None, **metrics, "users": len(data.records)}
            self.points.append(point)
            self.paused += time.perf_counter() - began
            log.info("learning curve: step %d, %d tokens, HR@10 %.4f NDCG@10 %.4f on %d validation users (%.0f s)",
                     point["step"], point["tokens"], point.get("hr_at_10", float("nan")),
                     point.get("ndcg_at_10", float("nan")), len(data.records), time.perf_counter() - began)
            if log_to_mlflow:
                import mlflow

                mlflow.log_metrics({f"curve_{k}": float(v) for k, v in point.items()
                                    if k.startswith(("hr_", "ndcg_")) or k == "tokens"}, step=state.global_step)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every and state.global_step % every == 0:
                self._point(state, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._point(state, model)

    return LearningCurve()


def _is_metric(key: str) -> bool:
    try:
        parse_metric(key)
    except ValueError:
        return False
    return True


def write_curve(out_dir: Path, points: list[dict], title: str) -> None:
    """`curve.csv` (one row a point; a DVC plot) and `curve.png` (HR and NDCG at the largest k against tokens
    seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [key for key in (points[0] if points else {}) if _is_metric(key)]
    shown = [name for name in names if parse_metric(name)[1] == max(parse_metric(n)[1] for n in names)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with (tmp / "curve.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS[:-1], *names, COLUMNS[-1]], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(points)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        tokens = [p["tokens"] / 1e3 for p in points]
        for key in shown:
            ax.plot(tokens, [p.get(key) for p in points], marker="o", label=metric_label(key))
        ax.set_xlabel("training tokens seen (thousands)")
        ax.set_ylabel(f"validation, {points[-1]['users'] if points else 0} users")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp / "curve.png", dpi=100)
        plt.close(fig)
