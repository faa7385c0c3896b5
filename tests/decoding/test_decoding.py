"""The batched tree-attention beam search returns HF generate's beams, constrained and free."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from genrec.decoding.beam_search import BeamSettings, is_real, ranked_beams
from genrec.decoding.trie import build_title_trie

VOCAB, EOS, PAD = 64, 1, 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.3,  # peaked next-token distributions, unlike the default 0.02
                         bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def titles():
    """40 token sequences of 1-8 tokens, many sharing prefixes, some a prefix of another."""
    rng, out = random.Random(0), set()
    while len(out) < 40:
        if out and rng.random() < 0.5:
            base = list(rng.choice(sorted(out)))
            title = base[:rng.randint(0, len(base))] + [rng.randint(2, VOCAB - 1) for _ in range(rng.randint(1, 4))]
        else:
            title = [rng.randint(2, VOCAB - 1) for _ in range(rng.randint(1, 8))]
        out.add(tuple(title))
    return sorted(out)


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(1)
    return [[rng.randint(2, VOCAB - 1) for _ in range(rng.randint(3, 12))] for _ in range(5)]


def hf_beams(model, prompt, titles, settings, constrained=True):
    """Reference: HF generate for one prompt, with a plain-Python prefix function over `titles`."""
    following: dict[tuple, set] = {}
    for title in titles:
        full = [*title, EOS]
        for i in range(len(full)):
            following.setdefault(tuple(full[:i]), set()).add(full[i])

    def allowed(batch_id, ids):
        # After a whole title (or off the trie) only EOS: HF refuses an empty list.
        return sorted(following.get(tuple(ids[len(prompt):].tolist()), {EOS}))

    config = GenerationConfig(num_beams=settings.num_beams, num_return_sequences=settings.num_beams, do_sample=False,
                              max_new_tokens=settings.max_new_tokens, length_penalty=settings.length_penalty,
                              early_stopping=settings.early_stopping, eos_token_id=EOS, pad_token_id=PAD,
                              output_scores=True, return_dict_in_generate=True)
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         generation_config=config, prefix_allowed_tokens_fn=allowed if constrained else None)
    beams = []
    for seq, score in zip(out.sequences[:, len(prompt):].tolist(), out.sequences_scores.tolist()):
        length = seq.index(EOS) + 1 if EOS in seq else len(seq)
        if is_real(score, length, settings.length_penalty):
            beams.append((tuple(seq[:length - 1] if seq[length - 1] == EOS else seq[:length]), score))
    return beams


def assert_same(ours, reference):
    assert [h.tokens for h in ours] == [tokens for tokens, _ in reference]
    assert [h.score for h in ours] == pytest.approx([score for _, score in reference], abs=1e-4)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.0, True), (2.0, "never"),
                                                            (-0.7, False), (1.0, True)])
@pytest.mark.parametrize("exclude", [False, True])
def test_constrained_equals_hf_generate(model, titles, prompts, length_penalty, early_stopping, exclude):
    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=10, max_new_tokens=trie.max_length, length_penalty=length_penalty,
                            early_stopping=early_stopping, eos_token_id=EOS, pad_token_id=PAD)
    rng = random.Random(2)
    excluded = [rng.sample(range(len(titles)), 6) if exclude else [] for _ in prompts]
    ours = ranked_beams(model, prompts, settings, trie=trie, excluded=excluded, batch_size=3)
    for user, prompt in enumerate(prompts):
        allowed = [t for i, t in enumerate(titles) if i not in excluded[user]]
        assert_same(ours[user], hf_beams(model, prompt, allowed, settings))
        # HF's filler beams count as finished under early_stopping=True, so fewer titles may come back.
        assert len(ours[user]) == 10 or (early_stopping is True and len(ours[user]) > 0)
        assert all(titles[h.title] == h.tokens and h.title not in excluded[user] for h in ours[user])


def test_unconstrained_equals_hf_generate(model, prompts):
    settings = BeamSettings(num_beams=6, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD)
    ours = ranked_beams(model, prompts, settings, batch_size=2)
    for user, prompt in enumerate(prompts):
        assert_same(ours[user], hf_beams(model, prompt, [], settings, constrained=False))
        assert all(h.title is None for h in ours[user])


def test_eager_attention_gives_the_same_beams(model, titles, prompts):
    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=4, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD)
    sdpa = ranked_beams(model, prompts, settings, trie=trie, batch_size=5)
    model.config._attn_implementation = "eager"
    try:
        eager = ranked_beams(model, prompts, settings, trie=trie, batch_size=5)
    finally:
        model.config._attn_implementation = "sdpa"
    for a, b in zip(sdpa, eager):
        assert [h.tokens for h in a] == [h.tokens for h in b]


def test_generation_config_is_ignored_and_small_candidate_sets_do_not_crash(model, titles, prompts):
    trie = build_title_trie(titles[:3], EOS)
    settings = BeamSettings(num_beams=5, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD)
    before = ranked_beams(model, prompts[:2], settings, trie=trie)
    model.generation_config.do_sample, model.generation_config.temperature = True, 5.0
    try:
        after = ranked_beams(model, prompts[:2], settings, trie=trie, excluded=[[], [0, 1, 2]])
    finally:
        model.generation_config.do_sample, model.generation_config.temperature = False, 1.0
    assert [h.tokens for h in after[0]] == [h.tokens for h in before[0]]
    assert sorted(h.title for h in after[0]) == [0, 1, 2]  # only 3 titles exist: 3 real beams
    assert after[1] == []  # everything excluded: no beam, no crash


def forced_log_probs(model, prompt, tokens):
    """Teacher-forced log p of each generated token (the title tokens and the final EOS)."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]


