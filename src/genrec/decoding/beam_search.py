"""Batched beam search that returns HF `generate`'s beams, constrained to catalogue titles or free.

The ranked lists equal those of `model.generate(num_beams=K, num_return_sequences=K,
do_sample=False, length_penalty=..., early_stopping=..., prefix_allowed_tokens_fn=<the trie>)` run
one user at a time: each step mirrors transformers 5.24's `_beam_search` (log-softmax over the full
vocabulary, then the trie mask; the top 2K continuations; the best K unfinished ones continue;
finished ones enter the K-best list scored sum(log p) / generated_length**length_penalty; the
early-stop heuristic and stopping rules per user). Only the work differs:

- Users are batched (left padding, attention mask, explicit position ids) and each prompt is
  prefilled ONCE; HF copies a prompt into every beam first, so it pays K prefills. Only the last
  position goes through the LM head, as a contiguous copy.
- The KV cache is never copied per beam nor reordered. The K beams of a user are fed as K query
  tokens of that user's single sequence ("tree attention"): each step appends their entries to
  the cache and a 4D mask lets every beam see only the prompt and its own ancestors. A beam that
  continues another just inherits that beam's ancestor row.
- HF's fillers are not computed. When fewer than K unfinished continuations exist (common deep
  inside titles, where the trie leaves one token), HF keeps just-finished beams running at a
  score near -1e9; in float32 no log-prob can move such a score, so only the leading beams
  above it get a forward pass (`_alive_beams`).
- A user leaves the batch (`Cache.batch_select_indices`) as soon as HF would have stopped its search.
- The trie lookup is tensorised (`genrec.decoding.trie`): one gather for the allowed tokens of every beam,
  one `searchsorted` to advance every beam.
- On CPU, sdpa attends grouped-query heads natively (`native_gqa_on_cpu`) instead of copying every
  key/value head per query head at each layer and step, as transformers does whenever there is a mask.

Hypotheses at HF's -1e9 scores appear in HF's output only when fewer than K real titles are
reachable (tiny catalogues, heavy exclusion, early_stopping=True); they are dropped (`is_real`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm import tqdm

from genrec.decoding.trie import TitleTrie, advance, allowed_tokens, excluded_node_keys

log = logging.getLogger(__name__)

IMPOSSIBLE = -1.0e9
"""HF's score for beams that must not be chosen (transformers' `_beam_search` uses the same value)."""


@dataclass(frozen=True)
class BeamSettings:
    """Explicit generation settings: nothing is read from the model's generation_config."""

    num_beams: int
    max_new_tokens: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int = 0
    pad_token_id: int = 0
    ghost_threshold: float | None = None
    """D3 length normalisation: generated tokens the search gives probability >= this ("ghost" tokens,
    p ~ 1 inside a title) do not count in the length; None: every token counts (HF)."""
    prior_weight: float = 0.0
    """Weight of a per-user node prior (`node_prior` of `ranked_beams`) added to every step's log-probs."""


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam: generated tokens without the final EOS, HF's score, the title it spells."""

    tokens: tuple[int, ...]
    score: float
    title: int | None
    """Catalogue title index (constrained search); None when unconstrained or not a title."""


def is_real(score: float, length: int, length_penalty: float) -> bool:
    """False for HF's filler beams: their unnormalised score sits at the -1e9 sentinel."""
    return score * length ** length_penalty > IMPOSSIBLE / 10


