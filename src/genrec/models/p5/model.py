"""The P5 baseline's pieces: item indexing, item-id prompts, tokenizer and T5 model.

P5 (Geng et al. 2022, arXiv 2203.13366) casts sequential recommendation as text-to-text: a T5 reads
"user_23 has interacted with items <item_1043>, <item_77>, ...; what is the next item?" and writes
the next item's id. Here every item id is ONE whole token (`<item_N>`), so generating an item is a
single decoder step followed by EOS, and decoding can be constrained to real items exactly.

Item indexing: P5's original "sequential" ids number items in the order users met them, test items
included, which leaks the answer through the ids (P5 PR #3; OpenP5, Xu et al. 2023, assigns them
from training data only). The leaky variant is not offered: `random` (a seeded permutation, the
default) and `sequential` computed from the training sequences only.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from genrec.errors import DataError
from genrec.io import write_json
from genrec.config.params import P5Params
from genrec.data.prompts import choose_instruction, truncate_history
from genrec.data.sequences import Sequences, target_rows

log = logging.getLogger(__name__)

PHRASINGS: tuple[str, ...] = (
    "{user} has interacted with items {history}; what is the next item?",
    "Given the following interaction history of {user}: {history}, predict the next item for the user.",
    "I find the interaction history of {user}: {history}. Which item should be recommended next?",
    "Here is the item history of {user}: {history}. Try to predict the next item.",
    "Based on the items {history} of {user}, which item will the user choose next?",
)
"""Sequential-recommendation phrasings after P5's task family 2 (one chosen per record, seeded)."""

SCRATCH = "scratch"
SCRATCH_LABEL = "t5-small-shape-from-scratch"
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
INDEX_FILE = "item_index.json"
META_FILE = "p5.json"
ITEM_PATTERN = re.compile(r"<item_\d+>")


def item_token(number: int) -> str:
    """The whole token of item id `number`; the closing bracket keeps <item_1> out of <item_10>."""
    return f"<item_{number}>"


def user_word(user_id: str) -> str:
    return f"user_{user_id}"


def build_prompt(phrasing: str, user_id: str, history: Sequence[int]) -> str:
    """P5 prompt text for a user and their history of item ids (oldest first)."""
    return phrasing.format(user=user_word(user_id), history=", ".join(item_token(n) for n in history))


def choose_phrasing(seed: int, user_id: str, position: int, phrasings: Sequence[str] = PHRASINGS) -> str:
    """The phrasing of one record, fixed by (seed, user, target position) whatever the processing order."""
    return choose_instruction(seed, user_id, position, phrasings)


@dataclass(frozen=True)
class Record:
    """One P5 example: the target's P5 id and the P5 ids of the items before it."""

    user_id: str
    position: int
    history: tuple[int, ...]
    """P5 ids of earlier items, oldest first (the latest `limit` of them, see `records`)."""
    target: int


def records(user_ids: Sequence[str], rows: Sequence[int], starts: Sequence[int], positions: Sequence[int],
            numbers: Sequence[int], limit: int | None) -> list[Record]:
    """A record per target row of a user-sorted sequence table.

    Args:
        user_ids: per target row, its user.
        rows: target row indices into `numbers`.
        starts: per target row, the index of its user's first row.
        positions: per target row, its position in the user's sequence (seeds the phrasing).
        numbers: per row of the table, the P5 id of its item.
        limit: keep only the latest this many history items; None keeps all (exclusion needs them).

    The history is the rows strictly before the target, so no record can contain its own target
    (unless the user met the same item earlier).
    """
    out = []
    for user, row, start, position in zip(user_ids, rows, starts, positions):
        low = start if limit is None else max(start, row - limit)
        out.append(Record(user, int(position), tuple(int(n) for n in numbers[low:row]), int(numbers[row])))
    return out


