"""The workspace's names and default locations, in one place.

`dvc.yaml` passes every path to every stage explicitly; these defaults serve only what a person runs by
hand (`genrec recommend --user`, an accelerate profile named without a path) from the repository root.
"""

from __future__ import annotations

from pathlib import Path

from genrec.errors import DataError

SPLITS = ("train", "valid", "test")
"""The leave-one-out parts, in sequence order: data/processed/<dataset>/<part>.parquet. Named only here."""

ACCELERATE_CONFIGS = Path("configs/accelerate")
"""Accelerate profiles: `train.accelerate_profile: cpu` means ACCELERATE_CONFIGS / "cpu.yaml"."""

PRESETS = Path("configs/presets")
"""Named sets of params overrides (`genrec preset NAME`), e.g. the paper's settings per dataset."""

PROCESSED = Path("data/processed")
"""The split of dataset D is PROCESSED / D (the `split` stage's output in dvc.yaml)."""


def accelerate_profile_path(profile: str) -> Path:
    """A YAML path as given, or a profile name resolved to ACCELERATE_CONFIGS/<name>.yaml (from the CWD)."""
    if profile.endswith((".yaml", ".yml")):
        return Path(profile)
    return ACCELERATE_CONFIGS / f"{profile}.yaml"


def check_accelerate_profile(profile: str, key: str) -> Path:
    """The YAML file of `profile` (`accelerate_profile_path`).

    Raises:
        DataError: the file does not exist; the message names `key` and lists the profiles there are.
    """
    path = accelerate_profile_path(profile)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))) or "none here"
        raise DataError(f"{key}={profile!r}: {path} does not exist",
                        fix=f"Use a profile in {ACCELERATE_CONFIGS}/ ({available}) or a path to an accelerate YAML")
    return path


def processed_dir(dataset: str) -> Path:
    """Where the split stage writes dataset `dataset`."""
    return PROCESSED / dataset
