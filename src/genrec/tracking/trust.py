"""What genrec checks in a registered version before serving it: who built it, and that its files are the ones hashed.

Loading a pyfunc version runs whatever code it holds: models-from-code execute the stored entry point, a pickled
PythonModel runs on unpickling. `genrec recommend` therefore runs none of it. It downloads the version, accepts
it only if its MLmodel is the one genrec writes (`check_built_by_genrec`: one `python_function` flavor with
MLflow's models-from-code loader, no extra code paths, the entry point byte-identical to the one genrec writes
now, artifacts `adapter` and `items` inside the version), then builds the model itself from the checked files.

Content hashes (`content_hashes`) are recorded at registration twice: as version tags (in the registry's
database) and in the MLmodel's model config (beside the files, read by `mlflow models serve` in
`load_context`). Each group of files is hashed on its own, so a refusal names what changed.
See docs/team.md for the trust model: what these checks cover and what they cannot.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from genrec.errors import DataError
from genrec.tracking.runs import sha256_file

log = logging.getLogger(__name__)

ENTRY_POINT = "genrec_model.py"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
ARTIFACTS = ("adapter", "items")
CONFIG_KEYS = ("backbone_uri", "backbone_sha256", "eval", "dataset")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TEMPLATE_FILE = "template.json"
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab", "merges",
                      "spiece")
"""Files transformers' AutoTokenizer reads from the adapter folder (by name)."""
HASH_TAGS = ("adapter_sha256", "tokenizer_sha256", "template_sha256", "other_files_sha256", "catalogue_sha256")
"""Version tags (and model-config keys under `sha256`) of the hashed groups of files."""
REFUSED_FIX = "serve only versions that `genrec promote` registered; re-register the adapter with `genrec promote`"


def group_of(name: str) -> str:
    """The hash tag covering a file of the adapter folder (its path relative to the folder)."""
    if name in ADAPTER_FILES:
        return "adapter_sha256"
    if name == TEMPLATE_FILE:
        return "template_sha256"
    if "/" not in name and name.startswith(TOKENIZER_PREFIXES):
        return "tokenizer_sha256"
    return "other_files_sha256"


def files_hash(files: list[tuple[str, Path]]) -> str:
    """sha256 over sorted (name, file sha256) pairs."""
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(f"{name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def content_hashes(adapter_dir: Path, items_path: Path, adapter_sha256: str) -> dict[str, str]:
    """sha256 of each group of files a version serves from: `HASH_TAGS` -> hex digest.

    `adapter_sha256` is passed in (`registry.adapter_hash`): it identifies the adapter in the registry and
    keeps its own recipe. The other files of the adapter folder are hashed by group (`group_of`), the
    catalogue on its own.
    """
    groups: dict[str, list[tuple[str, Path]]] = {tag: [] for tag in HASH_TAGS[1:4]}
    for path in sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file()):
        name = path.relative_to(adapter_dir).as_posix()
        if group_of(name) != "adapter_sha256":
            groups[group_of(name)].append((name, path))
    return {"adapter_sha256": adapter_sha256, **{tag: files_hash(files) for tag, files in groups.items()},
            "catalogue_sha256": sha256_file(Path(items_path))}


def check_content(actual: dict[str, str], expected: dict[str, str], source: str, adapter_dir: Path) -> list[str]:
    """Refuse a group of files whose hash differs from the recorded one.

    Returns:
        The tags `expected` does not record (a version registered before they existed): loaded unchecked.

    Raises:
        DataError: one line naming the group, its files and both hashes.
    """
    for tag in HASH_TAGS:
        if tag in expected and expected[tag] != actual[tag]:
            files = sorted(p.relative_to(adapter_dir).as_posix() for p in Path(adapter_dir).rglob("*")
                           if p.is_file() and group_of(p.relative_to(adapter_dir).as_posix()) == tag)
            shown = ", ".join(files) if tag != "catalogue_sha256" else "items.parquet"
            raise DataError(f"{tag.removesuffix('_sha256').replace('_', ' ')} ({shown or 'no file'}) has sha256 "
                            f"{actual[tag][:12]}, the version records {expected[tag][:12]}: its files were "
                            f"changed after registration, refused", path=source, fix=REFUSED_FIX)
    return [tag for tag in HASH_TAGS if tag not in expected]


def check_built_by_genrec(local_dir: Path, model_code: str, source: str) -> dict:
    """Refuse a downloaded version whose MLmodel or entry point is not what genrec writes; nothing is executed.

    Returns:
        The `python_function` flavor's configuration (its `config` and `artifacts`).

    Raises:
        DataError: one line saying what differs.
    """
    import yaml

    def refuse(what: str):
        return DataError(f"not a version genrec built: {what}; genrec loads no other code", path=source,
                         fix=REFUSED_FIX)

    mlmodel = Path(local_dir) / "MLmodel"
    try:
        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors") or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as err:
        raise refuse(f"no readable MLmodel ({type(err).__name__})") from None
    if set(flavors) != {"python_function"}:
        raise refuse(f"flavors {sorted(flavors)}, expected only python_function")
    pyfunc = flavors["python_function"]
    if pyfunc.get("loader_module") != CODE_LOADER or not pyfunc.get("model_code_path"):
        kind = "a pickled python_model" if pyfunc.get("python_model") else f"loader {pyfunc.get('loader_module')}"
        raise refuse(f"{kind}, expected genrec's models-from-code entry point")
    if Path(str(pyfunc["model_code_path"])).name != ENTRY_POINT or pyfunc.get("code"):
        raise refuse(f"entry point {Path(str(pyfunc['model_code_path'])).name} with code paths "
                     f"{pyfunc.get('code')!r}, expected {ENTRY_POINT} and none")
    code = Path(local_dir) / ENTRY_POINT
    expected = hashlib.sha256(model_code.encode()).hexdigest()
    if not code.is_file() or sha256_file(code) != expected:
        raise refuse(f"{ENTRY_POINT} differs from the entry point genrec writes (sha256 {expected[:12]})")
    artifacts = pyfunc.get("artifacts") or {}
    config = pyfunc.get("config") or {}
    if set(artifacts) != set(ARTIFACTS) or not all(key in config for key in CONFIG_KEYS):
        raise refuse(f"artifacts {sorted(artifacts)} and config keys {sorted(config)}, expected "
                     f"{list(ARTIFACTS)} and {list(CONFIG_KEYS)}")
    root = Path(local_dir).resolve()
    for key, entry in artifacts.items():
        path = (root / str((entry or {}).get("path", ""))).resolve()
        if not path.is_relative_to(root) or path == root or not path.exists():
            raise refuse(f"artifact {key!r} is not a file of the version ({(entry or {}).get('path')!r})")
    return pyfunc
