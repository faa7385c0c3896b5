"""Every documented multi-process command trains the default recipe: the same effective batch, steps and
epochs (hence the same passes over the data), split over the profile's processes without a remainder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from genrec.config.params import load_params
from genrec.models.genrec.sft_trainer import accumulation_steps

ROOT = Path(__file__).resolve().parents[2]


def documented_commands(root: Path) -> list[tuple[str, str]]:
    """(file, command) for each `dvc exp run ...` in backticks that sets train.accelerate_profile without a preset,
    in the README, docs/ and the accelerate profiles' comments (a command there may run over several lines)."""
    found = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md")),
                 *sorted((root / "configs" / "accelerate").glob("*.yaml"))]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".yaml":
            text = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
        for command in re.findall(r"`(dvc exp run [^`]*)`", text):
            if "train.accelerate_profile=" in command and "genrec preset" not in command:
                found.append((str(path.relative_to(root)), " ".join(command.split())))
    return found


def passes(overrides: list[str]) -> tuple[int, int | None, float, int]:
    """(effective batch, steps, epochs, accumulation) of the params with `overrides`, on the profile's processes."""
    params = load_params(ROOT / "params.yaml", overrides)
    profile = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{params.train.accelerate_profile}.yaml").read_text())
    tp = params.train
    return tp.batch_size, tp.max_steps, tp.epochs, accumulation_steps(tp, profile["num_processes"])


COMMANDS = documented_commands(ROOT)


def test_the_gpu_commands_are_found():
    profiles = {re.search(r"train\.accelerate_profile=(\S+)", c).group(1) for _, c in COMMANDS}
    assert {"1gpu", "4gpu", "fsdp"} <= profiles, COMMANDS


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[13:60]}" for w, c in COMMANDS])
def test_a_documented_profile_command_trains_the_default_recipe(where, command):
    overrides = re.findall(r"-S (\S+)", command)
    batch, steps, epochs, _ = passes(overrides)
    default_batch, default_steps, default_epochs, _ = passes([])
    assert (batch, steps, epochs) == (default_batch, default_steps, default_epochs), (
        f"{where}: `{command}` trains {steps} steps of {batch} ({epochs} epochs), the default "
        f"{default_steps} of {default_batch}")
    assert any(o.startswith("eval.accelerate_profile=") for o in overrides), f"{where}: `{command}` evaluates on the CPU"


def test_the_old_4gpu_command_is_caught():
    """The check can fail: batch 128 with the default 120 steps is 16 times the default's passes."""
    batch, steps, _, accumulation = passes(["train.accelerate_profile=4gpu", "train.batch_size=128",
                                            "train.micro_batch_size=4"])
    assert (batch * steps, accumulation) == (16 * 8 * 120, 8)
