"""SASRec, the self-attentive sequential baseline: model, training over the full catalogue, ranking.

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018, arXiv 1808.09781): item +
learned position embeddings, causal self-attention blocks with layer-norm on the queries, a
point-wise feed-forward, prediction by the dot product with the shared item embeddings. Unlike the
paper's sampled binary loss it is trained with cross-entropy over the full catalogue (as in
Klenitskiy & Vasilev, RecSys 2023, who found that much stronger). Ranking and evaluation follow
`genrec.evaluation.scoring`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrec.evaluation.scoring import SplitData, eval_cases, target_ranks, top_k
from genrec.config.params import SasrecParams
from genrec.models.device import choose_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SasrecConfig:
    """What it takes to rebuild a SASRec model (saved as config.json beside its weights)."""

    num_items: int
    max_len: int
    hidden: int
    blocks: int
    heads: int
    dropout: float


class SelfAttentionBlock(nn.Module):
    """One SASRec block: causal attention with a normalised query, then a point-wise feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.forward_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                          nn.Linear(hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # The residuals add the *normalised* input, as the authors' code does.
        query = self.attention_norm(x)
        attended, _ = self.attention(query, x, x, attn_mask=causal, need_weights=False)
        x = self.forward_norm(query + attended)
        return (x + self.feed_forward(x)) * keep


class SASRec(nn.Module):
    """Self-attentive sequential recommender; `forward` gives one hidden state per input position."""

    def __init__(self, config: SasrecConfig):
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(config.hidden, config.heads, config.dropout)
                                    for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        # Small embeddings keep the first logits near uniform: N(0, 1) (torch's default) starts the
        # catalogue softmax with a loss of ~30 instead of log N. Xavier, as the authors' code.
        for embedding in (self.item_embedding, self.position_embedding):
            nn.init.xavier_normal_(embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden states [batch, max_len, hidden] of left-padded item codes [batch, max_len]."""
        length = sequences.shape[1]
        keep = (sequences > 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        positions = torch.arange(length, device=sequences.device)
        x = self.item_embedding(sequences) * math.sqrt(self.config.hidden) + self.position_embedding(positions)
        x = self.dropout(x) * keep
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal, keep)
        return self.final_norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item (codes 1..N, column c - 1) for hidden states [..., hidden]."""
        return hidden @ self.item_embedding.weight[1:].T


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` codes of each sequence, left-padded with 0 to [len(sequences), length]."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = sequence[-length:]
        if tail.size:
            out[row, length - tail.size:] = tail
    return out


def training_windows(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets [windows, max_len] covering every training position once.

    A sequence longer than max_len + 1 is cut from its end into windows of max_len targets, each
    with the max_len items before them as context, so long histories contribute every position
    (the SASRec paper keeps only the latest max_len).
    """
    inputs, targets = [], []
    for sequence in train:
        for end in range(len(sequence), 1, -max_len):
            window = sequence[max(0, end - max_len - 1):end]
            inputs.append(window[:-1])
            targets.append(window[1:])
    return left_pad(inputs, max_len), left_pad(targets, max_len)


@torch.no_grad()
def rank_with_sasrec(model: SASRec, histories: list[np.ndarray], k: int, exclude_history: bool,
                     batch: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Top-k item codes and scores for each history, scored over the full catalogue."""
    model.eval()
    device = next(model.parameters()).device
    codes, values = [], []
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        inputs = torch.from_numpy(left_pad(chunk, model.config.max_len)).to(device)
        logits = model.item_logits(model(inputs)[:, -1]).float().cpu().numpy()
        scores = np.concatenate([np.full((len(chunk), 1), -np.inf), logits], axis=1)
        c, v = top_k(scores, chunk, k, exclude_history)
        codes += c
        values += v
    return codes, values


def _epoch(model: SASRec, optimizer, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
           generator: torch.Generator, bf16: bool) -> float:
    """One pass over the training windows in a seeded order; the mean cross-entropy per target."""
    model.train()
    total, count = 0.0, 0
    for rows in torch.randperm(len(inputs), generator=generator).split(batch_size):
        x, y = inputs[rows], targets[rows]
        mask = y > 0
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            # Only real target positions go through the catalogue-sized output layer.
            logits = model.item_logits(model(x)[mask])
        loss = nn.functional.cross_entropy(logits.float(), y[mask] - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * int(mask.sum())
        count += int(mask.sum())
    return total / max(count, 1)


def train_sasrec(data: SplitData, cfg: SasrecParams, exclude_history: bool) -> tuple[SASRec, list[dict]]:
    """Train on the training sequences; select the epoch with the best validation `cfg.select_metric`.

    Args:
        data: the split; validation scores every user's valid item with its training history.
        cfg: the `sasrec` params section.
        exclude_history: rank validation items as the evaluation does.

    Returns:
        The best epoch's model (eval mode) and one record per epoch: loss, valid HR@10 / NDCG@10, seconds.
    """
    from genrec.evaluation.metrics import hit_ratio_at_k, ndcg_at_k

    torch.manual_seed(cfg.seed)
    device = choose_device(cfg.device, key="sasrec.device", process_gpu=False)
    config = SasrecConfig(num_items=data.num_items, max_len=cfg.max_len, hidden=cfg.hidden, blocks=cfg.blocks,
                          heads=cfg.heads, dropout=float(cfg.dropout))
    model = SASRec(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs, targets = (torch.from_numpy(a).to(device) for a in training_windows(data.train, cfg.max_len))
    histories, valid_targets = eval_cases(data, "valid", np.arange(len(data.users)))
    log.info("SASRec: %d training windows, %d items, %d parameters on %s", len(inputs), data.num_items,
             sum(p.numel() for p in model.parameters()), device)
    history, best, best_state, stale = [], -1.0, None, 0
    for epoch in range(1, cfg.max_epochs + 1):
        start = time.perf_counter()
        loss = _epoch(model, optimizer, inputs, targets, cfg.batch_size, generator, cfg.bf16)
        ranks = target_ranks(rank_with_sasrec(model, histories, 10, exclude_history)[0], valid_targets)
        record = {"epoch": epoch, "loss": loss, "valid_hr_at_10": hit_ratio_at_k(ranks, 10),
                  "valid_ndcg_at_10": ndcg_at_k(ranks, 10), "seconds": time.perf_counter() - start}
        history.append(record)
        log.info("SASRec epoch %d: loss %.4f, valid HR@10 %.4f, NDCG@10 %.4f (%.1fs)", epoch, loss,
                 record["valid_hr_at_10"], record["valid_ndcg_at_10"], record["seconds"])
        if record[f"valid_{cfg.select_metric}"] > best:
            best, stale = record[f"valid_{cfg.select_metric}"], 0
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), history


def save_sasrec(model: SASRec, out_dir: Path, extra: dict) -> None:
    """Write model.safetensors and config.json (the model config plus `extra`) into `out_dir`."""
    from safetensors.torch import save_file

    from genrec.io import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
    write_json(out_dir / "config.json", {**dataclasses.asdict(model.config), **extra})


def load_sasrec(model_dir: str | Path, device: str = "cpu") -> tuple[SASRec, dict]:
    """Rebuild a saved SASRec (eval mode) and return it with its full config.json."""
    import json

    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config = SasrecConfig(**{f.name: saved[f.name] for f in dataclasses.fields(SasrecConfig)})
    model = SASRec(config)
    model.load_state_dict(load_file(model_dir / "model.safetensors"))
    return model.to(device).eval(), saved
