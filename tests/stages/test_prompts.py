"""The prompts stage on a tiny hand-made split: counts, history windows, order, determinism, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from genrec.errors import DataError
from genrec.config.params import Params, PromptsParams
from genrec.data.prompts import PromptTemplate, build_prompt, parse_history
from genrec.stages.prompts import run

import tiny_genrec  # tests/ is on pytest's pythonpath (pyproject.toml)

TITLES = {
    "1": "Toy Story (1995)", "2": "American President, The (1995)", "3": 'He Said "No" (2001)',
    "4": "Amélie \\ Back\\slash (2001)", "5": "Heat (1995)", "6": "Se7en, (1995)",
    "7": "千と千尋の神隠し (2001)",
}
# Full chronological sequences; the split stage puts the last item in test and the one before in valid.
SEQUENCES = {
    "u1": ["1", "2", "3", "4", "5", "6"],
    "u2": ["3", "1", "2"],
    "u10": ["7", "6", "5", "4", "3"],
}


def write_split(folder: Path, sequences: dict = SEQUENCES, shuffle: bool = False) -> Path:
    return tiny_genrec.write_split(folder, sequences, TITLES, timestamp=lambda u, p: 1000 + p, shuffle=shuffle)


def params(**prompts) -> Params:
    return Params(prompts=PromptsParams(**prompts))


def read(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def processed(tmp_path) -> Path:
    return write_split(tmp_path / "processed")


def test_counts_and_windows(processed, tmp_path):
    out = tmp_path / "prompts"
    result = run(params(max_history=2, train_targets=2), processed_dir=processed, out_dir=out)
    # u1 trains on positions 2, 3; u10 on 1, 2; u2 has one training item, so no training target.
    assert result["records"] == {"train": 4, "valid": 3, "test": 3}
    assert sorted(p.name for p in out.iterdir()) == ["template.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    template = PromptTemplate.load(out / "template.json")
    assert template == PromptTemplate(max_history=2)
    for name in ("train", "valid", "test"):
        for r in read(out, name):
            seq = SEQUENCES[r["user_id"]]
            t = r["target_position"]
            assert r["target_item_id"] == seq[t] and r["output"] == TITLES[seq[t]]
            assert r["history_item_ids"] == seq[max(0, t - 2):t]  # the target is never in its own history
            assert r["history_titles"] == [TITLES[i] for i in r["history_item_ids"]]
            assert parse_history(r["input"], "lines") == r["history_titles"]
            assert r["input"] in build_prompt(template, r["instruction"], r["history_titles"])
            assert r["instruction"] in template.instructions
    assert [(r["user_id"], r["target_position"]) for r in read(out, "train")] == [
        ("u1", 2), ("u1", 3), ("u10", 1), ("u10", 2)]
    assert [r["target_position"] for r in read(out, "valid")] == [4, 3, 1]
    assert [r["target_position"] for r in read(out, "test")] == [5, 4, 2]


def test_test_history_includes_valid_item(processed, tmp_path):
    run(params(max_history=10), processed_dir=processed, out_dir=tmp_path / "out")
    test_u1 = next(r for r in read(tmp_path / "out", "test") if r["user_id"] == "u1")
    assert test_u1 == {
        "user_id": "u1", "target_position": 5, "instruction": test_u1["instruction"],
        "input": "\n".join(TITLES[i] for i in "12345"), "output": "Se7en, (1995)",
        "history_item_ids": list("12345"), "history_titles": [TITLES[i] for i in "12345"],
        "target_item_id": "6",
    }


def test_all_targets_is_a_sliding_window(processed, tmp_path):
    run(params(train_targets="all"), processed_dir=processed, out_dir=tmp_path / "all")
    run(params(train_targets=1), processed_dir=processed, out_dir=tmp_path / "one")
    assert [(r["user_id"], r["target_position"]) for r in read(tmp_path / "all", "train")] == [
        ("u1", 1), ("u1", 2), ("u1", 3), ("u10", 1), ("u10", 2)]
    assert [(r["user_id"], r["target_position"]) for r in read(tmp_path / "one", "train")] == [
        ("u1", 3), ("u10", 2)]


def test_quoted_format(processed, tmp_path):
    run(params(history_format="quoted"), processed_dir=processed, out_dir=tmp_path / "out")
    for r in read(tmp_path / "out", "test"):
        assert parse_history(r["input"], "quoted") == r["history_titles"]
    assert PromptTemplate.load(tmp_path / "out" / "template.json").history_format == "quoted"


def test_byte_identical_whatever_the_input_order(processed, tmp_path):
    shuffled = write_split(tmp_path / "shuffled", shuffle=True)
    run(params(train_targets="all"), processed_dir=processed, out_dir=tmp_path / "a")
    run(params(train_targets="all"), processed_dir=processed, out_dir=tmp_path / "b")
    run(params(train_targets="all"), processed_dir=shuffled, out_dir=tmp_path / "c")
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "template.json"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    run(params(train_targets="all", seed=7), processed_dir=processed, out_dir=tmp_path / "d")
    assert (tmp_path / "d" / "train.jsonl").read_bytes() != (tmp_path / "a" / "train.jsonl").read_bytes()


def test_lines_are_canonical_json(processed, tmp_path):
    # The stage assembles JSON from pre-encoded pieces; it must equal json.dumps byte for byte.
    run(params(train_targets="all", history_format="quoted"), processed_dir=processed, out_dir=tmp_path / "out")
    text = "".join((tmp_path / "out" / f"{name}.jsonl").read_text(encoding="utf-8") for name in ("train", "test"))
    assert "千と千尋の神隠し" in text and "Amélie" in text
    for line in text.splitlines():
        assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)


def test_bad_input_leaves_previous_output_whole(processed, tmp_path):
    out = tmp_path / "out"
    run(params(), processed_dir=processed, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    pd.DataFrame({"item_id": ["1"], "title": ["Toy Story (1995)"]}).to_parquet(processed / "items.parquet")
    with pytest.raises(DataError, match="has no title"):
        run(params(), processed_dir=processed, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_user_without_valid_item_is_reported(tmp_path):
    processed = write_split(tmp_path / "processed")
    valid = pd.read_parquet(processed / "valid.parquet")
    valid[valid["user_id"] != "u2"].to_parquet(processed / "valid.parquet")
    with pytest.raises(DataError, match="'u2' has 1 train, 0 valid and 1 test"):
        run(params(), processed_dir=processed, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_positions_must_increase(tmp_path):
    processed = write_split(tmp_path / "processed")
    test = pd.read_parquet(processed / "test.parquet")
    test["position"] = 0
    test.to_parquet(processed / "test.parquet")
    with pytest.raises(DataError, match="positions"):
        run(params(), processed_dir=processed, out_dir=tmp_path / "out")


def test_integer_ids_are_read_as_strings(tmp_path):
    processed = write_split(tmp_path / "processed", {"7": ["1", "2", "3", "4"], "10": ["4", "3", "2"]})
    for name in ("train", "valid", "test", "items"):
        df = pd.read_parquet(processed / f"{name}.parquet")
        df.astype({c: "int64" for c in ("user_id", "item_id") if c in df}).to_parquet(processed / f"{name}.parquet")
    run(params(), processed_dir=processed, out_dir=tmp_path / "out")
    test = read(tmp_path / "out", "test")
    assert [(r["user_id"], r["target_item_id"], r["history_item_ids"]) for r in test] == [
        ("10", "2", ["4", "3"]), ("7", "4", ["1", "2", "3"])]


def test_users_the_split_drops_are_not_prompted(root, tmp_path):
    """Users removed by the split's filters (short users, ratings under split.min_rating) stay in the parquet
    dictionary of user ids; the prompts stage must prompt the users that have rows, not fail on the others."""
    from genrec.config.params import load_params
    from genrec.stages import split as split_stage

    rows = []
    for u in range(6):  # six users of 4 interactions, all kept
        rows += [(f"u{u}", str(i), 100 * u + i, 5.0) for i in range(4)]
    rows += [("short", "0", 1, 5.0), ("short", "1", 2, 5.0)]  # 2 interactions: below min_sequence_length
    rows += [("low", str(i), 10 + i, 1.0) for i in range(4)]  # every rating below min_rating
    interim = tiny_genrec.write_interim(tmp_path / "interim", rows, [f"Title {i}" for i in range(4)])
    params = load_params(root / "params.yaml", ["split.user_core=1", "split.item_core=1", "split.min_rating=4"])
    stats = split_stage.run(params, interim_dir=interim, out_dir=tmp_path / "processed", report_dir=tmp_path / "report",
                            metrics_path=tmp_path / "split.json")
    assert json.loads(Path(stats["metrics"]).read_text())["users"] == 6
    result = run(params, processed_dir=tmp_path / "processed", out_dir=tmp_path / "prompts")
    assert result["records"]["test"] == result["records"]["valid"] == 6
    assert {r["user_id"] for r in read(tmp_path / "prompts", "test")} == {f"u{u}" for u in range(6)}
