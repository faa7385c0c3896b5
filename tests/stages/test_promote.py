"""The promote stage against a real MLflow registry (SQLite in tmp) with real tiny adapters.

One module fixture plays a sequence of promotions with `promote.alpha: null` (two validation users cannot
make a significant paired test; the gate is tested in tests/tracking/test_promotion.py), recording each report and
the registry state:
  first   valid NDCG 0.5                -> version 1, champion (no champion before)
  again   the same adapter, same files  -> no new version, nothing moves
  better  valid NDCG 1.0, test worse    -> version 2 takes the alias
  tie     valid NDCG 1.0                -> version 3, champion stays 2
  worse   valid NDCG 0.32, test perfect -> version 4, champion stays 2 (test metrics never choose)

A second registry plays the item representation rule: a champion registered before the `genrec.items` tag, then a
better version whose metrics files name semantic ids, refused, then allowed with `promote.across_representations`.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from genrec.tracking import promotion, registry
from genrec.tracking import runs as tracking
from genrec.errors import DataError
from genrec.io import fingerprint, split_fingerprint
from genrec.config.params import PromoteParams

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

NAME = "genrec-tiny"


def state(w) -> dict:
    """Registry state: versions with their tags and timestamps, and the champion."""
    mlc = tracking.mlflow_client(w["params"])
    versions = {str(v.version): (dict(v.tags), v.last_updated_timestamp)
                for v in mlc.search_model_versions(f"name='{NAME}'")}
    return {"versions": versions, "champion": str(mlc.get_model_version_by_alias(NAME, registry.CHAMPION).version)}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    w = tiny.world(tmp_path_factory.mktemp("promote"))
    w["params"] = replace(w["params"], promote=PromoteParams(alpha=None))
    baseline = tiny.write_metrics(w["tmp"] / "sasrec.json", "test", [None, 3])
    baseline.update(model="sasrec", split_fingerprint=split_fingerprint(w["processed"]))
    for folder in ("first", "again"):  # beside the test metrics: the model card's baseline table
        (w["tmp"] / folder).mkdir()
        (w["tmp"] / folder / "sasrec.json").write_text(json.dumps(baseline))
    steps = {}
    steps["first"] = tiny.promote(w, "first", 1, valid_ranks=[1, None], test_ranks=[1, 1])
    steps["first_state"] = state(w)
    steps["again"] = tiny.promote(w, "again", 1, valid_ranks=[1, None], test_ranks=[1, 1],
                                  model_dir=w["tmp"] / "first" / "model")
    steps["again_state"] = state(w)
    steps["better"] = tiny.promote(w, "better", 2, valid_ranks=[1, 1], test_ranks=[None, None])
    steps["tie"] = tiny.promote(w, "tie", 3, valid_ranks=[1, 1], test_ranks=[None, 2])
    steps["worse"] = tiny.promote(w, "worse", 4, valid_ranks=[2, None], test_ranks=[1, 1])
    steps["final_state"] = state(w)
    return w, steps


def test_first_registration_creates_a_version_with_its_tags_and_makes_it_champion(history):
    w, steps = history
    report = steps["first"]
    assert report["this_version"]["version"] == 1 and report["this_version"]["created"]
    assert report["previous_champion"] is None and report["champion"]["version"] == 1 and report["moved"]
    tags, _ = steps["first_state"]["versions"]["1"]
    valid = json.loads((w["tmp"] / "first" / "valid.json").read_text())
    test = json.loads((w["tmp"] / "first" / "test.json").read_text())
    for split, metrics in (("valid", valid), ("test", test)):
        for name in ("hr_at_5", "ndcg_at_5", "hr_at_10", "ndcg_at_10"):
            assert float(tags[f"{split}.{name}"]) == metrics[name]
    assert tags["valid.ndcg_at_10"] == repr(0.5) and tags["test.hr_at_10"] == repr(1.0)
    processed = w["processed"]
    assert tags["split_fingerprint"] == fingerprint(*(processed / f"{s}.parquet" for s in ("train", "valid", "test")))
    assert tags["valid_protocol"] == registry.protocol_hash(valid["protocol"])
    run = tracking.mlflow_client(w["params"]).get_run(tracking.read_run_id(w["tmp"] / "first" / "model"))
    assert tags["git_commit"] == run.data.tags.get("mlflow.source.git.commit", tracking.git_commit() or "unknown")
    assert tags["backbone"] == "smollm2-135m-instruct" and tags["backbone_model_type"] == "llama"
    assert tags["backbone_sha256"] == tracking.sha256_path(w["base"])
    assert tags["adapter_sha256"] == registry.adapter_hash(w["tmp"] / "first" / "model")
    mlc = tracking.mlflow_client(w["params"])
    run_id = tracking.read_run_id(w["tmp"] / "first" / "model")
    assert mlc.get_model_version(NAME, "1").run_id == run_id == report["champion"]["run_id"]
    assert json.loads((w["tmp"] / "first" / "promotion.json").read_text()) == report


def test_running_twice_changes_nothing(history):
    _, steps = history
    assert steps["again_state"] == steps["first_state"]
    again = steps["again"]
    assert not again["this_version"]["created"] and not again["moved"]
    assert again["previous_champion"]["version"] == again["champion"]["version"] == 1


def test_better_validation_ndcg_moves_the_champion_even_with_worse_test_metrics(history):
    _, steps = history
    better = steps["better"]
    assert better["this_version"]["version"] == 2
    assert (better["previous_champion"]["version"], better["champion"]["version"], better["moved"]) == (1, 2, True)
    assert better["champion"]["test.hr_at_10"] == 0.0 < better["previous_champion"]["test.hr_at_10"]


def test_a_tie_keeps_the_champion(history):
    _, steps = history
    tie = steps["tie"]
    assert tie["this_version"]["version"] == 3 and tie["this_version"]["valid.ndcg_at_10"] == 1.0
    assert (tie["champion"]["version"], tie["moved"]) == (2, False) and "ties" in tie["reason"]


def test_a_worse_newcomer_does_not_take_it_whatever_its_test_metrics(history):
    _, steps = history
    worse = steps["worse"]
    assert worse["this_version"]["version"] == 4 and worse["this_version"]["test.ndcg_at_10"] == 1.0
    assert (worse["champion"]["version"], worse["moved"]) == (2, False)
    assert steps["final_state"]["champion"] == "2" and sorted(steps["final_state"]["versions"]) == ["1", "2", "3", "4"]
    assert [v["version"] for v in worse["versions"]] == [1, 2, 3, 4]


def test_the_backbone_is_uploaded_once_for_all_versions(history):
    w, _ = history
    mlc = tracking.mlflow_client(w["params"])
    experiment = mlc.get_experiment_by_name("genrec-backbones")
    assert len(mlc.search_runs([experiment.experiment_id])) == 1


@pytest.mark.parametrize("problem", ["missing file", "missing metric", "test metrics as valid", "nan"])
def test_missing_validation_metric_is_refused_before_anything_is_registered(history, problem):
    w, _ = history
    folder = w["tmp"] / "refused"
    folder.mkdir(exist_ok=True)
    model_dir = folder / "model"
    if not model_dir.exists():
        tiny.write_adapter(model_dir, w["base"], w["params"], seed=9)
    before = state(w)
    tiny.write_metrics(folder / "test.json", "test", [1, None])
    valid = folder / "valid_bad.json"
    valid.unlink(missing_ok=True)
    if problem != "missing file":
        metrics = tiny.write_metrics(valid, "test" if problem == "test metrics as valid" else "valid", [1, None])
        if problem == "missing metric":
            metrics.pop("ndcg_at_10")
        if problem == "nan":
            metrics["ndcg_at_10"] = float("nan")
        valid.write_text(json.dumps(metrics))
    from genrec.stages import promote

    with pytest.raises(DataError) as err:
        promote.run(w["params"], model_dir=model_dir, base_dir=w["base"], processed_dir=w["processed"],
                    valid_metrics_path=valid, valid_predictions_path=w["tmp"] / "first" / "valid.jsonl",
                    test_metrics_path=folder / "test.json", out_path=folder / "p.json")
    message = str(err.value)
    assert str(valid) in message and "evaluate_valid" in message and "\n" not in message
    assert state(w) == before and not (folder / "p.json").exists()


def test_an_adapter_of_another_dataset_is_refused(history, tmp_path):
    import shutil

    from genrec.stages import promote

    w, _ = history
    model_dir = tmp_path / "model"
    shutil.copytree(w["tmp"] / "first" / "model", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["params"]["dataset"] = "ml-25m"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="trained on dataset 'ml-25m', not 'tiny'"):
        promote.run(w["params"], model_dir=model_dir, base_dir=w["base"], processed_dir=w["processed"],
                    valid_metrics_path=w["tmp"] / "first" / "valid.json",
                    valid_predictions_path=w["tmp"] / "first" / "valid.jsonl",
                    test_metrics_path=w["tmp"] / "first" / "test.json", out_path=tmp_path / "p.json")


def test_each_version_carries_a_model_card_built_from_its_lineage(history):
    w, steps = history
    mlc = tracking.mlflow_client(w["params"])
    card = mlc.get_model_version(NAME, "1").description
    tags, _ = steps["first_state"]["versions"]["1"]
    valid = json.loads((w["tmp"] / "first" / "valid.json").read_text())
    test = json.loads((w["tmp"] / "first" / "test.json").read_text())
    run_id = tracking.read_run_id(w["tmp"] / "first" / "model")
    for expected in [f"# {NAME} version 1", "`smollm2-135m-instruct` (llama", tags["backbone_sha256"],
                     tags["adapter_sha256"], tags["split_fingerprint"], tags["valid_protocol"], tags["git_commit"],
                     run_id, "| Dataset | `tiny` |",
                     "| Format | `instruction` |", "`lines`, the latest 5 titles", "{instruction}",  # template.json
                     "r=2, alpha=4", "| learning_rate |",  # LoRA and training settings
                     f"`{w['processed']}` | `sha256:{tracking.sha256_path(w['processed'])}`",
                     f"`{w['base']}` | `sha256:{tracking.sha256_path(w['base'])}`",
                     "## Baselines on the same split", "| sasrec |"]:
        assert expected in card, expected
    ndcg = (f"{valid['ndcg_at_10']:.4f} [{valid['ci95_low']['ndcg_at_10']:.4f}, "
            f"{valid['ci95_high']['ndcg_at_10']:.4f}]")
    assert f"| validation | 2 |" in card and ndcg in card
    assert f"{test['hr_at_10']:.4f} [{test['ci95_low']['hr_at_10']:.4f}," in card
    assert mlc.get_model_version(NAME, "2").description.count("No baseline metrics") == 1  # none beside "better"


def test_predictions_of_another_evaluation_are_refused(history, tmp_path):
    from genrec.stages import promote

    w, _ = history
    tiny.write_metrics(tmp_path / "valid.json", "valid", [1, None, 2], predictions=tmp_path / "valid.jsonl")
    before = state(w)
    with pytest.raises(DataError, match=r"3 users, but .*valid.json reports 2"):
        promote.run(w["params"], model_dir=w["tmp"] / "first" / "model", base_dir=w["base"],
                    processed_dir=w["processed"], valid_metrics_path=w["tmp"] / "first" / "valid.json",
                    valid_predictions_path=tmp_path / "valid.jsonl",
                    test_metrics_path=w["tmp"] / "first" / "test.json", out_path=tmp_path / "p.json")
    assert state(w) == before


def semantic_version(w, name: str, seed: int, valid_ranks: list, test_ranks: list) -> list[str]:
    """An adapter and metrics files that name items by semantic ids (`index`); the promote command's path options."""
    folder = w["tmp"] / name
    model_dir = tiny.write_adapter(folder / "model", w["base"], w["params"], seed)
    for split, ranks in (("valid", valid_ranks), ("test", test_ranks)):
        predictions = folder / "valid.jsonl" if split == "valid" else None
        metrics = tiny.write_metrics(folder / f"{split}.json", split, ranks, predictions=predictions,
                                     model_dir=model_dir, processed=w["processed"])
        (folder / f"{split}.json").write_text(json.dumps({**metrics, "index": "semantic", "leaky": False}))
    return ["--model", str(model_dir), "--base", str(w["base"]), "--processed", str(w["processed"]),
            "--valid-metrics", str(folder / "valid.json"), "--valid-predictions", str(folder / "valid.jsonl"),
            "--test-metrics", str(folder / "test.json"), "--out", str(folder / "promotion.json")]


