"""The audit stage end to end on tiny worlds: clean data trips nothing, each leak trips its own audit, the
policy warns or stops, and an index in use that is not built is named."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from click.testing import CliRunner

import tiny_genrec
from genrec.cli import main
from genrec.config.params import AuditParams, IndexParams
from genrec.errors import DataError
from genrec.indexing.codes import ItemCodes, from_numbers, sequential_codes
from genrec.stages import audit, prompts

AUDITS = ["consecutive_ids", "target_in_prompt", "timestamp_ties", "targets_in_history"]
# Each user's items have increasing ids; titles never stand inside one another ("Film 1 (2001)", "Film 11 (2011)").
CLEAN = {f"u{u}": [str(3 * u), str(3 * u + 1), str(3 * u + 2)] for u in range(4)}
TITLES = {str(i): f"Film {i} (20{i:02d})" for i in range(12)}

LEAKS = {
    # `sequential` numbers the items of no training sequence in id order: 3 of 4 test targets are their valid item + 1.
    "consecutive_ids": dict(p5=["sequential"]),
    # u1's test title stands inside a history title; u2's valid item has its history item's title.
    "target_in_prompt": dict(sequences={**CLEAN, "u1": ["4", "5", "1"], "u2": ["6", "7", "8"]},
                             titles={**TITLES, "1": "Fear (1996)", "4": "Primal Fear (1996)", "7": TITLES["6"]}),
    # Each user's valid and test items share a second.
    "timestamp_ties": dict(timestamp=lambda u, p: 1000 * u + min(p, 1)),
    # u0's test item repeats its first item (whose title the prompt then shows: a repeat, not a title leak).
    "targets_in_history": dict(sequences={**CLEAN, "u0": ["2", "0", "2"]}),
}


def world(tmp, sequences=CLEAN, titles=TITLES, timestamp=lambda u, p: 1000 * u + p, p5=("random",), genrec=(),
          policy="warn") -> dict:
    """A split, its prompt records and two indexes (random counting down each user's items, and sequential)."""
    processed = tiny_genrec.write_split(tmp / "processed", sequences, dict(titles), timestamp=timestamp)
    params = dataclasses.replace(tiny_genrec.params(tmp), audit=AuditParams(policy=policy),
                                 index=IndexParams(p5=list(p5), genrec=list(genrec)))
    prompts.run(params, processed_dir=processed, out_dir=tmp / "prompts")
    from_numbers("random", {item: len(titles) - 1 - int(item) for item in titles}).save(tmp / "index" / "random")
    sequential_codes([items[:-2] for items in sequences.values()], titles).save(tmp / "index" / "sequential")
    return {"params": params, "processed_dir": processed, "prompts_dir": tmp / "prompts",
            "indexes_dir": tmp / "index", "metrics_path": tmp / "audit.json"}


def run(w: dict) -> dict:
    return audit.run(w["params"], **{k: v for k, v in w.items() if k != "params"})


def test_clean_data_trips_nothing_and_reports_every_audit(tmp_path):
    w = world(tmp_path, policy="fail")
    assert run(w)["tripped"] == []
    report = json.loads(w["metrics_path"].read_text())
    assert report["policy"] == "fail" and report["tripped"] == [] and sorted(report["audits"]) == sorted(AUDITS)
    for name, result in report["audits"].items():
        assert result["tripped"] is False and result["share"] == 0.0, name
        assert result["limit"] == getattr(AuditParams(), f"{name}_max")
    assert len(report["findings"]) == 4 and all(line.endswith(": ok") for line in report["findings"])
    assert [line.split(":")[0] for line in report["findings"]] == list(audit.NAMES.values())


def test_an_index_not_in_use_is_reported_but_never_trips(tmp_path):
    w = world(tmp_path)
    run(w)
    report = json.loads(w["metrics_path"].read_text())
    indexes = report["audits"]["consecutive_ids"]["indexes"]
    assert list(indexes) == ["random", "sequential"]  # in use first, then the other folders
    assert indexes["sequential"] == {"in_use": False, "leaky": True, "depth": 1, "items": 12, "chance": 0.08333333,
                                     "valid_count": 0, "valid_share": 0.0, "test_count": 3, "test_share": 0.75,
                                     "users": 4, "tripped": False}
    assert "not in use sequential (leaky) 3 (75.0%)" in report["findings"][0]


@pytest.mark.parametrize("name", AUDITS)
def test_each_audit_trips_on_data_built_to_show_it(tmp_path, name):
    w = world(tmp_path, **LEAKS[name])
    assert run(w)["tripped"] == [name]
    report = json.loads(w["metrics_path"].read_text())
    result = report["audits"][name]
    assert result["tripped"] and result["share"] > result["limit"]
    line = report["findings"][AUDITS.index(name)]
    assert line.startswith(audit.NAMES[name] + ":") and line.endswith(f"(limit {result['limit']}): warn")


def test_the_leaks_are_counted_by_kind(tmp_path):
    report = run(world(tmp_path, **LEAKS["target_in_prompt"]))
    result = json.loads((tmp_path / "audit.json").read_text())["audits"]["target_in_prompt"]
    assert (result["valid_count"], result["test_count"], result["count"], result["targets"]) == (1, 1, 2, 8)
    assert (result["shared_title"], result["substring"]) == (1, 1)
    assert result["example"] == "'Film 6 (2006)', the title of another item too"
    for view in ("records", "history"):
        assert result[view]["test"] == {"targets": 4, "repeat": 0, "shared_title": 0, "substring": 1}
        assert result[view]["valid"] == {"targets": 4, "repeat": 0, "shared_title": 1, "substring": 0}
    assert "2 of 8 valid/test targets (25.0%)" in report["findings"][1]


def test_shared_titles_are_counted_apart_from_repeats(tmp_path):
    # u0 repeats its test item; u2's valid item is a distinct item with its history item's title.
    sequences = {**LEAKS["targets_in_history"]["sequences"], "u2": ["6", "7", "8"]}
    w = world(tmp_path, sequences=sequences, titles={**TITLES, "7": TITLES["6"]})
    assert run(w)["tripped"] == ["target_in_prompt", "targets_in_history"]
    audits = json.loads(w["metrics_path"].read_text())["audits"]
    prompt = audits["target_in_prompt"]
    assert (prompt["count"], prompt["shared_title"], prompt["substring"]) == (1, 1, 0)
    assert prompt["records"]["test"]["repeat"] == 1 and prompt["history"]["test"]["repeat"] == 1
    assert (audits["targets_in_history"]["test_count"], audits["targets_in_history"]["valid_count"]) == (1, 0)


def test_warn_logs_a_warning_per_tripped_audit(tmp_path, caplog):
    w = world(tmp_path, **LEAKS["timestamp_ties"], p5=["sequential"])
    with caplog.at_level(logging.INFO, logger="genrec.stages.audit"):
        written = run(w)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert written["tripped"] == ["consecutive_ids", "timestamp_ties"]
    assert warnings == [written["findings"][0], written["findings"][2]]
    assert "4 of 4 test targets (100.0%) share their timestamp" in warnings[1]


def test_fail_writes_the_report_then_stops_naming_the_audits(tmp_path):
    w = world(tmp_path, **LEAKS["timestamp_ties"], policy="fail")
    with pytest.raises(DataError, match=r"audit.json: leakage audits tripped: timestamp_ties \(audit.policy=fail\)\. "
                                        r".*raise audit.timestamp_ties_max or set audit.policy=warn"):
        run(w)
    assert json.loads(w["metrics_path"].read_text())["tripped"] == ["timestamp_ties"]


def test_a_raised_limit_lets_the_same_data_pass(tmp_path):
    w = world(tmp_path, **LEAKS["timestamp_ties"], policy="fail")
    w["params"] = dataclasses.replace(w["params"], audit=AuditParams(policy="fail", timestamp_ties_max=0.5))
    assert run(w)["tripped"] == []  # 4 of 8 targets: a share of 0.5 is not above 0.5


@pytest.mark.parametrize("key", ["p5", "genrec"])
def test_a_missing_index_in_use_is_named(tmp_path, key):
    w = world(tmp_path, **{key: ["semantic"]})
    with pytest.raises(DataError, match=r"semantic/codes.json: item index 'semantic' is in use .* not built\. "
                                        r"add semantic to index.methods and run `genrec index`"):
        run(w)
    assert not w["metrics_path"].exists()


def test_the_command_exits_with_the_reason_when_the_policy_fails(tmp_path, root):
    w = world(tmp_path, **LEAKS["timestamp_ties"])
    ItemCodes("semantic", {item: (0, 11 - int(item)) for item in TITLES}, (1, 12)).save(tmp_path / "index" / "semantic")
    result = CliRunner().invoke(main, [
        "audit", "--params", str(root / "params.yaml"), "--set", "audit.policy=fail",
        "--processed", str(w["processed_dir"]), "--prompts", str(w["prompts_dir"]),
        "--indexes", str(w["indexes_dir"]), "--metrics", str(w["metrics_path"])])
    assert result.exit_code == 1, result.output
    assert "leakage audits tripped: timestamp_ties" in result.output and "Traceback" not in result.output
    assert json.loads(w["metrics_path"].read_text())["audits"]["consecutive_ids"]["indexes"]["semantic"]["in_use"]
