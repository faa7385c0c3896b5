"""History matching with suggestions, a user's history from the split, and the Recommender on a tiny model.

The Recommender must rank exactly as the evaluate stage does for the same history (same prompt, trie,
exclusions and beam search), so a served list is an evaluated one.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from genrec.errors import DataError
from genrec.data.prompts import INSTRUCTIONS
from genrec.models.genrec.recommend import Recommender, closest_titles, resolve_history, user_history
from genrec.stages import evaluate
from genrec.decoding.trie import Catalogue

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

CATALOGUE = Catalogue.from_items(pd.DataFrame({"item_id": [str(i) for i in range(len(tiny.TITLES))],
                                               "title": tiny.TITLES}))


def test_known_titles_resolve_in_order_and_unknown_ones_get_suggestions():
    resolved = resolve_history(["Heat (1995)", "Heat 1995", "  Toy  Story (1995) ", "toy story (1995)"], CATALOGUE)
    assert [CATALOGUE.titles[i] for i in resolved.indices] == ["Heat (1995)", "Toy Story (1995)"]
    assert [u.title for u in resolved.unknown] == ["Heat 1995", "toy story (1995)"]
    assert resolved.unknown[0].suggestions[0] == "Heat (1995)"
    assert resolved.unknown[1].suggestions[0] == "Toy Story (1995)"  # suggestions ignore case


def test_empty_or_entirely_unknown_history_is_refused_with_suggestions():
    for empty in ([], [""], ["  "]):
        with pytest.raises(ValueError, match="empty history"):
            resolve_history(empty, CATALOGUE)
    with pytest.raises(ValueError, match=r'"GoldenEye 1995" \(closest: "GoldenEye \(1995\)"'):
        resolve_history(["GoldenEye 1995", "Zzzz"], CATALOGUE)


def test_closest_titles_by_similarity_then_by_containment():
    assert closest_titles("Casino Royale (1995)", CATALOGUE, n=1) == ["Casino (1995)"]
    assert closest_titles("heat", CATALOGUE) == ["Heat (1995)"]  # too short for difflib: found by containment
    assert closest_titles("qwxz", CATALOGUE) == []


def test_user_history_is_the_whole_sequence_in_order(tmp_path):
    processed = tiny.write_split(tmp_path / "processed")
    rows = pd.concat([pd.read_parquet(processed / f"{s}.parquet") for s in ("train", "valid", "test")])
    expected = [tiny.TITLES[int(i)] for i in rows[rows["user_id"] == "u2"].sort_values("position")["item_id"]]
    assert user_history(processed, "u2") == expected and len(expected) == tiny.SEQUENCE
    with pytest.raises(DataError, match="user 'nobody' is not in the split"):
        user_history(processed, "nobody")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny split, backbone and adapter, plus the evaluate stage's test predictions for every user."""
    tmp = tmp_path_factory.mktemp("recommend")
    w = tiny.world(tmp)
    w["adapter"] = tiny.write_adapter(tmp / "adapter", w["base"], w["params"], seed=3)
    histories = [user_history(w["processed"], f"u{u}")[:-1] for u in range(tiny.USERS)]  # everything before test
    prompts = tmp / "prompts"
    prompts.mkdir()
    test = pd.read_parquet(w["processed"] / "test.parquet")
    with (prompts / "test.jsonl").open("w") as fh:
        for u, history in enumerate(histories):
            target = test.loc[test["user_id"] == f"u{u}", "item_id"].item()
            fh.write(json.dumps({"user_id": f"u{u}", "instruction": INSTRUCTIONS[0], "history_titles": history,
                                 "target_item_id": target, "output": tiny.TITLES[int(target)]}) + "\n")
    evaluate.run(w["params"], base_dir=w["base"], model_dir=w["adapter"], prompts_dir=prompts,
                 processed_dir=w["processed"], metrics_path=tmp / "metrics.json",
                 predictions_path=tmp / "predictions.jsonl")
    w["histories"] = histories
    w["evaluated"] = [json.loads(line)["ranked"] for line in (tmp / "predictions.jsonl").read_text().splitlines()]
    w["recommender"] = Recommender.load(w["base"], w["adapter"], w["processed"] / "items.parquet", w["params"].eval)
    return w


def test_recommendations_equal_the_evaluate_stage_lists(world):
    recommendations = world["recommender"].recommend(world["histories"])
    for rec, evaluated, history in zip(recommendations, world["evaluated"], world["histories"]):
        assert rec.titles == [entry["title"] for entry in evaluated]
        assert rec.scores == pytest.approx([entry["score"] for entry in evaluated], abs=1e-5)
        assert len(rec.titles) == world["params"].eval.num_beams
        assert not set(rec.titles) & set(history)  # history titles are excluded
        assert set(rec.titles) <= set(tiny.TITLES)
        assert rec.scores == sorted(rec.scores, reverse=True)


def test_k_below_the_beam_width_is_a_prefix_and_above_it_widens_the_search(world):
    recommender, history = world["recommender"], world["histories"][0][:2]
    full, short, wide = recommender.recommend([history, history, history], ks=[10, 3, 14])
    assert short.titles == full.titles[:3]
    assert len(wide.titles) == 14 and len(set(wide.titles)) == 14
    with pytest.raises(ValueError, match="k=0"):
        recommender.recommend([history], ks=[0])


def test_unknown_titles_are_reported_and_left_out_of_the_prompt(world):
    recommender = world["recommender"]
    history = world["histories"][1]
    clean, noisy = recommender.recommend([history, history[:2] + ["Heat 1995"] + history[2:]])
    assert noisy.titles == clean.titles
    assert [u.to_dict() for u in noisy.unknown] == [{"title": "Heat 1995",
                                                      "suggestions": list(closest_titles("Heat 1995", CATALOGUE))}]
    with pytest.raises(ValueError, match="empty history"):
        recommender.recommend([history, []])


def test_a_history_longer_than_the_prompt_budget_is_truncated_not_refused(world):
    tight = replace(world["params"].eval, max_prompt_tokens=60)
    recommender = Recommender(world["recommender"].model, world["recommender"].tokenizer,
                              world["recommender"].template, CATALOGUE, tight)
    assert len(recommender.recommend([tiny.TITLES[:12]])[0].titles) == 10