@dataclass(frozen=True)
class ItemIndex:
    """The P5 id (1..N) of every catalogue item, and how it was assigned."""

    method: str
    seed: int | None
    ids: dict[str, int]

    def __post_init__(self) -> None:
        if sorted(self.ids.values()) != list(range(1, len(self.ids) + 1)):
            raise ValueError("item index: ids must number the items 1..N exactly once")

    def save(self, path: str | Path) -> None:
        write_json(path, {"method": self.method, "seed": self.seed, "ids": self.ids})

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(method=data["method"], seed=data["seed"], ids={str(k): int(v) for k, v in data["ids"].items()})

    def check_covers(self, item_ids: Iterable[str], path: str | Path) -> None:
        """Refuse a catalogue with items this index has no id for.

        Raises:
            DataError: naming the first uncovered item and how many there are.
        """
        missing = [i for i in item_ids if i not in self.ids]
        if missing:
            raise DataError(f"the P5 item index covers {len(self.ids)} items but not {len(missing)} catalogue "
                            f"items (e.g. {missing[0]!r})", path=path,
                            fix="retrain P5 on this split (dvc repro p5_train)")


def random_index(item_ids: Iterable[str], seed: int) -> ItemIndex:
    """A seeded permutation of the catalogue (sorted by item id first, so input order is irrelevant) onto 1..N."""
    ordered = sorted(set(item_ids))
    numbers = np.random.default_rng(seed).permutation(len(ordered)) + 1
    return ItemIndex("random", seed, {item: int(n) for item, n in zip(ordered, numbers)})


def sequential_index(train_sequences: Iterable[Sequence[str]], item_ids: Iterable[str]) -> ItemIndex:
    """Consecutive ids in order of first appearance in the TRAINING sequences (OpenP5's fix).

    Args:
        train_sequences: each user's training items, oldest first, users in a fixed order. Valid and
            test items must not be passed: numbering them by appearance would leak the answer.
        item_ids: the whole catalogue; items never seen in training get the last ids, in id order.
    """
    ids: dict[str, int] = {}
    for sequence in train_sequences:
        for item in sequence:
            ids.setdefault(item, len(ids) + 1)
    for item in sorted(set(item_ids) - ids.keys()):
        ids[item] = len(ids) + 1
    return ItemIndex("sequential", None, ids)


def fit_prompt(phrasing: str, user_id: str, history: Sequence[int], tokenizer, max_tokens: int) -> str:
    """The prompt with the longest suffix of `history` whose tokens fit `max_tokens`.

    Raises:
        DataError: when even the prompt without history does not fit.
    """
    def fits(kept: Sequence[int]) -> bool:
        return len(tokenizer(build_prompt(phrasing, user_id, kept))["input_ids"]) <= max_tokens

    try:
        return build_prompt(phrasing, user_id, truncate_history(list(history), fits))
    except ValueError:
        raise DataError(f"a P5 prompt for user {user_id!r} without history exceeds {max_tokens} tokens",
                        fix="raise p5.max_input_tokens") from None


