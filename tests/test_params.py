"""params.yaml loads, validates once with every problem named, and agrees with dvc.yaml."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from genrec.params import Params, ParamsError, load_params, to_dict


def test_params_yaml_loads_with_defaults_matching_dataclasses(root):
    params = load_params(root / "params.yaml")
    assert isinstance(params, Params)
    assert params.dataset == "ml-latest-small"
    raw = yaml.safe_load((root / "params.yaml").read_text())
    # Every section in params.yaml is a dataclass field, and every dataclass section is in params.yaml.
    assert set(raw) == {f.name for f in dataclasses.fields(Params)}
    assert to_dict(params) == to_dict(Params())  # the defaults in params.yaml are the dataclasses' defaults


def test_overrides_are_parsed_as_yaml(root):
    params = load_params(root / "params.yaml", ["split.user_core=10", "split.min_rating=null"])
    assert params.split.user_core == 10
    assert params.split.min_rating is None


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "x",
        "split": {"user_core": 0, "bogus": 1},
        "prompts": {"history_format": "csv"},
    }))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    text = str(err.value)
    for key in ("split.user_core", "split.bogus", "prompts.history_format"):
        assert key in text


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_dvc_yaml_params_exist_in_params_yaml(root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    used = set()
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else next(iter(entry))
            node = raw
            for part in keys.split("."):
                assert part in node, f"dvc.yaml stage {name} lists param {keys!r}, absent from params.yaml"
                node = node[part]
            used.add(keys.split(".")[0])
    assert used == set(raw), f"params.yaml sections no stage reads: {set(raw) - used}"


def test_dvc_yaml_stages_call_the_cli_and_list_their_module(root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        words = stage["cmd"].split()
        at = next(i for i, w in enumerate(words) if w in ("genrec", "genrec.cli"))
        command = words[at + 1]
        assert name.startswith(command), f"stage {name} runs `genrec {command}`"
        assert f"src/genrec/stages/{command}.py" in stage["deps"], name


def test_to_dict_round_trips(root, tmp_path):
    """to_dict gives plain YAML data that loads back into equal params: every section and key survives."""
    params = load_params(root / "params.yaml")
    data = to_dict(params)
    assert set(data) == {field.name for field in dataclasses.fields(Params)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    again = load_params(tmp_path / "params.yaml")
    assert again == params
    assert to_dict(again) == data