@pytest.fixture(scope="module")
def representations(tmp_path_factory):
    import yaml
    from click.testing import CliRunner

    from genrec.cli import promote as promote_command
    from genrec.config.params import to_dict

    w = tiny.world(tmp_path_factory.mktemp("representations"))
    w["params"] = replace(w["params"], promote=PromoteParams(alpha=None))
    params_path = w["tmp"] / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(w["params"])))
    steps = {"titles": tiny.promote(w, "titles", 1, valid_ranks=[1, None], test_ranks=[1, 1])}
    mlc = tracking.mlflow_client(w["params"])
    steps["titles_tag"] = mlc.get_model_version(NAME, "1").tags.get(promotion.ITEMS_TAG)
    mlc.delete_model_version_tag(NAME, "1", promotion.ITEMS_TAG)  # as registered before the tag existed
    paths = semantic_version(w, "semantic", 2, valid_ranks=[1, 1], test_ranks=[1, 1])
    command = ["--params", str(params_path), *paths]
    steps["refused"] = CliRunner().invoke(promote_command, command)
    steps["refused_state"] = state(w)
    steps["refused_report"] = (w["tmp"] / "semantic" / "promotion.json").exists()
    steps["allowed"] = CliRunner().invoke(promote_command, [*command, "--set", "promote.across_representations=true"])
    steps["allowed_state"] = state(w)
    return w, steps


