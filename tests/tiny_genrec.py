"""A tiny GenRec world shared by the registry, promote, recommend and serving tests (not a test module).

A catalogue of real-looking titles, a leave-one-out split, a 2-layer random LLaMA with a byte-level
BPE tokenizer, LoRA adapters laid out as `genrec train` writes them (each with its own MLflow run),
and metrics files made by the evaluation's own `genrec.evaluation.outputs.summarise`. Test modules `import tiny_genrec`
(pyproject.toml puts tests/ on pytest's pythonpath).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch

from genrec.tracking import runs as tracking
from genrec.config.params import EvalParams, Params, TrackingParams, to_dict
from genrec.data.prompts import INSTRUCTIONS, PromptTemplate

TITLES = ["Toy Story (1995)", "Heat (1995)", "American President, The (1995)", "GoldenEye (1995)",
          "Jumanji (1995)", "Casino (1995)", "Sabrina (1995)", "Sudden Death (1995)", "Balto (1995)",
          "Nixon (1995)", "Othello (1995)", "Now and Then (1995)", "Persuasion (1995)", "Money Train (1995)",
          "Assassins (1995)", "Clueless (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Copycat (1995)",
          "Powder (1995)", "Braveheart (1995)", "Apollo 13 (1995)", "Pocahontas (1995)", "Waterworld (1995)"]
USERS = 6
SEQUENCE = 6  # items per user: 4 train, 1 valid, 1 test
SEQUENCES = {f"u{u}": [str((u * 5 + p * 7) % len(TITLES)) for p in range(SEQUENCE)] for u in range(USERS)}


def params(tmp: Path, **eval_overrides) -> Params:
    """Params of the tiny world: dataset `tiny`, MLflow on SQLite in `tmp`."""
    return Params(dataset="tiny", tracking=TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}"),
                  eval=replace(EvalParams(batch_size=4, bootstrap_samples=50), **eval_overrides))


def write_split(folder: Path, sequences: dict[str, list[str]] | None = None, titles: dict[str, str] | None = None,
                extra_items: Iterable[str] = (), timestamp: Callable[[int, int], int] = lambda u, p: 1000 * u + p,
                shuffle: bool = False) -> Path:
    """items.parquet and train/valid/test.parquet as the split stage writes them, leave-one-out.

    `sequences` maps each user id to its full chronological item ids (default: this world's SEQUENCES): the
    last item goes to test, the one before to valid, the rest to train. `titles` (item id -> title) is the
    catalogue; by default this world's TITLES (item ids "0".."23") with the default sequences, else
    "Title <id>" for every item of `sequences` and `extra_items`. The u-th user's item at `position` gets
    `timestamp(u, position)`. Rows are sorted by user id and position, or in a seeded random order with
    `shuffle`; timestamp and position are int64.
    """
    if sequences is None:
        sequences, titles = SEQUENCES, titles or {str(i): title for i, title in enumerate(TITLES)}
    if titles is None:
        titles = {i: f"Title {i}" for i in sorted({i for seq in sequences.values() for i in seq} | set(extra_items))}
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "valid": [], "test": []}
    for u, (user, items) in enumerate(sequences.items()):
        for p, item in enumerate(items):
            name = "test" if p == len(items) - 1 else "valid" if p == len(items) - 2 else "train"
            rows[name].append((user, item, timestamp(u, p), p))
    for name, part in rows.items():
        frame = pd.DataFrame(part, columns=["user_id", "item_id", "timestamp", "position"]).astype(
            {"timestamp": "int64", "position": "int64"})
        frame = frame.sample(frac=1, random_state=0) if shuffle else frame.sort_values(["user_id", "position"])
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    pd.DataFrame({"item_id": list(titles), "title": list(titles.values())}).to_parquet(
        folder / "items.parquet", index=False)
    return folder


def write_backbone(folder: Path, texts: list[str] | None = None, hidden_size: int = 32,
                   initializer_range: float = 0.2, max_positions: int = 512) -> Path:
    """A 2-layer random LlamaForCausalLM and a byte-level BPE tokenizer trained on `texts` (default: the
    titles and prompts of this world)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = texts or TITLES + list(INSTRUCTIONS) + [PromptTemplate().template]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         initializer_range=initializer_range, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_adapter(folder: Path, base: Path, p: Params, seed: int) -> Path:
    """A real LoRA adapter (non-zero B, so it changes the model) with the files `genrec train` writes,
    including mlflow_run.json for a fresh training run in the tiny experiment."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    n_params = model.num_parameters()
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    peft.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    PromptTemplate(max_history=5).save(folder / "template.json")
    (folder / "config.json").write_text(json.dumps({"params": to_dict(p), "base_model": {
        "path": str(base), "hash": f"sha256:{tracking.sha256_path(base)}", "model_type": "llama",
        "num_parameters": n_params}}))
    with tracking.start_or_resume_run(p, run_name=f"train-{seed}") as run:
        tracking.write_run_file(folder / tracking.RUN_FILE, run)
    return folder


def write_metrics(path: Path, split: str, ranks: list[int | None], predictions: Path | None = None, *,
                  model_dir: Path | None = None, processed: Path | None = None, **eval_overrides) -> dict:
    """A metrics file exactly as `genrec evaluate` writes it, for users u0, u1... whose targets sit at `ranks`;
    with `predictions`, the predictions file of the same evaluation too (and its sha256 in the metrics); with
    `model_dir` and `processed`, the adapter's hash and the split's fingerprint, as an evaluation of them records."""
    from genrec.io import split_fingerprint, write_json
    from genrec.evaluation.outputs import summarise, write_predictions
    from genrec.tracking.registry import adapter_hash

    e = replace(EvalParams(bootstrap_samples=50), split=split, **eval_overrides)
    records = [{"user_id": f"u{u}", "target_item_id": "target"} for u in range(len(ranks))]
    lists = [[{"title": f"t{i}", "item_ids": ["target" if rank == i + 1 else f"other{i}"]} for i in range(10)]
             for rank in ranks]
    metrics = summarise(records, lists, e, 1.0, truncated=0, hopeless=0, shared_titles=0, max_new_tokens=8)
    if model_dir is not None:
        metrics["model_sha256"] = adapter_hash(model_dir)
    if processed is not None:
        metrics["split_fingerprint"] = split_fingerprint(processed)
    if predictions is not None:
        metrics["predictions_sha256"] = write_predictions(predictions, [{**r, "target_title": None, "ranked": entries}
                                                                        for r, entries in zip(records, lists)])
    write_json(path, metrics)
    return metrics


def world(tmp: Path) -> dict:
    """Split, backbone and params in `tmp` (adapters are made per test with `write_adapter`)."""
    return {"tmp": tmp, "processed": write_split(tmp / "processed"), "base": write_backbone(tmp / "base"),
            "params": params(tmp)}


def promote(w: dict, name: str, seed: int, valid_ranks: list, test_ranks: list, **paths):
    """Make an adapter and its metrics (and validation predictions) files under `w['tmp']/name`, then run the
    promote stage on it; `paths` may replace a path, `params=` the world's params, and `eval=` (a dict)
    change the protocol of both metrics files."""
    from genrec.stages import promote as stage

    folder = w["tmp"] / name
    model_dir = paths.pop("model_dir", None) or write_adapter(folder / "model", w["base"], w["params"], seed)
    params = paths.pop("params", None) or w["params"]
    overrides = paths.pop("eval", {})
    evidence = {"model_dir": model_dir, "processed": w["processed"]}
    write_metrics(folder / "valid.json", "valid", valid_ranks, predictions=folder / "valid.jsonl", **evidence,
                  **overrides)
    write_metrics(folder / "test.json", "test", test_ranks, **evidence, **overrides)
    kwargs = dict(model_dir=model_dir, base_dir=w["base"], processed_dir=w["processed"],
                  valid_metrics_path=folder / "valid.json", valid_predictions_path=folder / "valid.jsonl",
                  test_metrics_path=folder / "test.json", out_path=folder / "promotion.json")
    kwargs.update(paths)
    return stage.run(params, **kwargs)


def write_interim(folder: Path, rows: list[tuple], titles: list[str]) -> Path:
    """The ingest stage's canonical tables: (user_id, item_id, timestamp, rating) rows; items "0".."n-1"."""
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_parquet(
        folder / "interactions.parquet", index=False)
    pd.DataFrame({"item_id": [str(i) for i in range(len(titles))], "title": titles}).to_parquet(
        folder / "items.parquet", index=False)
    return folder


def launch_command(config: Path | str, *args: str) -> list[str]:
    """`accelerate launch --config_file <config>` of `args` (a module is `-m genrec.cli ...`), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
            "--main_process_port", str(port), *args]


def launch_env() -> dict:
    """The environment of a launched test: one passive OpenMP thread a process (two processes on 2 cores, and
    threaded reductions that do not differ between runs), MLflow telemetry off, the tracking URI from params."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def accelerate_launch(config: Path | str, *args: str, cwd: Path | None = None,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `launch_command(config, *args)` in `launch_env()`, output captured as text."""
    return subprocess.run(launch_command(config, *args), cwd=cwd, env=launch_env(), capture_output=True, text=True,
                          timeout=timeout)
