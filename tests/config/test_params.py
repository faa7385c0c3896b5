"""params.yaml loads, validates once with every problem named, and agrees with dvc.yaml."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path

import pytest
import yaml

from genrec.config.params import Params, ParamsError, load_params, to_dict

PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"


def leaves(data: dict, prefix: str = "") -> dict:
    """{"train.lora.r": 16, ...}: every leaf of a nested mapping under its dotted key."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def typed(value):
    """The value with its kind, so that True does not equal 1 (an int and a float of one value still do)."""
    kind = "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else type(value)
    return kind, value


def test_params_yaml_states_every_default_of_the_dataclasses(root):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    del raw["dataset_params"]  # a layer over the sections, not a section: tested below
    in_yaml = {key: typed(value) for key, value in leaves(raw).items()}
    in_dataclasses = {key: typed(value) for key, value in leaves(to_dict(Params())).items()}
    assert in_yaml == in_dataclasses  # every key in both, and every value equal
    assert load_params(root / "params.yaml") == Params()


def field_type(dotted: str):
    """The annotation of a params.yaml key, e.g. `int | None` for train.max_steps."""
    cls = Params
    *sections, name = dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return typing.get_type_hints(cls)[name]


def wrong_values(hint) -> list:
    """Values no field of this annotation may take: a mapping always, a bool unless the field takes booleans,
    text for a bool, text for numbers, a list of a bool for a list."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    values = [{"nested": 1}, "maybe" if bool in members else True]
    if int in members or float in members:
        values.append("abc")
    if any(typing.get_origin(member) is list for member in members):
        values.append([True])
    return values


@pytest.mark.parametrize("key", sorted(k for k in leaves(yaml.safe_load(PARAMS_YAML.read_text()))
                                     if not k.startswith("dataset_params.")))
def test_every_key_refuses_a_value_of_the_wrong_type(key, tmp_path):
    """Walks every leaf of params.yaml, so that a key added later is covered without a new test."""
    for value in wrong_values(field_type(key)):
        raw = yaml.safe_load(PARAMS_YAML.read_text())
        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[name] = value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError) as err:
            load_params(path)
        message = str(err.value)
        assert f" {key}: " in message or f" {key}=" in message, f"{key}={value!r}: {message}"
        assert "\n" not in message, message


@pytest.mark.parametrize("override, expected", [
    ("split.min_rating=abc", "split.min_rating: expected a number or null, got 'abc'"),
    ("split.user_core=true", "split.user_core: expected an integer, got True"),
    ("split.user_core=2.5", "split.user_core: expected an integer, got 2.5"),
    ("train.batch_size=true", "train.batch_size: expected an integer, got True"),
    ("train.lora.r=true", "train.lora.r: expected an integer, got True"),
    ("p5.dropout=false", "p5.dropout: expected a number, got False"),
    ("prompts.seed=abc", "prompts.seed: expected an integer, got 'abc'"),
    ("prompts.seed=-1", "prompts.seed: expected an integer >= 0, got -1"),
    ("prompts.train_targets=some", "prompts.train_targets: expected an integer or all, got 'some'"),
    ("eval.constrained=1", "eval.constrained: expected true or false, got 1"),
    ("eval.early_stopping=1", "eval.early_stopping: expected true, false or never, got 1"),
    ("eval.k=[5, ten]", "eval.k: expected a non-empty list of integers, got [5, 'ten']"),
    ("eval.ghost_threshold=1", "eval.ghost_threshold: expected a probability in (0, 1)"),
    ("eval.batch_size=many", "eval.batch_size: expected an integer or auto, got 'many'"),
    ("eval.batch_size=0", "eval.batch_size: expected an integer >= 1, got 0"),  # not also "or auto"
    ("eval.device=gpu", "eval.device='gpu': use one of auto, cpu, cuda, spread"),
    ("eval.process_timeout=0", "eval.process_timeout: expected an integer >= 1, got 0"),
    ("train.bf16=sometimes", "train.bf16: expected auto, true or false, got 'sometimes'"),
    ("train.learning_rate=0", "train.learning_rate: expected a number > 0, got 0"),
    ("train.learning_rate=.nan", "train.learning_rate: expected a number, got nan"),
    ("train.lora.target_modules=[]", "train.lora.target_modules: expected a non-empty list of non-empty strings"),
    ("sasrec.dropout=1", "sasrec.dropout: expected a number in [0, 1), got 1"),
    ("model.base=yes", "model.base: expected a non-empty string, got True; quote it"),
    ("dataset=a/b", "dataset: expected a plain folder name"),
    ("dataset=.", "dataset: expected a plain folder name"),
    ("dataset=..", "dataset: expected a plain folder name"),
    ("dataset=a\\b", "dataset: expected a plain folder name"),
    ("p5.indexing=leaky", "p5.indexing='leaky': use one of random, sequential"),
    ("promote.alpha=1", "promote.alpha: expected a probability in (0, 1) or null, got 1"),
    ("promote.alpha=0.0001", "promote.alpha: 0.0001 is at or below the smallest p-value 10000 resamples can give"),
    ("promote.metric=mrr", "promote.metric: expected a ranking metric hr_at_<k> or ndcg_at_<k> with k in eval.k, "
                           "e.g. ndcg_at_10, got 'mrr'"),
    ("prompts.train_targets=0", "prompts.train_targets: expected an integer >= 1, got 0"),  # not also "or all"
    ("eval.k=[0,5]", "eval.k: expected cut-offs >= 1, e.g. [5, 10], got [0, 5]"),
    ("eval.k=[5,20]", "eval.k: the largest cut-off 20 exceeds eval.num_beams=10"),
    ("train.optimizer=sgd", "train.optimizer: expected an AdamW variant, e.g. adamw_torch, got 'sgd'"),
    ("ingest.sha256=abc", "ingest.sha256: expected 64 hex digits or null, got 'abc'"),
    ("datasets=[toys-p5,toys-p5]", "datasets: 'toys-p5' is listed twice"),
    ("split.usercore=3", "split.usercore: unknown key; did you mean split.user_core?"),
    ("train.lora.rank=8", "train.lora.rank: unknown key"),
])
def test_a_bad_value_is_one_line_naming_the_key(root, override, expected):
    with pytest.raises(ParamsError) as err:
        load_params(root / "params.yaml", [override])
    message = str(err.value)
    assert message.startswith(f"{root / 'params.yaml'}: {expected}")
    assert "\n" not in message


@pytest.mark.parametrize("override, attribute, value", [
    ("split.user_core=10.0", "split.user_core", 10),  # an integral float is an int
    ("split.min_rating=4", "split.min_rating", 4),  # an int is a float
    ("train.learning_rate=3e-4", "train.learning_rate", 3e-4),  # PyYAML reads 3e-4 as text
    ("train.bf16=true", "train.bf16", True),
    ("eval.early_stopping=never", "eval.early_stopping", "never"),
    ("prompts.train_targets=all", "prompts.train_targets", "all"),
    ("eval.batch_size=auto", "eval.batch_size", "auto"),
    ("eval.device=spread", "eval.device", "spread"),
    ("eval.accelerate_profile=4gpu", "eval.accelerate_profile", "4gpu"),
    ("ingest.url=null", "ingest.url", None),
    ("train.lora.target_modules=[q_proj, v_proj]", "train.lora.target_modules", ["q_proj", "v_proj"]),
])
def test_good_values_are_accepted_as_the_field_type(root, override, attribute, value):
    got = functools.reduce(getattr, attribute.split("."), load_params(root / "params.yaml", [override]))
    assert got == value and type(got) is type(value)


def test_a_problem_names_the_line_of_params_yaml_its_value_came_from(tmp_path, root):
    text = (root / "params.yaml").read_text()
    lines = text.splitlines()
    at = {key: next(n for n, line in enumerate(lines, 1) if line.startswith(f"  {key}:"))
          for key in ("user_core", "seed")}  # split.user_core, then prompts.seed: the first of each name
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  user_core: 5 ", "  user_core: 0 ", 1).replace("  seed: 42 ", "  seed: abc ", 1))
    with pytest.raises(ParamsError) as err:
        load_params(path, ["split.item_core=0"])
    assert str(err.value).splitlines() == [
        f"{path}: 3 invalid parameters:",
        f"  - line {at['user_core']}: split.user_core: expected an integer >= 1, got 0",
        "  - split.item_core: expected an integer >= 1, got 0",  # the command line's: no line
        f"  - line {at['seed']}: prompts.seed: expected an integer, got 'abc'"]
    with pytest.raises(ParamsError, match=rf"^{path}, line {at['user_core']}: split\.user_core: expected"):
        load_params(path, ["prompts.seed=1"])


def test_a_problem_from_a_dataset_entry_names_the_entry_line(tmp_path, root):
    text = (root / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("      epochs: 2 ", "      epochs: 0 ", 1))
    line = 1 + text.splitlines().index(next(x for x in text.splitlines() if x.startswith("      epochs: 2 ")))
    load_params(path)  # ml-latest-small does not read toys-p5's entry
    with pytest.raises(ParamsError, match=rf"^{path}, line {line}: p5\.epochs: expected an integer >= 1, got 0 "
                                          r"\(set by dataset_params\.toys-p5\)$"):
        load_params(path, ["dataset=toys-p5"])


def test_a_badly_typed_value_does_not_also_fail_the_checks_that_use_it(root):
    """micro_batch_size=abc is the one problem; the multiple-of check does not run on a stand-in value."""
    with pytest.raises(ParamsError) as err:
        load_params(root / "params.yaml", ["train.micro_batch_size=abc", "train.batch_size=12"])
    assert str(err.value).endswith("train.micro_batch_size: expected an integer, got 'abc'")


@pytest.mark.parametrize("text, expected", [
    ("split:\n  user_core: [5\n", "line 3: not valid YAML"),
    ("split:\n  user_core: 5\n   item_core: 5\n", "line 3: not valid YAML"),
    ("split:\n  user_core: 5\n  user_core: 6\n", "line 3: not valid YAML: duplicate key 'user_core'"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("- split\n- train\n", "expected a mapping of sections (dataset, split, train, ...), got a list"),
    ("ml-latest-small\n", "expected a mapping of sections (dataset, split, train, ...), got a str"),
])
def test_a_broken_params_file_is_a_params_error_naming_file_and_line(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, expected", [
    ("split.user_core", "expected key=value"),
    ("=5", "expected key=value"),
    ("split..user_core=5", "expected key=value"),
    ("eval.k=[5,", "the value is not valid YAML"),
    ("dataset.name=x", "dataset is not a section"),
])
def test_a_malformed_override_is_a_params_error(root, override, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(root / "params.yaml", [override])


def test_an_override_fills_a_section_left_empty(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("dataset: ml-latest-small\nsplit:\n")
    assert load_params(path, ["split.user_core=7"]).split == dataclasses.replace(Params().split, user_core=7)


def test_an_unreadable_params_file_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError, match="cannot be read"):
        load_params(tmp_path)  # a directory


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
    used = {"datasets", "dataset"}  # foreach: ${datasets}; each instance's command sets dataset
    for name, stage in stages.items():
        assert stage.get("foreach", "${datasets}") == "${datasets}", name
        if "foreach" in stage:  # every per-dataset stage reruns when its dataset's own settings change
            assert "dataset_params.${item}" in stage["do"]["params"], name
        if "matrix" in stage:  # dataset x item index: the same, keyed by the matrix's dataset
            assert stage["matrix"]["dataset"] == "${datasets}", name
            assert "dataset_params.${item.dataset}" in stage["params"], name
            used.update(m.removeprefix("${").removesuffix("}").split(".")[0] for m in stage["matrix"].values())
        stage = stage.get("do", stage)
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else next(iter(entry))
            if keys in ("dataset_params.${item}", "dataset_params.${item.dataset}"):
                assert set(raw["datasets"]) <= set(raw["dataset_params"]), "DVC needs an entry per dataset"
                used.add("dataset_params")
                continue
            node = raw
            for part in keys.split("."):
                assert part in node, f"dvc.yaml stage {name} lists param {keys!r}, absent from params.yaml"
                node = node[part]
            used.add(keys.split(".")[0])
    assert used == set(raw), f"params.yaml sections no stage reads: {set(raw) - used}"


def test_dvc_yaml_stages_call_the_cli_and_list_their_module(root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        if name not in ("base_model", "table"):  # dataset-independent; every other stage runs per dataset
            assert f"--set dataset=${{item{'.dataset' if 'matrix' in stage else ''}}}" in stage["cmd"], name
        words = stage["cmd"].split()
        at = next(i for i, w in enumerate(words) if w in ("genrec", "genrec.cli"))
        command = words[at + 1]
        assert name.startswith(command), f"stage {name} runs `genrec {command}`"
        assert f"src/genrec/stages/{command}.py" in stage["deps"], name


def test_every_field_has_a_one_line_docstring_and_params_are_immutable():
    sections = [Params, *(f.type for f in dataclasses.fields(Params) if dataclasses.is_dataclass(f.type))]
    for section in sections:
        for name, field in section.__pydantic_fields__.items():
            if not dataclasses.is_dataclass(field.annotation):
                assert field.description, f"{section.__name__}.{name} has no docstring"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Params().split.user_core = 3


def test_a_replaced_value_is_validated_too():
    assert dataclasses.replace(Params().train, epochs=3).epochs == 3
    with pytest.raises(ValueError, match="micro_batch_size"):
        dataclasses.replace(Params().train, batch_size=12)


def test_to_dict_round_trips(root, tmp_path):
    """to_dict gives plain YAML data that loads back into equal params: every section and key survives."""
    params = load_params(root / "params.yaml")
    data = to_dict(params)
    assert set(data) == {field.name for field in dataclasses.fields(Params)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    again = load_params(tmp_path / "params.yaml")
    assert again == params
    assert to_dict(again) == data


# dataset_params: each dataset's own settings, laid over the sections, under the command line's overrides.

def test_a_dataset_entry_applies_to_its_dataset_only(root):
    assert load_params(root / "params.yaml") == Params()  # ml-latest-small's entry is empty
    toys = load_params(root / "params.yaml", ["dataset=toys-p5"])
    assert (toys.ingest.drop_untitled, toys.p5.epochs, toys.eval.max_users) == (True, 2, 300)
    assert (toys.sasrec.max_len, toys.prompts.train_targets) == (20, 1)
    assert toys.split == Params().split and toys.train == Params().train


def test_the_command_line_wins_over_the_entry_and_can_edit_or_drop_it(root):
    path = root / "params.yaml"
    assert load_params(path, ["dataset=toys-p5", "p5.epochs=7"]).p5.epochs == 7
    assert load_params(path, ["p5.epochs=7", "dataset=toys-p5"]).p5.epochs == 7  # order does not matter
    assert load_params(path, ["dataset=toys-p5", "dataset_params.toys-p5.p5.epochs=5"]).p5.epochs == 5
    dropped = load_params(path, ["dataset=toys-p5", "++dataset_params.toys-p5=null"])  # DVC's ++ form
    assert (dropped.p5.epochs, dropped.eval.max_users) == (10, None)


@pytest.mark.parametrize("entry", [{"p5.epochs": 3, "eval": {"max_users": 9}},
                                   {"p5": {"epochs": 3}, "eval.max_users": 9}])
def test_an_entry_takes_dotted_keys_or_nested_sections(tmp_path, root, entry):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["dataset_params"]["toys-p5"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml", ["dataset=toys-p5"])
    assert (params.p5.epochs, params.eval.max_users) == (3, 9)


@pytest.mark.parametrize("override, expected", [
    ("dataset_params.toys-p5.p5.epoch=3",
     "dataset_params.toys-p5.p5.epoch: unknown key; did you mean dataset_params.toys-p5.p5.epochs?"),
    ("dataset_params.toys-p5.bogus=3", "dataset_params.toys-p5.bogus: unknown key"),
    ("dataset_params.toys-p5.p5.epochs=three", "dataset_params.toys-p5.p5.epochs: expected an integer, got 'three'"),
    ("dataset_params.toys-p5.eval=5", "dataset_params.toys-p5.eval: expected a section of keys, got 5"),
    ("dataset_params.toys-p5.dataset=x", "dataset_params.toys-p5.dataset: not settable per dataset"),
    ("dataset_params.toys-p5.train.accelerate_profile=4gpu",
     "dataset_params.toys-p5.train.accelerate_profile: not settable per dataset"),
    ("dataset_params.toys-p5.eval.accelerate_profile=4gpu",
     "dataset_params.toys-p5.eval.accelerate_profile: not settable per dataset"),
    ("dataset_params.toys-p5=3", "dataset_params.toys-p5: expected a mapping of params keys"),
    ("dataset_params=[a]", "dataset_params: expected a mapping of dataset names"),
    ("datasets=[ml-latest-small, ml-1m]", "dataset_params: no entry for 'ml-1m' of datasets; add `ml-1m: {}`"),
])
def test_a_bad_entry_is_refused_naming_its_key_even_for_another_dataset(root, override, expected):
    with pytest.raises(ParamsError) as err:
        load_params(root / "params.yaml", [override])  # the dataset is ml-latest-small
    assert str(err.value) == f"{root / 'params.yaml'}: {expected}" or expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_range_problem_from_an_entry_names_the_entry(root):
    with pytest.raises(ParamsError, match=r"p5\.epochs: expected an integer >= 1, got 0 \(set by "
                                          r"dataset_params\.toys-p5\)$"):
        load_params(root / "params.yaml", ["dataset=toys-p5", "dataset_params.toys-p5.p5.epochs=0"])
    with pytest.raises(ParamsError, match=r"p5\.epochs: expected an integer >= 1, got 0$"):
        load_params(root / "params.yaml", ["dataset=toys-p5", "p5.epochs=0"])  # the command line's own value


def test_promote_metric_is_any_ranking_metric_and_nothing_else():
    """Any metric a metrics file has can be promotion's; `mrr_at_10` (which genrec does not compute per user)
    is refused where it is set instead of being read as NDCG."""
    from genrec.config.values import RANKING_METRIC
    from genrec.evaluation.metrics import PER_USER

    assert load_params(PARAMS_YAML, ["promote.metric=hr_at_5"]).promote.metric == "hr_at_5"
    with pytest.raises(ParamsError, match="promote.metric"):
        load_params(PARAMS_YAML, ["promote.metric=mrr_at_10"])
    assert set(RANKING_METRIC.pattern.split(")")[0].strip("(").split("|")) == set(PER_USER)


def test_promote_samples_are_capped_and_min_users_is_at_least_one(root):
    with pytest.raises(ParamsError, match=r"promote\.samples: 1000000000000 resamples: at most 100000"):
        load_params(root / "params.yaml", ["promote.samples=1000000000000"])
    with pytest.raises(ParamsError, match=r"promote\.min_users: expected an integer >= 1, got 0"):
        load_params(root / "params.yaml", ["promote.min_users=0"])
    assert load_params(root / "params.yaml", ["promote.samples=100000"]).promote.samples == 100_000