def test_a_version_is_tagged_with_how_it_names_items(representations):
    _, steps = representations
    assert steps["titles_tag"] == "title" and steps["titles"]["this_version"]["items"] == "title"
    tags, _ = steps["refused_state"]["versions"]["2"]
    assert tags[promotion.ITEMS_TAG] == "semantic"


def test_a_champion_of_another_representation_is_refused_in_one_line_naming_both_and_the_override(representations):
    _, steps = representations
    refused = steps["refused"]
    assert refused.exit_code == 1
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]  # beside MLflow's progress
    assert len(errors) == 1 and refused.output.rstrip().endswith(errors[0])
    line = errors[0]
    assert "champion version 1 names items by 'title', version 2 by 'semantic'" in line
    assert "--set promote.across_representations=true" in line
    assert steps["refused_state"]["champion"] == "1" and not steps["refused_report"]


def test_across_representations_compares_them_and_the_better_version_takes_the_alias(representations):
    w, steps = representations
    assert steps["allowed"].exit_code == 0, steps["allowed"].output
    assert steps["allowed_state"]["champion"] == "2"
    report = json.loads((w["tmp"] / "semantic" / "promotion.json").read_text())
    assert report["promote"]["across_representations"] is True and report["moved"]
    assert (report["previous_champion"]["items"], report["champion"]["items"]) == ("title", "semantic")
    assert "and item representation" not in report["rule"]


