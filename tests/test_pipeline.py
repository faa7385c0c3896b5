"""The data half of `dvc repro` on the real ml-latest-small: runs, is a no-op the second time, reruns only
what a changed param touches, and a forced rerun gives byte-identical outputs (same md5 in dvc.lock)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DATASET = "ml-latest-small"  # params.yaml `datasets`: every stage but base_model runs as <stage>@<dataset>
DATA_STAGES = [f"{stage}@{DATASET}" for stage in ("ingest", "split", "prompts")]


def _run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _data_md5s(repo: Path) -> dict[str, str]:
    """md5 of every data output (the validation report holds GX run times, so it is left out)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in DATA_STAGES for out in lock["stages"][stage]["outs"]
            if out["path"].startswith("data/")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, root, data_mirror) -> tuple[Path, dict]:
    """A throw-away git + DVC checkout of the project's tracked files, with the mirror configured."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if (root / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, repo / name)
    env = {**os.environ, "GENREC_DATA_MIRROR": str(data_mirror), "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        _run(cmd, repo, env)
    return repo, env


def test_repro_twice_then_param_change_reruns_split_and_prompts_only(repo):
    repo, env = repo
    first = _run(["dvc", "repro", "prompts"], repo, env)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first
    assert len((repo / "data/prompts/ml-latest-small/test.jsonl").read_text().splitlines()) == 610

    second = _run(["dvc", "repro", "prompts"], repo, env)
    assert "Running stage" not in second

    md5s = _data_md5s(repo)
    forced = _run(["dvc", "repro", "--force", "--single-item", "split"], repo, env)
    forced += _run(["dvc", "repro", "--force", "--single-item", "prompts"], repo, env)
    assert f"Running stage 'split@{DATASET}'" in forced and f"Running stage 'prompts@{DATASET}'" in forced  # not cached
    assert _data_md5s(repo) == md5s, "a rerun with the same inputs and seed changed an output"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["item_core"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(["dvc", "repro", "prompts"], repo, env)
    assert f"Running stage 'ingest@{DATASET}'" not in third
    assert f"Running stage 'split@{DATASET}'" in third and f"Running stage 'prompts@{DATASET}'" in third


def _docs_exp_show_keep(root: Path) -> list[str]:
    """The `--keep` patterns of the `dvc exp show` line in docs/pipeline.md (the sweep it documents)."""
    line = next(line for line in (root / "docs" / "pipeline.md").read_text().splitlines()
                if line.startswith("dvc exp show"))
    words = shlex.split(line)
    return [words[i + 1] for i, word in enumerate(words) if word == "--keep"]


def test_docs_exp_show_keeps_the_genrec_ranking_metrics(root):
    """`dvc exp show --keep` anchors its regex at the column start, and with several metrics files every
    column is `<file>:<key>`; the documented filter must still select GenRec's HR@10 and NDCG@10."""
    keep = re.compile("|".join(_docs_exp_show_keep(root)))
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    columns = [f"{path.replace('${item}', DATASET)}:{key}" for name in ("evaluate", "evaluate_valid", "mostpop")
               for path in stages[name]["do"]["metrics"] for key in ("hr_at_10", "ndcg_at_10", "ci95_low.hr_at_10")]
    kept = [column for column in columns if keep.match(column)]
    prefix = f"reports/{DATASET}"
    assert kept == [f"{prefix}/metrics/genrec.json:hr_at_10", f"{prefix}/metrics/genrec.json:ndcg_at_10",
                    f"{prefix}/metrics_valid/genrec.json:hr_at_10", f"{prefix}/metrics_valid/genrec.json:ndcg_at_10"]
    assert keep.match("Experiment") and keep.match("train.lora.r") and keep.match("train.lora.alpha")
    assert not keep.match("train.lora.dropout") and not keep.match(f"{prefix}/metrics/p5.json:hr_at_10")


def test_exp_run_records_params_and_ranking_metrics_per_experiment(repo):
    """`dvc exp run -S` on a metrics stage: the experiment is listed by `dvc exp show` with its param and
    its HR@10/NDCG@10 (read back from the DVC cache: reports/ is git-ignored)."""
    repo, env = repo
    _run(["git", "checkout", "--", "params.yaml"], repo, env)
    _run(["dvc", "repro", "mostpop"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], repo, env)
    _run(["dvc", "exp", "run", "-n", "core10", "-S", "split.item_core=10", "mostpop"], repo, env)

    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    experiments = [exp for row in baseline.get("experiments") or [] for exp in row["revs"]]
    (experiment,) = [exp for exp in experiments if exp["name"] == "core10"]

    def values(row):
        data = row["data"]
        metrics = data["metrics"][f"reports/{DATASET}/metrics/mostpop.json"]["data"]
        return data["params"]["params.yaml"]["data"]["split"]["item_core"], metrics

    core, metrics = values(experiment)
    base_core, base_metrics = values(baseline)
    assert (core, base_core) == (10, 5)
    for key in ("hr_at_10", "ndcg_at_10"):
        assert 0 < metrics[key] <= 1 and 0 < base_metrics[key] <= 1
    assert metrics["hr_at_10"] != base_metrics["hr_at_10"], "the experiment did not rerun on its own split"


def test_a_second_dataset_builds_beside_the_first_and_touches_nothing_of_it(repo):
    """`datasets: [ml-latest-small, tinyset]`: `dvc repro prompts@tinyset` runs tinyset's stages only, writes
    keyed outputs, and leaves ml-latest-small's data and reports as they were."""
    repo, env = repo
    _run(["git", "checkout", "--", "params.yaml"], repo, env)
    _run(["dvc", "repro", "prompts"], repo, env)
    before = _data_md5s(repo)
    raw = repo / "data" / "raw" / "tinyset"
    raw.mkdir(parents=True)
    # 12 users x 8 items (all of them), one more item without a title: dropped with its interactions.
    rows = [f"u{u},i{i},{100 * u + i}" for u in range(12) for i in range(8)] + ["u0,untitled,5000"]
    (raw / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    (raw / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(8)) + "untitled,\n")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"] = [DATASET, "tinyset"]
    params["dataset_params"]["tinyset"] = {"ingest": {"drop_untitled": True}}  # tinyset's own setting
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = _run(["dvc", "repro", "prompts@tinyset"], repo, env)
        ran = re.findall(r"Running stage '([^']+)'", out)
        assert ran == ["ingest@tinyset", "split@tinyset", "prompts@tinyset"]
        assert len((repo / "data/prompts/tinyset/test.jsonl").read_text().splitlines()) == 12
        assert json.loads((repo / "reports/tinyset/split_stats.json").read_text())["items"] == 8
        assert json.loads((repo / "data/interim/tinyset/manifest.json").read_text())["rows"]["items"] == 8
        assert _data_md5s(repo) == before  # ml-latest-small's lock entries unchanged
        assert (repo / f"reports/{DATASET}/split_stats.json").exists()
    finally:
        _run(["git", "checkout", "--", "params.yaml"], repo, env)