def train_word_tokenizer(texts: Iterable[str], n_items: int):
    """A WordLevel tokenizer trained on the P5 prompts: pad 0, EOS 1, unk 2, then <item_1>..<item_N>.

    Item tokens are the trainer's special tokens, so each is in the vocabulary (also items absent
    from training prompts) and matched whole before pre-tokenisation; the encoder input ends with
    EOS, as T5's does.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK] + [item_token(n) for n in range(1, n_items + 1)]
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # The trainer pre-tokenises without splitting off added tokens ("<item_5>;" -> "<", "item_5", ">;"),
    # so the words are counted with the item tokens blanked out.
    words = (ITEM_PATTERN.sub(" ", text) for text in texts)
    backend.train_from_iterator(words, trainer=trainers.WordLevelTrainer(special_tokens=specials, show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def item_token_ids(tokenizer, n_items: int, path: str | Path) -> np.ndarray:
    """Token id of each item id 1..N (index 0 unused), checking each is one known token.

    Raises:
        DataError: when the vocabulary does not hold every item id as a whole token.
    """
    tokens = [item_token(n) for n in range(1, n_items + 1)]
    ids = tokenizer(tokens, add_special_tokens=False)["input_ids"]
    bad = [t for t, i in zip(tokens, ids) if len(i) != 1 or i[0] == tokenizer.unk_token_id]
    if bad:
        raise DataError(f"the P5 vocabulary does not hold {len(bad)} of {n_items} item ids as whole tokens "
                        f"(e.g. {bad[0]})", path=path, fix="retrain P5 on this split (dvc repro p5_train)")
    return np.array([-1] + [i[0] for i in ids], dtype=np.int64)


def build_model(p: P5Params, texts: Sequence[str], n_items: int):
    """(model, tokenizer, backbone label) for `p.backbone`, with one token per item id.

    `scratch`: a T5 config of T5-small's layout shrunk by the p5 size keys, random init (seeded by
    the caller), tokenizer trained on `texts`. Otherwise: a pretrained T5 and its tokenizer, with
    the item tokens added and the embeddings resized.
    """
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    if p.backbone == SCRATCH:
        tokenizer = train_word_tokenizer(texts, n_items)
        config = T5Config(vocab_size=len(tokenizer), d_model=p.d_model, d_ff=p.d_ff, d_kv=p.d_model // p.num_heads,
                          num_layers=p.num_layers, num_heads=p.num_heads, dropout_rate=p.dropout,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id)
        return T5ForConditionalGeneration(config), tokenizer, SCRATCH_LABEL
    log.info("P5 backbone %s: pretrained weights (a hub id needs network access, or a local copy)", p.backbone)
    tokenizer = AutoTokenizer.from_pretrained(p.backbone)
    tokenizer.add_tokens([item_token(n) for n in range(1, n_items + 1)])
    model = T5ForConditionalGeneration.from_pretrained(p.backbone, dropout_rate=p.dropout, use_safetensors=True)
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer, Path(p.backbone).name if Path(p.backbone).exists() else p.backbone


def check_checkpoint(meta: dict, dataset: str, split_fingerprint: str, path: str | Path) -> None:
    """Refuse a P5 checkpoint trained on another dataset or another split.

    Raises:
        DataError: naming both datasets or fingerprints.
    """
    if meta.get("dataset") != dataset:
        raise DataError(f"P5 checkpoint trained on dataset {meta.get('dataset')!r}, evaluating {dataset!r}",
                        path=path, fix="retrain P5 on this dataset (dvc repro p5_train)")
    if meta.get("split_fingerprint") != split_fingerprint:
        raise DataError(f"P5 checkpoint trained on split {str(meta.get('split_fingerprint'))[:12]}, evaluating "
                        f"split {split_fingerprint[:12]}", path=path,
                        fix="retrain P5 on this split (dvc repro p5_train)")


def build_index(seqs: Sequences, indexing: str, seed: int) -> ItemIndex:
    """`indexing` (random | sequential) over the catalogue; `sequential` sees the training rows only."""
    if indexing == "random":
        return random_index(seqs.item_ids, seed)
    train_rows = np.flatnonzero(seqs.split == 0)  # sorted by (user, position): users in id order
    bounds = np.flatnonzero(np.diff(seqs.user[train_rows])) + 1
    sequences = ([seqs.item_ids[c] for c in chunk] for chunk in np.split(seqs.item[train_rows], bounds))
    return sequential_index(sequences, seqs.item_ids)


def split_records(seqs: Sequences, name: str, train_targets: int | str, numbers: np.ndarray,
                  limit: int | None) -> list[Record]:
    """P5 records of one split's targets (train: the same positions as GenRec's prompts stage)."""
    rows = target_rows(seqs, name, train_targets)
    users = [seqs.user_ids[u] for u in seqs.user[rows].tolist()]
    return records(users, rows, seqs.start[rows], seqs.position[rows], numbers, limit)


def encode(records: list[Record], tokenizer, tokens: np.ndarray, seed: int, max_tokens: int,
           phrasings: Sequence[str] = PHRASINGS) -> tuple[list[tuple], int]:
    """(input ids, [item token, EOS]) per record, and how many prompts lost their oldest items to fit `max_tokens`."""
    chosen = [choose_phrasing(seed, r.user_id, r.position, phrasings) for r in records]
    texts = [build_prompt(phrasing, r.user_id, r.history) for phrasing, r in zip(chosen, records)]
    ids = tokenizer(texts)["input_ids"] if texts else []
    out, truncated = [], 0
    for record, phrasing, input_ids in zip(records, chosen, ids):
        if len(input_ids) > max_tokens:
            input_ids = tokenizer(fit_prompt(phrasing, record.user_id, record.history, tokenizer,
                                                max_tokens))["input_ids"]
            truncated += 1
        out.append((input_ids, [int(tokens[record.target]), tokenizer.eos_token_id]))
    return out, truncated


def read_meta(model_dir: Path) -> dict:
    """The `p5.json` written beside a checkpoint by the training stage."""
    path = model_dir / META_FILE
    if not path.exists():
        raise DataError("not a P5 checkpoint (no p5.json)", path=model_dir, fix="run `genrec p5_train` first")
    return json.loads(path.read_text(encoding="utf-8"))


# Training: a plain seeded torch loop (the loss is one item token + EOS; a Trainer adds nothing).


def batches(data: list[tuple], order, batch_size: int, pad_id: int, device):
    """Padded (input_ids, attention_mask, labels) tensors, `batch_size` examples at a time in `order`."""
    import torch

    for begin in range(0, len(order), batch_size):
        chunk = [data[i] for i in order[begin:begin + batch_size]]
        width = max(len(x) for x, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, (x, _) in enumerate(chunk):
            ids[row, :len(x)] = torch.tensor(x)
        labels = torch.tensor([y for _, y in chunk], dtype=torch.long)
        yield ids.to(device), (ids != pad_id).long().to(device), labels.to(device)


def train_loop(model, train_data: list[tuple], valid_data: list[tuple], p: P5Params, pad_id: int) -> dict:
    """Seeded AdamW epochs with linear warm-up/decay; logs losses to the active MLflow run."""
    import mlflow
    import torch
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    device = model.device
    total = p.epochs * math.ceil(len(train_data) / p.batch_size)
    warmup = int(p.warmup) if p.warmup >= 1 else round(p.warmup * total)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(p.seed)
    step, running, valid_loss = 0, [], float("nan")
    bar = tqdm(total=total, desc="p5 train", unit="step")
    for epoch in range(1, p.epochs + 1):
        model.train()
        order = torch.randperm(len(train_data), generator=generator).tolist()
        for ids, mask, labels in batches(train_data, order, p.batch_size, pad_id, device):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())
            bar.update()
            if step % p.logging_steps == 0:
                mlflow.log_metrics({"p5.loss": float(np.mean(running[-p.logging_steps:])),
                                    "p5.learning_rate": scheduler.get_last_lr()[0]}, step=step)
        valid_loss = mean_loss(model, valid_data, p.batch_size, pad_id)
        mlflow.log_metrics({"p5.valid_loss": valid_loss, "p5.epoch": epoch}, step=step)
        bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}", valid=f"{valid_loss:.3f}")
    bar.close()
    return {"steps": step, "epochs": p.epochs, "train_loss": float(np.mean(running[-50:])) if running else float("nan"),
            "valid_loss": valid_loss}


def mean_loss(model, data: list[tuple], batch_size: int, pad_id: int) -> float:
    """Mean per-example cross-entropy of `data` (each target is the same 2 tokens long)."""
    import torch

    if not data:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for ids, mask, labels in batches(data, range(len(data)), batch_size, pad_id, model.device):
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * len(labels)
    return total / len(data)
