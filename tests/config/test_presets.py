"""Presets (configs/presets/*.yaml): each one is a valid set of params overrides that `genrec preset` prints."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from genrec.config import presets
from genrec.models.genrec import sft_trainer
from genrec.cli import main
from genrec.errors import DataError
from genrec.config.params import load_params


@pytest.fixture(scope="module")
def folder(root):
    return root / "configs" / "presets"


def test_the_paper_presets_exist(folder):
    assert {"paper-ml-25m", "paper-toys"} <= set(presets.available(folder))


@pytest.mark.parametrize("name", ["paper-ml-25m", "paper-toys"])
def test_a_paper_preset_loads_as_the_paper_setting(root, folder, name):
    words = presets.overrides(name, folder)
    assert all(" " not in word for word in words)  # survives `dvc exp run $(genrec preset NAME)`
    params = load_params(root / "params.yaml", words)
    raw = yaml.safe_load((folder / f"{name}.yaml").read_text())
    assert params.datasets == [params.dataset] == raw["datasets"]
    t = params.train
    assert (t.format, t.epochs, t.max_steps, t.batch_size, t.learning_rate) == ("instruction", 5, None, 128, 3e-4)
    assert (t.lora.r, t.lora.alpha, t.lora.dropout, t.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    profile = yaml.safe_load((root / "configs" / "accelerate" / f"{t.accelerate_profile}.yaml").read_text())
    assert profile["num_processes"] == 4 and sft_trainer.accumulation_steps(t, 4) == 8
    assert params.eval.accelerate_profile == "4gpu"  # evaluated on the same 4 GPUs, one replica each
    assert params.eval.max_users is None and params.eval.num_beams == 10 and params.p5.backbone == "t5-small"


def test_ml_25m_keeps_every_item_as_the_paper_did(root, folder):
    assert load_params(root / "params.yaml", presets.overrides("paper-ml-25m", folder)).split.item_core == 1


def test_the_command_prints_dvc_words_and_refuses_an_unknown_name(folder, monkeypatch):
    monkeypatch.chdir(folder.parents[1])
    out = CliRunner().invoke(main, ["preset", "paper-toys"])
    assert out.exit_code == 0 and out.output.startswith("-S dataset=toys-p5 -S datasets=[toys-p5] ")
    assert "--set train.lora.target_modules=[q_proj,v_proj]" in CliRunner().invoke(
        main, ["preset", "paper-toys", "--as", "genrec"]).output
    assert CliRunner().invoke(main, ["preset"]).output.split() == presets.available(folder)
    bad = CliRunner().invoke(main, ["preset", "paper-ml-1m"])
    assert bad.exit_code == 1 and "no preset 'paper-ml-1m'. Use one of paper-ml-25m, paper-toys" in bad.output


def test_a_value_with_a_space_is_refused(tmp_path):
    (tmp_path / "x.yaml").write_text("model.base: some folder\n")
    with pytest.raises(DataError, match="holds a space"):
        presets.overrides("x", tmp_path)