def promote_command_line(w, tmp_path, folder, model_dir, **files) -> list[str]:
    """`genrec promote` options: the world's params and split, `model_dir`, and `folder`'s files unless replaced."""
    import yaml

    from genrec.config.params import to_dict

    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(to_dict(w["params"])))
    paths = {"valid-metrics": folder / "valid.json", "valid-predictions": folder / "valid.jsonl",
             "test-metrics": folder / "test.json", "processed": w["processed"], **files}
    return ["--params", str(params_path), "--model", str(model_dir), "--base", str(w["base"]),
            *(f"--{option}={path}" for option, path in paths.items()), "--out", str(tmp_path / "promotion.json")]


def one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    return errors[0]


def test_metrics_of_another_adapter_are_refused_in_one_line(history, tmp_path):
    from click.testing import CliRunner

    from genrec.cli import promote as promote_command

    w, _ = history
    before = state(w)
    other = tiny.write_adapter(tmp_path / "other", w["base"], w["params"], seed=11)  # never evaluated
    result = CliRunner().invoke(promote_command, promote_command_line(w, tmp_path, w["tmp"] / "better", other))
    line = one_error_line(result)
    better = json.loads((w["tmp"] / "better" / "valid.json").read_text())
    assert "valid.json, column 'model_sha256': valid metrics of another model" in line
    assert better["model_sha256"][:12] in line and registry.adapter_hash(other)[:12] in line
    assert "dvc repro evaluate_valid" in line
    assert state(w) == before and not (tmp_path / "promotion.json").exists()


def test_metrics_of_another_split_are_refused(history, tmp_path):
    from click.testing import CliRunner

    from genrec.cli import promote as promote_command

    w, _ = history
    before = state(w)
    other_split = tiny.write_split(tmp_path / "processed", shuffle=True)  # the same rows, other bytes
    assert split_fingerprint(other_split) != split_fingerprint(w["processed"])
    result = CliRunner().invoke(promote_command, promote_command_line(
        w, tmp_path, w["tmp"] / "better", w["tmp"] / "better" / "model", processed=other_split))
    line = one_error_line(result)
    assert "column 'split_fingerprint': valid metrics of another split" in line and "--processed's split" in line
    assert state(w) == before


