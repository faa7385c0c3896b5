"""A registered version's model card: markdown built from its lineage, shown on its MLflow UI page.

What a reader needs to trust or reproduce a version, in one place: the backbone and its sha256, the
dataset and split fingerprint, the prompt template, the LoRA and training settings, the data hashes
(DVC's md5 from dvc.lock where recorded), the git commit, validation and test metrics with their 95%
bootstrap intervals, the baselines evaluated on the same split, and the test slices (target popularity,
history length) with the beyond-accuracy metrics from the report's analysis.json. A pure function of what the promote
stage reads, so a rerun on the same inputs writes the same card (and leaves the version untouched).
"""

from __future__ import annotations

from genrec.evaluation.metrics import metric_label, metric_names, parse_metric
from genrec.models.table import order_key

TRAIN_KEYS = ("format", "prompt_history", "epochs", "max_steps", "batch_size", "micro_batch_size", "learning_rate",
              "lr_scheduler", "warmup", "weight_decay", "optimizer", "max_seq_length", "seed", "accelerate_profile")
TRAINING_SUMMARY = ("global_step", "train_loss", "eval_loss", "train_seconds", "processes", "device")


def model_card(*, name: str, version: str, tags: dict, config: dict, adapter: dict | None, template: dict | None,
               valid: dict, test: dict, baselines: dict[str, dict], data_hashes: dict[str, str], run_id: str,
               slices: dict | None = None) -> str:
    """The markdown card of version `version` of `name`.

    Args:
        tags: the version's tags (backbone, backbone_sha256, adapter_sha256, split_fingerprint, git_commit...).
        config: config.json written beside the adapter by `genrec train` (params, base_model, training).
        adapter: adapter_config.json (PEFT's LoRA settings, what the weights were trained with), or None.
        template: template.json beside the adapter (the prompt actually used), or None.
        valid, test: the metrics files of `genrec evaluate` on validation and test.
        baselines: other models' test metrics on the same split, by model name (may be empty).
        data_hashes: {input path: "md5:..." | "sha256:..."}.
        run_id: the MLflow run that trained the adapter.
        slices: this version's entry of the report's analysis.json (`genrec.stages.promote.read_slices`), or None.
    """
    params = config.get("params") or {}
    lines = [f"# {name} version {version}", "",
             f"GenRec: a LoRA adapter on `{tags.get('backbone')}`, trained on `{params.get('dataset')}`. "
             f"Load it with `mlflow.pyfunc.load_model(\"models:/{name}/{version}\")`.", ""]
    lines += _lineage(tags, config, run_id) + _data(data_hashes) + _prompt(template, params)
    lines += _training(params, adapter, config.get("training") or {})
    lines += _metrics(valid, test) + _baselines(test, baselines) + _slices(slices)
    return "\n".join(lines).rstrip() + "\n"


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _lineage(tags: dict, config: dict, run_id: str) -> list[str]:
    base = config.get("base_model") or {}
    size = f", {base['num_parameters']:,} parameters" if base.get("num_parameters") else ""
    return ["## Lineage", "", *_table(("", ""), [
        ("Backbone", f"`{tags.get('backbone')}` ({base.get('model_type', 'unknown type')}{size})"),
        ("Backbone sha256", f"`{tags.get('backbone_sha256')}`"),
        ("Adapter sha256", f"`{tags.get('adapter_sha256')}`"),
        ("Dataset", f"`{tags.get('dataset')}`"),
        ("Split fingerprint", f"`{tags.get('split_fingerprint')}`"),
        ("Validation protocol", f"`{tags.get('valid_protocol')}`"),
        ("Git commit", f"`{tags.get('git_commit')}`"),
        ("Training run", f"`{run_id}`"),
    ])]


def _data(hashes: dict[str, str]) -> list[str]:
    if not hashes:
        return []
    return ["## Data", "", "Content hashes: DVC's md5 from dvc.lock where it records the path, else sha256.", "",
            *_table(("Input", "Hash"), [(f"`{path}`", f"`{value}`") for path, value in sorted(hashes.items())])]


def _prompt(template: dict | None, params: dict) -> list[str]:
    if not template:
        return ["## Prompt", "", "No template.json beside the adapter.", ""]
    text = template.get("template", "").replace("```", "'''")
    return ["## Prompt", "", *_table(("", ""), [
        ("Format", f"`{template.get('format')}`"),
        ("History", f"`{template.get('history_format')}`, the latest {template.get('max_history')} titles"),
        ("Instruction phrasings", len(template.get("instructions") or [])),
        ("Prompt seed", (params.get("prompts") or {}).get("seed")),
    ]), "```text", text.rstrip("\n"), "```", ""]


