"""`genrec recommend` and `genrec promote` through click, against a real registered tiny champion."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from genrec.cli import promote, recommend
from genrec.config.params import to_dict

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tiny.world(tmp_path_factory.mktemp("cli"))
    tiny.promote(w, "first", seed=5, valid_ranks=[1, 3], test_ranks=[None, 2])
    w["params_path"] = w["tmp"] / "params.yaml"
    w["params_path"].write_text(yaml.safe_dump(to_dict(w["params"])))
    return w


def invoke(w, *args):
    result = CliRunner().invoke(recommend, ["--params", str(w["params_path"]), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_recommend_prints_the_top_k_with_scores(world):
    result = invoke(world, "--history", "Toy Story (1995)", "--history", "Heat (1995)", "-k", "5")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
    assert len(lines) == 5 and lines[0].startswith("  1. ")
    titles = [line.split(". ", 1)[1].rsplit("  (", 1)[0] for line in lines]
    assert set(titles) <= set(tiny.TITLES) and not {"Toy Story (1995)", "Heat (1995)"} & set(titles)
    assert "models:/genrec-tiny@champion" in result.stdout


def test_recommend_json_reports_unknown_titles_with_the_closest_ones(world):
    result = invoke(world, "--history", "Toy Story (1995)", "--history", "heat 1995", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "models:/genrec-tiny@champion" and len(out["recommendations"]) == 10
    assert [r["rank"] for r in out["recommendations"]] == list(range(1, 11))
    scores = [r["score"] for r in out["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    assert out["unknown"] == [{"title": "heat 1995", "suggestions": out["unknown"][0]["suggestions"]}]
    assert out["unknown"][0]["suggestions"][0] == "Heat (1995)"
    text = invoke(world, "--history", "Toy Story (1995)", "--history", "heat 1995")
    assert 'warning: "heat 1995" is not in the catalogue' in text.stderr and '"Heat (1995)"' in text.stderr


def test_recommend_for_a_user_uses_the_history_from_the_split(world):
    result = invoke(world, "--user", "u3", "--processed", str(world["processed"]), "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["history"]) == tiny.SEQUENCE and len(out["recommendations"]) == 3
    assert not set(out["history"]) & {r["title"] for r in out["recommendations"]}
    missing = invoke(world, "--user", "nobody", "--processed", str(world["processed"]))
    assert missing.exit_code == 1 and "user 'nobody' is not in the split" in missing.stderr


@pytest.mark.parametrize("args, message", [
    ((), "give the history with --history"),
    (("--history", ""), "empty history"),
    (("--history", "Not A Film (2099)"), "no title of the history is in the catalogue"),
    (("--model", "models:/genrec-nothing@champion", "--history", "Heat (1995)"), "cannot load model models:/genrec-no"),
    (("--model", "models:/genrec-tiny@nobody", "--history", "Heat (1995)"), "cannot load model models:/genrec-tiny@no"),
])
def test_recommend_bad_input_is_a_clear_one_line_error(world, args, message):
    result = invoke(world, *args)
    assert result.exit_code in (1, 2) and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_promote_refuses_without_validation_metrics(world, tmp_path):
    first = world["tmp"] / "first"
    result = CliRunner().invoke(promote, [
        "--params", str(world["params_path"]), "--model", str(first / "model"), "--base", str(world["base"]),
        "--processed", str(world["processed"]), "--valid-metrics", str(tmp_path / "missing.json"),
        "--valid-predictions", str(first / "valid.jsonl"),
        "--test-metrics", str(first / "test.json"), "--out", str(tmp_path / "promotion.json")])
    assert result.exit_code == 1 and "no valid metrics: promotion refuses" in result.stderr
    assert not (tmp_path / "promotion.json").exists()