@pytest.mark.parametrize("threshold", [0.5, 0.03])
def test_ghost_tokens_do_not_count_in_the_length(model, titles, prompts, threshold):
    """D3: each finished title scores sum(log p) / (tokens with p < threshold)."""
    import math

    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=5, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD,
                            ghost_threshold=threshold)
    beams = ranked_beams(model, prompts, settings, trie=trie, batch_size=3)
    ghosts = 0
    for prompt, hyps in zip(prompts, beams):
        assert len(hyps) == 5 and all(h.title is not None for h in hyps)
        for h in hyps:
            logps = forced_log_probs(model, prompt, [*h.tokens, EOS])
            counted = sum(lp < math.log(threshold) for lp in logps)
            ghosts += len(logps) - counted
            assert h.score == pytest.approx(sum(logps) / max(counted, 1), rel=1e-3, abs=1e-4)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert ghosts > 0 or threshold > 0.1  # at 0.03 the case the option is for occurs


def test_a_node_prior_steers_the_search_to_its_title(model, titles, prompts):
    from genrec.decoding.trie import node_log_mass

    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=5, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD)
    plain = ranked_beams(model, prompts, settings, trie=trie)
    favourite = len(titles) - 1
    probs = torch.full((1, len(titles)), 1e-6, dtype=torch.float64)
    probs[0, favourite] = 1.0
    probs /= probs.sum()
    log_mass = node_log_mass(trie, probs)
    assert log_mass[0, 0].item() == pytest.approx(0.0, abs=1e-6)  # the root holds all the mass
    leaf = trie.title_paths[favourite][trie.title_paths[favourite] >= 0][-1]
    assert log_mass[0, leaf].exp().item() == pytest.approx(probs[0, favourite].item(), rel=1e-5)

    def prior(chunk):
        return log_mass.expand(len(chunk), -1)

    off = ranked_beams(model, prompts, BeamSettings(**{**settings.__dict__, "prior_weight": 0.0}), trie=trie,
                       node_prior=prior)
    assert [[h.tokens for h in u] for u in off] == [[h.tokens for h in u] for u in plain]
    steered = ranked_beams(model, prompts, BeamSettings(**{**settings.__dict__, "prior_weight": 5.0}), trie=trie,
                           node_prior=prior)
    assert all(u[0].title == favourite for u in steered)
    assert any(u[0].title != favourite for u in plain)