def _training(params: dict, adapter: dict | None, summary: dict) -> list[str]:
    train = params.get("train") or {}
    if adapter:  # PEFT's own record of the trained weights
        lora = {"r": adapter.get("r"), "alpha": adapter.get("lora_alpha"), "dropout": adapter.get("lora_dropout"),
                "target_modules": adapter.get("target_modules")}
    else:
        lora = train.get("lora") or {}
    modules = lora.get("target_modules") or []
    modules = sorted(modules) if isinstance(modules, (list, tuple)) else [str(modules)]  # PEFT saves a set
    rows = [("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                     f"modules {', '.join(modules)}")]
    rows += [(key, f"`{train[key]}`") for key in TRAIN_KEYS if key in train]
    rows += [(f"run: {key}", f"`{summary[key]}`") for key in TRAINING_SUMMARY if summary.get(key) is not None]
    return ["## Training", "", *_table(("Setting", "Value"), rows)]


def _interval(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    low, high = (metrics.get("ci95_low") or {}).get(key), (metrics.get("ci95_high") or {}).get(key)
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if low is not None and high is not None else f"{value:.4f}"


def _cut_offs(metrics: dict) -> list[int]:
    """The k of a metrics file's ranking metrics, from its protocol."""
    return (metrics.get("protocol") or {}).get("k") or [5, 10]


def _metrics(valid: dict, test: dict) -> list[str]:
    names = metric_names(_cut_offs(test))
    rows = [(label, metrics.get("users"), *(_interval(metrics, key) for key in names))
            for label, metrics in (("validation", valid), ("test", test))]
    protocol = test.get("protocol") or {}
    shown = ", ".join(f"{k}={protocol[k]}" for k in ("num_beams", "constrained", "exclude_history", "max_users")
                      if k in protocol)
    return ["## Metrics", "", "Mean over users with its 95% bootstrap interval (users resampled). "
            f"Protocol: {shown}.", "", *_table(("Split", "Users", *(metric_label(key) for key in names)), rows)]


def _baselines(test: dict, baselines: dict[str, dict]) -> list[str]:
    if not baselines:
        return ["## Baselines on the same split", "", "No baseline metrics were found beside the test metrics.", ""]
    # The headline metrics: HR and NDCG at the largest cut-off (HR@10, NDCG@10 by default).
    k = max(_cut_offs(test))
    hr, ndcg = f"hr_at_{k}", f"ndcg_at_{k}"
    ours = test.get(ndcg)
    rows = [("**this version**", _interval(test, hr), _interval(test, ndcg), "")]
    for model, metrics in sorted(baselines.items(), key=lambda item: order_key(item[0])):
        theirs = metrics.get(ndcg)
        diff = f"{ours - theirs:+.4f}" if ours is not None and theirs is not None else "-"
        rows.append((model, _interval(metrics, hr), _interval(metrics, ndcg), diff))
    return ["## Baselines on the same split", "", "Test metrics of every model evaluated on this split "
            "(unpaired; the report stage's paired tests say which differences are significant).", "",
            *_table(("Model", metric_label(hr), metric_label(ndcg), f"this version minus model, {metric_label(ndcg)}"),
                    rows)]


BEYOND = (("coverage", "coverage", 3), ("arp", "ARP", 1), ("novelty", "novelty", 2), ("gini", "Gini", 3))
"""The beyond-accuracy metrics in the card's order: key prefix, label, digits."""
SLICE_LABELS = {"head": "head: popular targets", "torso": "torso", "tail": "tail: rare targets",
                "cold": "cold targets"}


def _slices(slices: dict | None) -> list[str]:
    if slices is None:
        return []
    first = next((m for groups in slices["slices"].values() for m in groups.values() if m.get("users")), {})
    names = metric_names(sorted({parse_metric(key)[1] for key in first if key.startswith(("hr_at_", "ndcg_at_"))}))
    popularity = slices.get("buckets", {}).get("popularity", {})
    edges = {"head": f"≥{popularity.get('head_min_interactions')} training interactions",
             "tail": f"≤{popularity.get('tail_max_interactions')}",
             "cold": f"<{popularity.get('cold_below_interactions')}", "torso": "between"}
    rows = []
    for kind in ("popularity", "history"):
        groups = slices["slices"].get(kind, {})
        order = [*SLICE_LABELS] if kind == "popularity" else sorted(groups, key=lambda name: int(name[1:]))
        for name in (name for name in order if name in groups):
            metrics = groups[name]
            if kind == "popularity":
                label = f"{SLICE_LABELS.get(name, name)} ({edges.get(name, '')})"
            else:
                bucket = slices.get("buckets", {}).get("history", {}).get(name, {})
                label = f"history {name} ({bucket.get('min_length')}–{bucket.get('max_length')} training items)"
            rows.append((label, metrics.get("users", 0), *(_interval(metrics, key) for key in names)))
    beyond = slices.get("beyond") or {}
    shown = ", ".join(f"{label}@{key.rpartition('_at_')[2]} {beyond[key]:.{digits}f}"
                      for prefix, label, digits in BEYOND for key in beyond
                      if key.startswith(f"{prefix}_at_") and isinstance(beyond[key], (int, float)))
    return ["## Slices of the test users", "",
            f"The test metrics by the target's popularity in the training split and by the user's history length, "
            f"on {slices.get('users_note')} (the report's analysis.json; definitions in docs/evaluation.md). "
            f"Beyond accuracy: {shown}.", "",
            *_table(("Slice", "Users", *(metric_label(key) for key in names)), rows)]