def decoding_order(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The order `ranked_beams` decodes prompts in: longest first (similar lengths pad less), ties in input order."""
    return sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))


def ranked_beams(model, prompts: Sequence[Sequence[int]], settings: BeamSettings, *, trie: TitleTrie | None = None,
                 excluded: Sequence[Sequence[int]] | None = None, batch_size: int = 16,
                 progress: bool = False, node_prior=None) -> list[list[Hypothesis]]:
    """Beam search for every prompt, `batch_size` users at a time, in `decoding_order`.

    A batch that runs out of GPU memory (`torch.OutOfMemoryError`) is decoded again in halves, and so on
    down to one user, with a warning; the lists are the same, in input order.

    Args:
        model: A causal LM with sdpa or eager attention, in eval mode.
        prompts: Prompt token ids per user.
        settings: Beam settings (see `BeamSettings`).
        trie: Catalogue trie for constrained search; None generates freely.
        excluded: Per user, title indices the search may not return (constrained only).
        batch_size: Users decoded together.
        progress: Show a tqdm bar over users.
        node_prior: Constrained only: a function of prompt indices giving [len(indices), trie nodes + 1]
            log-masses (`genrec.models.genrec.assist.node_log_mass`); a step from node a to node b adds
            `prior_weight * (prior[b] - prior[a])`, so a finished title gains prior_weight x its log-prob
            under the prior (D3's text-free assistant, mixed into every step of the search).

    Returns:
        Per user (in input order), its finished beams, best first (at most num_beams).
    """
    order = decoding_order(prompts)
    if trie is not None:
        trie = trie.to(model.device)
    results: list[list[Hypothesis]] = [[] for _ in prompts]

    def decode(chunk: list[int]) -> None:
        chunk_excluded = [excluded[i] for i in chunk] if excluded is not None else None
        prior = node_prior(chunk).to(model.device) if node_prior is not None and trie is not None else None
        try:
            beams = beam_search(model, [prompts[i] for i in chunk], settings, trie=trie, excluded=chunk_excluded,
                                prior=prior)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            beams = None  # retried below, once the failed attempt's tensors are released
        if beams is not None:
            for i, hyps in zip(chunk, beams):
                results[i] = hyps
            return
        half = (len(chunk) + 1) // 2
        log.warning("out of memory decoding %d users together: decoding them %d at a time", len(chunk), half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for begin in range(0, len(chunk), half):
            decode(chunk[begin:begin + half])

    bar = tqdm(total=len(prompts), desc="beam search", unit="user", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        decode(chunk)
        bar.update(len(chunk))
    bar.close()
    return results


@contextlib.contextmanager
def native_gqa_on_cpu(model):
    """Let transformers' sdpa attention pass `enable_gqa=True` with a mask, on CPU only.

    With a mask (always, here: the tree mask) transformers repeats each key/value head for every query
    head it serves (`repeat_kv`: SmolLM2-135M's 3 KV heads become 9 copies per layer and step) unless
    TRANSFORMERS_SDPA_FORCE_GQA=1. PyTorch's CPU kernels take grouped heads with a mask directly (CUDA's
    would fall back to the math kernel, so GPUs keep transformers' choice). Same math; the setting is
    restored on exit.
    """
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        yield
        return
    key, before = "TRANSFORMERS_SDPA_FORCE_GQA", os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def beam_search(model, prompts: Sequence[Sequence[int]], settings: BeamSettings, *, trie: TitleTrie | None = None,
                excluded: Sequence[Sequence[int]] | None = None, prior: torch.Tensor | None = None
                ) -> list[list[Hypothesis]]:
    """Beam search for one batch of prompts; see the module docstring. Returns beams per prompt."""
    with native_gqa_on_cpu(model):
        return _beam_search(model, prompts, settings, trie=trie, excluded=excluded, prior=prior)


@torch.inference_mode()
def _beam_search(model, prompts: Sequence[Sequence[int]], settings: BeamSettings, *, trie: TitleTrie | None = None,
                 excluded: Sequence[Sequence[int]] | None = None, prior: torch.Tensor | None = None
                 ) -> list[list[Hypothesis]]:
    device, k = model.device, settings.num_beams
    # Layers spread over several GPUs (eval.device=spread) keep their cache there: CPU indices select on any device.
    spread = len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1
    if trie is not None:
        trie = trie.to(device)
    closed = excluded_node_keys(trie, excluded).to(device) if trie is not None and excluded else None
    input_ids, attention = _left_pad(prompts, settings.pad_token_id, device)
    # The last position as an index, not logits_to_keep=1: that hands the LM head the strided view hidden[:, -1:],
    # and F.linear of a non-contiguous 3D input goes through matmul, which on CPU expands the [vocab, hidden]
    # weight once per user (1.8 GB and 1.7 s for a 32-user batch of SmolLM2, against 6 ms). Indexing copies.
    last = torch.tensor([input_ids.shape[1] - 1], device=device)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=last)
    cache = out.cache
    log_probs = torch.log_softmax(out.logits[:, -1], dim=-1, dtype=torch.float32).repeat_interleave(k, 0)
    beams = _Beams.start(len(prompts), k, settings.max_new_tokens, device)
    prompt_mask, next_position = attention.bool(), attention.sum(-1)
    users = torch.arange(len(prompts), device=device)
    user_ids = list(range(len(prompts)))  # `users` on the host, so results need no device read
    results: list[list[Hypothesis]] = [[] for _ in prompts]
    written = 0  # generated cache slots so far (K or fewer per step)
    fed = k
    for step in range(1, settings.max_new_tokens + 1):
        if step > 1:
            slots = written + torch.arange(fed, device=device)
            beams.ancestors[:, torch.arange(fed, device=device), slots] = True  # each fed token's own slot
            written += fed
            mask = _tree_mask(prompt_mask, beams.ancestors[:, :fed, :written], model)
            positions = (next_position + step - 2)[:, None].expand(-1, fed)
            out = model(input_ids=beams.seqs[:, :fed, step - 2], attention_mask=mask, position_ids=positions,
                        cache=cache, use_cache=True)
            log_probs = torch.log_softmax(out.logits, dim=-1, dtype=torch.float32).flatten(0, 1)
        if trie is not None:  # HF: log-softmax over the whole vocabulary first, then the constraint
            scores = _constrained_scores(log_probs, fed, beams.running_scores, trie, beams.nodes, users, closed,
                                         prior, settings.prior_weight)
        else:  # unfed beams are fillers: log-prob 0 leaves their -1e9 scores as HF's forward would
            log_probs = log_probs.view(len(users), fed, -1)
            if fed < k:
                log_probs = torch.cat([log_probs, log_probs.new_zeros(len(users), k - fed, log_probs.shape[-1])], 1)
            scores = log_probs + beams.running_scores[:, :, None]
        done = beams.step(scores.view(len(users), -1), step, settings, trie)
        # One host read a step: which users are done, and how many beams each has above the filler score.
        done_rows, alive = torch.stack([done.long(), _alive_beams(beams)]).tolist()
        finished = [row for row, d in enumerate(done_rows) if d]
        for row, hyps in zip(finished, beams.finished(finished, settings, trie)):
            results[user_ids[row]] = hyps
        if len(finished) == len(done_rows):
            break
        fed = k if settings.early_stopping is True else max(1, max(a for a, d in zip(alive, done_rows) if not d))
        if finished:  # users leave the batch; the rows that stay are known on the host already
            kept = torch.tensor([row for row, d in enumerate(done_rows) if not d])
            keep = kept.to(device, non_blocking=True)
            beams, users = beams.select(keep), users[keep]
            user_ids = [user for user, d in zip(user_ids, done_rows) if not d]
            prompt_mask, next_position = prompt_mask[keep], next_position[keep]
            cache.batch_select_indices(kept if spread else keep)
    return results


def _constrained_scores(log_probs: torch.Tensor, fed: int, running: torch.Tensor, trie: TitleTrie,
                        nodes: torch.Tensor, users: torch.Tensor, closed: torch.Tensor | None,
                        prior: torch.Tensor | None = None, weight: float = 0.0) -> torch.Tensor:
    """[users, K, vocab] beam scores: running score + log-prob of every token the trie allows at each beam's
    node, -inf elsewhere; with a prior, each allowed step also gains weight x (prior of the child node -
    prior of the parent).

    `log_probs` holds the first `fed` beams of each user ([users x fed, vocab]); the others are fillers
    whose log-probs count as 0 (see `_alive_beams`). Only the allowed entries are computed, into one
    -inf tensor, with HF's operations in HF's order (log-prob, + prior step, + running score), so the
    values are HF's to the bit; no dense [users x K, vocab] copy, sum or mask is made.
    """
    n_users, k = running.shape
    nodes = nodes.flatten()
    rows, tokens = allowed_tokens(trie, nodes, users.repeat_interleave(k), closed)
    user, beam = rows // k, rows % k
    is_fed = beam < fed
    # torch.where rather than boolean indexing, which would wait for the device to count the fed rows
    picked = log_probs[torch.where(is_fed, user * fed + beam, 0), tokens]
    values = torch.where(is_fed, picked, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device))
    if prior is not None and weight:
        parent = nodes[rows]
        child = advance(trie, parent, tokens)
        owner = users[user]  # the prior's row: the user's index in the batch it started in
        values += weight * (prior[owner, child] - prior[owner, parent])
    values = values + running.flatten()[rows]
    scores = torch.full((n_users * k, log_probs.shape[-1]), float("-inf"), dtype=log_probs.dtype,
                        device=log_probs.device)
    scores[rows, tokens] = values
    return scores.view(n_users, k, -1)


def _alive_beams(beams: _Beams) -> torch.Tensor:
    """[users] beams of each user not at HF's -1e9 filler score; the next step feeds the most any user has.

    Running beams are sorted by score, so fillers (finished titles HF keeps running when too few
    continuations remain, and dead beams) come last. Their log-probs cannot move a -1e9 score in
    float32 (its spacing is 64), so they are not computed. Under early_stopping=True fillers that
    finish can fill HF's finished list, so every beam is fed there, to stay exact.
    """
    return (beams.running_scores > IMPOSSIBLE / 10).sum(1)


def _left_pad(prompts: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        attention[row, width - len(p):] = 1
    return ids.to(device), attention.to(device)


def _tree_mask(prompt_mask: torch.Tensor, ancestors: torch.Tensor, model) -> torch.Tensor:
    """4D mask [users, 1, K, prompt + generated]: each beam sees the prompt and its own ancestors."""
    k = ancestors.shape[1]
    allowed = torch.cat([prompt_mask[:, None, :].expand(-1, k, -1), ancestors], dim=-1)[:, None]
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        zero = torch.zeros((), dtype=model.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(model.dtype).min)
    raise ValueError(f"attention {implementation!r}: beam search needs a 4D mask (load the model with "
                     "attn_implementation='sdpa' or 'eager')")


@dataclass
class _Beams:
    """Running and finished beams of the users in the batch; tensor names follow HF's `_beam_search`."""

    running_scores: torch.Tensor  # [users, K] cumulative log-probs
    seqs: torch.Tensor            # [users, K, max_new] generated tokens of the running beams
    nodes: torch.Tensor           # [users, K] trie node of each running beam
    ancestors: torch.Tensor       # [users, K, K * max_new] generated cache slots each beam attends to
    fin_scores: torch.Tensor      # [users, K] HF's beam_scores (length-normalised)
    fin_seqs: torch.Tensor        # [users, K, max_new]
    fin_nodes: torch.Tensor       # [users, K]
    fin_lengths: torch.Tensor     # [users, K] generated tokens, EOS included
    fin_done: torch.Tensor        # [users, K] HF's is_sent_finished
    improvable: torch.Tensor      # [users, 1] HF's is_early_stop_heuristic_unsatisfied
    counts: torch.Tensor          # [users, K] running beams' non-ghost tokens (ghost_threshold only)
    fin_counts: torch.Tensor      # [users, K] the length each finished beam was normalised by

    @classmethod
    def start(cls, users: int, k: int, max_new: int, device) -> _Beams:
        running = torch.zeros((users, k), device=device)
        running[:, 1:] = IMPOSSIBLE  # only beam 0 may expand at first, as in HF
        seqs = torch.zeros((users, k, max_new), dtype=torch.long, device=device)
        zeros = torch.zeros((users, k), dtype=torch.long, device=device)
        return cls(running_scores=running, seqs=seqs, nodes=zeros.clone(),
                   ancestors=torch.zeros((users, k, k * max_new), dtype=torch.bool, device=device),
                   fin_scores=torch.full((users, k), IMPOSSIBLE, device=device), fin_seqs=seqs.clone(),
                   fin_nodes=zeros.clone(), fin_lengths=zeros.clone(),
                   fin_done=torch.zeros((users, k), dtype=torch.bool, device=device),
                   improvable=torch.ones((users, 1), dtype=torch.bool, device=device),
                   counts=zeros.clone(), fin_counts=zeros.clone())

    def select(self, rows: torch.Tensor) -> _Beams:
        return _Beams(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})

    def step(self, scores: torch.Tensor, step: int, s: BeamSettings, trie: TitleTrie | None) -> torch.Tensor:
        """One HF beam step on [users, K x vocab] scores (running score + log-prob of each continuation);
        returns which users are done."""
        k = self.running_scores.shape[1]
        vocab = scores.shape[1] // k
        top_scores, top_index = torch.topk(scores, 2 * k)  # HF keeps (1 + number of EOS tokens) * K
        origin, tokens = top_index // vocab, top_index % vocab
        seqs = self.seqs.gather(1, origin[:, :, None].expand(-1, -1, self.seqs.shape[2]))
        seqs[:, :, step - 1] = tokens
        nodes = self.nodes.gather(1, origin)
        counts = torch.full_like(nodes, step)
        if s.ghost_threshold is not None:  # D3: a token the search was all but sure of adds no length
            token_log_probs = top_scores - self.running_scores.gather(1, origin)
            counts = self.counts.gather(1, origin) + (token_log_probs < math.log(s.ghost_threshold)).long()
        if trie is not None:
            nodes = advance(trie, nodes, tokens)
            nodes = torch.where(torch.isfinite(top_scores), nodes, torch.full_like(nodes, trie.dead))
        hits = (tokens == s.eos_token_id) | (step >= s.max_new_tokens)

        # Running beams for the next step: the best K continuations that did not finish.
        running = top_scores + hits.to(torch.float32) * IMPOSSIBLE
        nxt = torch.topk(running, k).indices
        self._update_finished(top_scores, seqs, nodes, hits, step, s, counts)
        self.running_scores, self.nodes = running.gather(1, nxt), nodes.gather(1, nxt)
        self.counts = counts.gather(1, nxt)
        self.seqs = seqs.gather(1, nxt[:, :, None].expand(-1, -1, seqs.shape[2]))
        parent = origin.gather(1, nxt)
        self.ancestors = self.ancestors.gather(1, parent[:, :, None].expand(-1, -1, self.ancestors.shape[2]))
        return self._done(hits, step, s)

    def _update_finished(self, top_scores: torch.Tensor, seqs: torch.Tensor, nodes: torch.Tensor,
                         hits: torch.Tensor, step: int, s: BeamSettings, counts: torch.Tensor) -> None:
        """HF's `_update_finished_beams`, in the same order of operations (so the same float rounding)."""
        k = self.fin_scores.shape[1]
        just_finished = hits & (torch.arange(2 * k, device=hits.device) < k)
        if s.ghost_threshold is None:
            normalised = top_scores / (step ** s.length_penalty)
        else:
            normalised = top_scores / (counts.clamp(min=1).to(torch.float32) ** s.length_penalty)
        normalised += (self.fin_done.all(-1, keepdim=True) & (s.early_stopping is True)).to(torch.float32) * IMPOSSIBLE
        normalised += (~self.improvable).to(torch.float32) * IMPOSSIBLE
        normalised += (~just_finished) * IMPOSSIBLE
        merged = torch.cat([self.fin_scores, normalised], 1)
        best = torch.topk(merged, k).indices

        def keep_best(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            both = torch.cat([old, new], 1)
            index = best if both.dim() == 2 else best[:, :, None].expand(-1, -1, both.shape[2])
            return both.gather(1, index)

        self.fin_scores = merged.gather(1, best)
        self.fin_seqs = keep_best(self.fin_seqs, seqs)
        self.fin_nodes = keep_best(self.fin_nodes, nodes)
        self.fin_lengths = keep_best(self.fin_lengths, torch.full_like(nodes, step))
        self.fin_counts = keep_best(self.fin_counts, counts.clamp(min=1))
        self.fin_done = keep_best(self.fin_done, just_finished)

    def _done(self, hits: torch.Tensor, step: int, s: BeamSettings) -> torch.Tensor:
        """HF's `_check_early_stop_heuristic` and `_beam_search_has_unfinished_sequences`, per user."""
        length = s.max_new_tokens if s.early_stopping == "never" and s.length_penalty > 0 else step
        if s.ghost_threshold is not None and s.early_stopping != "never":
            length = self.counts[:, :1].clamp(min=1).to(torch.float32)  # HF's heuristic, in D3's lengths
        best_possible = self.running_scores[:, :1] / (length ** s.length_penalty)
        worst = torch.where(self.fin_done, self.fin_scores.min(1, keepdim=True).values, IMPOSSIBLE)
        self.improvable = self.improvable & (best_possible > worst).any(-1, keepdim=True)
        all_full = self.fin_done.all(-1) & (s.early_stopping is True)
        return ~(self.improvable[:, 0] & ~all_full & ~hits.all(-1))

    def finished(self, rows: list[int], s: BeamSettings, trie: TitleTrie | None) -> list[list[Hypothesis]]:
        """The real finished beams of each user in `rows`, best first, read from the device in one wait."""
        if not rows:
            return []
        index = torch.tensor(rows).to(self.fin_scores.device, non_blocking=True)
        nodes = self.fin_nodes[index]
        titles = trie.node_title[nodes] if trie is not None else torch.full_like(nodes, -1)
        fields = _to_host(self.fin_scores[index], self.fin_seqs[index], titles, self.fin_lengths[index],
                          self.fin_counts[index], self.fin_done[index])
        return [_hypotheses(*user, s) for user in zip(*fields)]


def _to_host(*tensors: torch.Tensor) -> list[list]:
    """The tensors as nested lists after one wait for the device: asynchronous copies, then one sync."""
    copies = [t.to("cpu", non_blocking=True) for t in tensors]
    if tensors[0].is_cuda:
        torch.cuda.current_stream(tensors[0].device).synchronize()
    return [c.tolist() for c in copies]


def _hypotheses(scores, seqs, titles, lengths, counts, dones, s: BeamSettings) -> list[Hypothesis]:
    """One user's finished beams (host lists, best first) as Hypotheses, HF's fillers left out."""
    out = []
    for score, seq, title, length, count, done in zip(scores, seqs, titles, lengths, counts, dones):
        normalised_by = length if s.ghost_threshold is None else count
        if not done or not is_real(score, normalised_by, s.length_penalty):
            continue
        tokens = seq[:length]
        ended = tokens[-1] == s.eos_token_id
        title = title if ended else -1
        out.append(Hypothesis(tokens=tuple(tokens[:-1] if ended else tokens), score=score,
                              title=title if title >= 0 else None))
    return out
