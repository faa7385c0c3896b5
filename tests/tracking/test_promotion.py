"""The promotion rule (pure, with a stand-in paired test), then the gated rule and reset against a real MLflow
registry (SQLite in tmp) with real tiny adapters and per-user validation outcomes stored with each version.

The registry sequence (60 validation users; a hit is rank 1, every other user a miss):
  base      10 hits                          -> version 1, champion (no champion before)
  slight    11 hits, one user more           -> version 2: higher, not significant: champion stays 1
  slight    again with promote.alpha: null   -> version 2 takes it (higher is enough)
  strong    40 hits                          -> version 3: significant: it takes the alias
  newproto  validated with another protocol  -> version 4: not comparable; the reason names --reset
  reset     `genrec promote --reset`         -> version 3 archived, no champion
  newproto  again                            -> version 4 becomes champion
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from genrec.tracking import promotion
from genrec.tracking import registry
from genrec.tracking import runs as tracking
from genrec.cli import promote as promote_command
from genrec.config.params import PromoteParams, to_dict

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

NAME = "genrec-tiny"
USERS = 60


def version(number: int, ndcg: float | None, split: str = "s1", protocol: str = "p1", **tags):
    tags = {"split_fingerprint": split, "valid_protocol": protocol, **tags}
    if ndcg is not None:
        tags["valid.ndcg_at_10"] = repr(ndcg)
    return SimpleNamespace(version=str(number), tags=tags)


def test_first_champion_is_the_best_comparable_version_and_ties_go_to_the_older():
    v1, v2, v3, other = version(1, 0.2), version(2, 0.3), version(3, 0.3), version(4, 0.9, split="s2")
    decision = promotion.choose_champion([v1, v2, v3, other], None, v3)
    assert (decision.previous, decision.champion, decision.moved) == (None, "2", True)


def test_without_alpha_a_strictly_better_validation_score_takes_the_alias():
    v1, v2 = version(1, 0.2), version(2, 0.25)
    decision = promotion.choose_champion([v1, v2], v1, v2)
    assert (decision.previous, decision.champion, decision.moved) == ("1", "2", True)
    assert "higher is enough" in decision.reason and decision.test["test"] == "none: promote.alpha is null"


def test_a_tie_keeps_the_champion():
    v1, v2 = version(1, 0.2), version(2, 0.2)
    decision = promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=lambda a, b: pytest.fail("tested"))
    assert (decision.champion, decision.moved) == ("1", False) and "ties" in decision.reason


def test_a_worse_newcomer_never_takes_it_even_when_an_older_version_was_manually_made_champion():
    v1, v2, v3 = version(1, 0.3), version(2, 0.1), version(3, 0.2)
    assert promotion.choose_champion([v1, v2, v3], v1, v3).champion == "1"
    manual = promotion.choose_champion([v1, v2, v3], v2, v3)  # someone moved it to a worse one by hand
    assert (manual.champion, manual.moved) == ("1", True)


def test_versions_validated_on_another_split_or_protocol_are_not_compared_and_the_way_out_is_named():
    champion, newcomer = version(1, 0.1, split="old"), version(2, 0.9, split="new")
    decision = promotion.choose_champion([champion, newcomer], champion, newcomer, reset_command="RESET-IT")
    assert (decision.champion, decision.moved) == ("1", False) and "not comparable" in decision.reason
    assert "archive it with `RESET-IT`" in decision.reason
    assert "--reset --reason" in promotion.choose_champion([champion, newcomer], champion, newcomer).reason
    champion, newcomer = version(1, 0.1, protocol="beams10"), version(2, 0.9, protocol="beams20")
    assert promotion.choose_champion([champion, newcomer], champion, newcomer).champion == "1"


def test_a_newcomer_without_a_validation_score_is_refused():
    with pytest.raises(ValueError, match="no valid.ndcg_at_10"):
        promotion.choose_champion([version(1, None)], None, version(1, None))


def test_the_metric_chooses_the_tag():
    v1 = SimpleNamespace(version="1", tags={"split_fingerprint": "s", "valid_protocol": "p", "valid.hr_at_10": "0.5"})
    assert promotion.choose_champion([v1], None, v1, metric="hr_at_10").champion == "1"
    with pytest.raises(ValueError, match="no valid.ndcg_at_10"):
        promotion.choose_champion([v1], None, v1)


def paired(diff: float, p_value: float):
    return lambda challenger, champion: {"users": 100, "diff": diff, "ci95_low": diff - 0.01,
                                         "ci95_high": diff + 0.01, "p_value": p_value, "wins": 3, "losses": 1}


def test_with_alpha_a_higher_score_needs_a_significant_paired_win():
    v1, v2 = version(1, 0.20), version(2, 0.25)
    kept = promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=paired(0.05, 0.2))
    assert (kept.champion, kept.moved) == ("1", False) and "not significantly" in kept.reason
    assert kept.test["p_value"] == 0.2 and kept.test["challenger"] == "2" and kept.test["champion"] == "1"
    moved = promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=paired(0.05, 0.001))
    assert (moved.champion, moved.moved) == ("2", True) and "significantly" in moved.reason
    assert moved.test["test"] == "paired bootstrap" and moved.test["alpha"] == 0.05
    # a higher overall score but no gain on the users both have: kept, however small p is
    assert not promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=paired(-0.01, 0.001)).moved


def test_when_the_paired_test_cannot_run_the_champion_stays():
    v1, v2 = version(1, 0.20), version(2, 0.25)
    decision = promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=lambda a, b: "no outcomes stored")
    assert not decision.moved and "cannot run (no outcomes stored)" in decision.reason


def test_archived_versions_are_no_candidates_unless_promoted_again_themselves():
    archived = version(1, 0.9, archived_reason="old protocol")
    v2, v3 = version(2, 0.2), version(3, 0.3)
    assert promotion.choose_champion([archived, v2, v3], None, v2).champion == "3"
    assert promotion.choose_champion([archived, v2], None, archived).champion == "1"


# The registry sequence of the module docstring.

def hits(n: int) -> list:
    return [1] * n + [None] * (USERS - n)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    w = tiny.world(tmp_path_factory.mktemp("gated"))
    null = replace(w["params"], promote=PromoteParams(alpha=None))
    w["params_path"] = w["tmp"] / "params.yaml"
    w["params_path"].write_text(yaml.safe_dump(to_dict(w["params"])))
    mlc = tracking.mlflow_client(w["params"])
    steps = {"base": tiny.promote(w, "base", 1, hits(10), hits(5)),
             "slight": tiny.promote(w, "slight", 2, hits(11), hits(5))}
    steps["slight_tags"] = dict(mlc.get_model_version(NAME, "2").tags)
    steps["slight_null"] = tiny.promote(w, "slight", 2, hits(11), hits(5), params=null,
                                        model_dir=w["tmp"] / "slight" / "model",
                                        out_path=w["tmp"] / "slight" / "promotion_null.json")
    steps["strong"] = tiny.promote(w, "strong", 3, hits(40), hits(5))
    steps["strong_tags"] = dict(mlc.get_model_version(NAME, "3").tags)
    other_protocol = dict(eval={"max_users": 1000})
    steps["newproto"] = tiny.promote(w, "newproto", 4, hits(30), hits(5), **other_protocol)
    steps["reset"] = CliRunner().invoke(promote_command, ["--params", str(w["params_path"]), "--reset",
                                                          "--reason", "protocol changed: max_users"])
    steps["reset_tags"] = dict(mlc.get_model_version(NAME, "3").tags)
    steps["reset_champion"] = promotion.current_champion(mlc, NAME)
    steps["after"] = tiny.promote(w, "newproto", 4, hits(30), hits(5), model_dir=w["tmp"] / "newproto" / "model",
                                  **other_protocol)
    return w, steps


def test_no_champion_yet_the_first_version_takes_it_untested(gated):
    _, steps = gated
    base = steps["base"]
    assert (base["champion"]["version"], base["moved"]) == (1, True) and base["test"]["test"] == "none: no champion"


def test_a_better_but_not_significant_challenger_is_not_promoted(gated):
    w, steps = gated
    slight = steps["slight"]
    assert slight["this_version"]["valid.ndcg_at_10"] > slight["champion"]["valid.ndcg_at_10"]
    assert (slight["champion"]["version"], slight["moved"]) == (1, False) and "not significantly" in slight["reason"]
    test = slight["test"]
    assert test["test"] == "paired bootstrap" and test["users"] == USERS and test["wins"] == 1 and test["losses"] == 0
    assert test["diff"] == pytest.approx(1 / USERS) and test["p_value"] >= 0.05 and test["ci95_low"] <= 0
    tags = steps["slight_tags"]
    assert tags["promotion.test"] == "paired bootstrap" and float(tags["promotion.p_value"]) == test["p_value"]
    assert float(tags["promotion.diff"]) == test["diff"] and float(tags["promotion.ci95_high"]) == test["ci95_high"]
    assert tags["promotion.decision"] == "champion 1 kept" and tags["promotion.champion"] == "1"
    on_disk = json.loads((w["tmp"] / "slight" / "promotion.json").read_text())
    assert on_disk["promote"]["alpha"] == 0.05 and on_disk["test"] == {**test, "test": "paired bootstrap"}


def test_alpha_null_promotes_on_any_gain(gated):
    _, steps = gated
    null = steps["slight_null"]
    assert not null["this_version"]["created"] and null["promote"]["alpha"] is None
    assert (null["previous_champion"]["version"], null["champion"]["version"], null["moved"]) == (1, 2, True)
    assert "higher is enough" in null["reason"] and "only score higher" in null["rule"]


def test_a_significantly_better_challenger_is_promoted(gated):
    _, steps = gated
    strong = steps["strong"]
    assert (strong["previous_champion"]["version"], strong["champion"]["version"], strong["moved"]) == (2, 3, True)
    test = strong["test"]
    assert test["diff"] == pytest.approx(29 / USERS) and test["p_value"] < 0.05 and test["ci95_low"] > 0
    assert test["samples"] == 10000 and steps["strong_tags"]["promotion.decision"] == "promoted"


def test_each_version_stores_its_per_user_validation_ranks(gated):
    w, _ = gated
    mlc = tracking.mlflow_client(w["params"])
    ranks = promotion.load_valid_ranks(w["params"], mlc.get_model_version(NAME, "3"))
    assert ranks == {f"u{u}": 1 if u < 40 else None for u in range(USERS)}


def test_a_champion_of_another_protocol_is_kept_and_the_refusal_says_how_to_reset(gated):
    _, steps = gated
    newproto = steps["newproto"]
    assert (newproto["champion"]["version"], newproto["moved"]) == (3, False)
    assert "not comparable" in newproto["reason"]
    assert 'genrec promote --set dataset=tiny --reset --reason "TEXT"' in newproto["reason"]


def test_reset_archives_the_champion_and_the_next_promotion_starts_afresh(gated):
    _, steps = gated
    assert steps["reset"].exit_code == 0, steps["reset"].output
    assert steps["reset_champion"] is None
    tags = steps["reset_tags"]
    assert tags["archived_reason"] == "protocol changed: max_users" and tags["archived_at"].startswith("20")
    after = steps["after"]
    assert (after["previous_champion"], after["champion"]["version"], after["moved"]) == (None, 4, True)
    archived = next(v for v in after["versions"] if v["version"] == 3)
    assert archived["archived_reason"] == "protocol changed: max_users"


@pytest.mark.parametrize("args, message", [
    (["--reset"], "--reset and --reason go together"),
    (["--reason", "why"], "--reset and --reason go together"),
    ([], "missing --model, --base"),
    (["--reset", "--reason", "why", "--out", "p.json"], "give every path, or none"),
])
def test_promote_command_line_mistakes_are_usage_errors(gated, args, message):
    w, _ = gated
    result = CliRunner().invoke(promote_command, ["--params", str(w["params_path"]), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_champion_of_another_item_representation_is_refused_unless_asked_for():
    champion, newcomer = version(1, 0.1), version(2, 0.9, **{promotion.ITEMS_TAG: "semantic"})
    with pytest.raises(promotion.RepresentationMismatch) as err:
        promotion.choose_champion([champion, newcomer], champion, newcomer)
    message = str(err.value)  # the untagged champion counts as titles
    assert "champion version 1 names items by 'title', version 2 by 'semantic'" in message and "\n" not in message
    assert "promote.across_representations: true" in message
    across = promotion.choose_champion([champion, newcomer], champion, newcomer, across_representations=True)
    assert (across.previous, across.champion, across.moved) == ("1", "2", True)


def test_only_versions_of_the_newcomers_representation_compete():
    titles, semantic = version(1, 0.1, **{promotion.ITEMS_TAG: "title"}), version(2, 0.9, **{
        promotion.ITEMS_TAG: "semantic"})
    untagged = version(3, 0.2)  # registered before the tag: titles
    assert promotion.choose_champion([titles, semantic, untagged], None, untagged).champion == "3"
    moved = promotion.choose_champion([titles, semantic, untagged], titles, untagged)
    assert (moved.champion, moved.moved) == ("3", True)  # the semantic version, though higher, is no challenger
    assert promotion.choose_champion([titles, semantic, untagged], None, untagged,
                                     across_representations=True).champion == "2"


def test_a_paired_test_over_fewer_than_min_users_keeps_the_champion_whatever_p_says():
    v1, v2 = version(1, 0.0), version(2, 1.0)
    one_user = lambda a, b: {"users": 1, "diff": 1.0, "ci95_low": 1.0, "ci95_high": 1.0, "p_value": 0.0002,
                             "wins": 1, "losses": 0, "users_differing": 1}
    kept = promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=one_user, min_users=30)
    assert (kept.champion, kept.moved) == ("1", False)
    assert "over 1 users, ranks differing for 1" in kept.reason and "promote.min_users (30)" in kept.reason
    assert kept.test["min_users"] == 30 and kept.test["users_differing"] == 1
    assert promotion.choose_champion([v1, v2], v1, v2, alpha=0.05, compare=one_user, min_users=1).moved


@pytest.fixture(scope="module")
def one_user(tmp_path_factory):
    """Two versions validated on one user (a miss, then a hit), promoted with the default promote params."""
    w = tiny.world(tmp_path_factory.mktemp("one_user"))
    steps = {"first": tiny.promote(w, "first", 1, [None], [None]),
             "second": tiny.promote(w, "second", 2, [1], [None])}
    steps["tags"] = dict(tracking.mlflow_client(w["params"]).get_model_version(NAME, "2").tags)
    return w, steps


def test_one_validation_user_cannot_make_a_challenger_significant(one_user):
    _, steps = one_user
    second = steps["second"]
    assert (second["champion"]["version"], second["moved"]) == (1, False)
    test = second["test"]
    assert test["users"] == 1 and test["users_differing"] == 1 and test["p_value"] < 0.05  # 2/(samples+1)
    assert second["promote"]["min_users"] == 30
    assert "fewer users than promote.min_users (30)" in second["reason"] and "ranks differing for 1" in second["reason"]
    assert "at least 30 validation users" in second["rule"]
    tags = steps["tags"]
    assert tags["promotion.users_differing"] == "1" and tags["promotion.decision"] == "champion 1 kept"