def test_native_gqa_is_used_on_cpu_and_the_environment_is_restored(model, monkeypatch):
    """Inside the search transformers' sdpa gets grouped KV heads (no repeat_kv); outside, its own choice."""
    import os

    from transformers.integrations import sdpa_attention

    from genrec.decoding.beam_search import native_gqa_on_cpu

    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    key = torch.zeros(1, 2, 3, 8)
    mask = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    assert not sdpa_attention.use_gqa_in_sdpa(mask, key, key)
    with native_gqa_on_cpu(model):
        assert sdpa_attention.use_gqa_in_sdpa(mask, key, key)
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
    with native_gqa_on_cpu(model):
        pass
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "0"


def test_the_lm_head_only_ever_gets_contiguous_inputs_in_the_search(model, titles, prompts):
    """The prefill keeps the last position by index, so the head gets a contiguous copy: with
    logits_to_keep=1 it got a strided view (on CPU a 1.7 s batched matmul per 32-user batch of SmolLM2)."""
    head = model.get_output_embeddings()
    received = []
    recorder = head.register_forward_pre_hook(lambda _m, args: received.append(args[0].is_contiguous()))
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(2, VOCAB, (3, 7)), logits_to_keep=1)
            assert received == [False]  # the case this guards against
            received.clear()
            trie = build_title_trie(titles, EOS)
            ranked_beams(model, prompts, BeamSettings(num_beams=4, max_new_tokens=trie.max_length, eos_token_id=EOS,
                                                      pad_token_id=PAD), trie=trie, batch_size=5)
    finally:
        recorder.remove()
    assert len(received) > 1 and all(received)


def test_per_user_priors_follow_their_users_when_others_leave_the_batch(model, titles, prompts):
    """Each user's prior row stays its own while finished users leave the batch: batched = one user at a time."""
    from genrec.decoding.trie import node_log_mass

    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=4, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD,
                            prior_weight=2.0)
    probs = torch.rand((len(prompts), len(titles)), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    probs /= probs.sum(1, keepdim=True)
    log_mass = node_log_mass(trie, probs)
    # The longest prompt is decoded first (row 0); only one-token titles are left to it, so it finishes
    # after two steps and every other user moves up a row in the batch.
    first = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    excluded = [[t for t, title in enumerate(titles) if len(title) > 1] if i == first else [] for i in range(len(prompts))]
    assert len(excluded[first]) < len(titles)
    runs = [ranked_beams(model, prompts, settings, trie=trie, excluded=excluded, batch_size=size,
                         node_prior=lambda chunk: log_mass[chunk]) for size in (len(prompts), 1)]
    assert [[h.tokens for h in u] for u in runs[0]] == [[h.tokens for h in u] for u in runs[1]]
    assert all(len(h.tokens) == 1 for h in runs[0][first])


def test_a_batch_out_of_memory_is_decoded_again_in_halves(model, titles, prompts, monkeypatch, caplog):
    """Forward passes of more than `fits` users raise torch.OutOfMemoryError, as a GPU would (the real error is
    only reachable on a GPU): the batch of 5 is decoded as 3 (again too many) + 2, then 2 + 1 + 2."""
    trie = build_title_trie(titles, EOS)
    settings = BeamSettings(num_beams=4, max_new_tokens=trie.max_length, eos_token_id=EOS, pad_token_id=PAD)
    expected = ranked_beams(model, prompts, settings, trie=trie, batch_size=5)
    forward, rows, fits = model.forward, [], [2]

    def forward_within_memory(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        if rows[-1] > fits[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_within_memory)
    with caplog.at_level("WARNING", logger="genrec.decoding.beam_search"):
        got = ranked_beams(model, prompts, settings, trie=trie, batch_size=5)
    assert rows[:2] == [5, 3] and max(rows[2:]) <= 2
    assert [[h.tokens for h in u] for u in got] == [[h.tokens for h in u] for u in expected]
    assert [h.score for u in got for h in u] == pytest.approx([h.score for u in expected for h in u], abs=1e-5)
    assert "out of memory decoding 5 users together: decoding them 3 at a time" in caplog.text
    fits[0] = 0  # not even one user: nothing smaller to try, the error stands
    with pytest.raises(torch.OutOfMemoryError):
        ranked_beams(model, prompts, settings, trie=trie, batch_size=5)