@pytest.mark.parametrize("problem", ["test metrics of another model", "predictions of another evaluation",
                                     "metrics without the model hash"])
def test_files_that_are_not_this_evaluation_of_this_adapter_are_refused(history, tmp_path, problem):
    from click.testing import CliRunner

    from genrec.cli import promote as promote_command

    w, _ = history
    before = state(w)
    folder, model_dir = w["tmp"] / "better", w["tmp"] / "better" / "model"
    files = {}
    if problem == "test metrics of another model":
        files["test-metrics"] = w["tmp"] / "tie" / "test.json"
        expected = "test.json, column 'model_sha256': test metrics of another model"
    elif problem == "predictions of another evaluation":  # as many users, other ranks
        tiny.write_metrics(tmp_path / "valid.json", "valid", [2, 3], predictions=tmp_path / "valid.jsonl")
        files["valid-predictions"] = tmp_path / "valid.jsonl"
        expected = f"{tmp_path / 'valid.jsonl'}: not the predictions of {folder / 'valid.json'}"
    else:
        metrics = json.loads((folder / "valid.json").read_text())
        del metrics["model_sha256"]
        (tmp_path / "valid.json").write_text(json.dumps(metrics))
        files["valid-metrics"] = tmp_path / "valid.json"
        expected = "column 'model_sha256': valid metrics without model_sha256"
    result = CliRunner().invoke(promote_command, promote_command_line(w, tmp_path, folder, model_dir, **files))
    assert expected in one_error_line(result)
    assert state(w) == before


def test_the_card_lists_the_reports_test_slices_and_refuses_those_of_another_evaluation(tmp_path):
    from genrec.evaluation import outputs, slices
    from genrec.stages import promote

    w = tiny.world(tmp_path)
    w["params"] = replace(w["params"], promote=PromoteParams(alpha=None))
    folder = tmp_path / "sliced"
    model_dir = tiny.write_adapter(folder / "model", w["base"], w["params"], 1)
    evidence = {"model_dir": model_dir, "processed": w["processed"]}
    tiny.write_metrics(folder / "valid.json", "valid", [1, None], predictions=folder / "valid.jsonl", **evidence)
    test = tiny.write_metrics(folder / "test.json", "test", [1, 3], predictions=folder / "test.jsonl", **evidence)
    lists = outputs.read_predictions(folder / "test.jsonl", test["predictions_sha256"])
    analysis = slices.analyse({"test": lists}, slices.read_split(w["processed"]), reference="test", ks=[5, 10],
                              head_share=0.2, tail_share=0.2, cold_item_max=10, history_count=2, samples=50,
                              paired_samples=50, seed=0, paired_seed=0, tested=["hr_at_10"])
    analysis["models"]["test"]["predictions_sha256"] = test["predictions_sha256"]
    (folder / "analysis.json").write_text(json.dumps({"users": "every evaluated user", "split": "test", **analysis}))
    paths = dict(model_dir=model_dir, base_dir=w["base"], processed_dir=w["processed"],
                 valid_metrics_path=folder / "valid.json", valid_predictions_path=folder / "valid.jsonl",
                 test_metrics_path=folder / "test.json", out_path=folder / "promotion.json",
                 analysis_path=folder / "analysis.json")

    stale = json.loads((folder / "analysis.json").read_text())
    stale["models"]["test"]["predictions_sha256"] = "0" * 64
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(DataError, match=r"stale.json.*another evaluation.*dvc repro report"):
        promote.run(w["params"], **{**paths, "analysis_path": tmp_path / "stale.json"})
    assert not tracking.mlflow_client(w["params"]).search_registered_models()  # refused before registering

    promote.run(w["params"], **paths)
    card = tracking.mlflow_client(w["params"]).get_model_version(NAME, "1").description
    cold = analysis["models"]["test"]["slices"]["popularity"]["cold"]
    # Both targets ("target") are outside the catalogue: no training interactions, so tail and cold.
    assert "## Slices of the test users" in card and "Beyond accuracy: coverage@10 0.000" in card
    assert (f"| cold targets (<10) | 2 | {cold['hr_at_5']:.4f} [{cold['ci95_low']['hr_at_5']:.4f}, "
            f"{cold['ci95_high']['hr_at_5']:.4f}] |") in card
    assert "| head: popular targets (≥" in card and "| head: popular targets" in card.split("| cold")[0]
