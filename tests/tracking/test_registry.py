"""The backbone reference and its hash check, and the registered pyfunc itself (the rule: test_promotion.py).

The pyfunc tests register one real tiny adapter through the promote stage (MLflow on SQLite in tmp) and
load it back by its alias URI, as `genrec recommend` and `mlflow models serve` do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from genrec.tracking import promotion
from genrec.tracking import registry
from genrec.tracking import runs as tracking
from genrec.errors import DataError

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)


def test_protocol_hash_ignores_key_order_but_not_values():
    assert registry.protocol_hash({"a": 1, "b": [5, 10]}) == registry.protocol_hash({"b": [5, 10], "a": 1})
    assert registry.protocol_hash({"a": 1}) != registry.protocol_hash({"a": 2})


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One adapter registered and made champion by the promote stage."""
    w = tiny.world(tmp_path_factory.mktemp("registry"))
    w["report"] = tiny.promote(w, "first", seed=1, valid_ranks=[1, None, 4], test_ranks=[2, None, None])
    return w


def test_backbone_is_stored_once_outside_the_version_and_checked_by_hash(registered, tmp_path):
    mlc = tracking.mlflow_client(registered["params"])
    uri, sha256 = registry.store_backbone(registered["params"], registered["base"])  # a second call reuses it
    assert sha256 == tracking.sha256_path(registered["base"])
    backbones = mlc.get_experiment_by_name("genrec-backbones")
    assert len(mlc.search_runs([backbones.experiment_id])) == 1
    assert registry.resolve_backbone(uri, sha256).is_dir()
    tampered = tmp_path / "backbone"
    shutil.copytree(registry.resolve_backbone(uri, sha256), tampered)
    (tampered / "config.json").write_text((tampered / "config.json").read_text() + " ")
    with pytest.raises(DataError, match="differs from the registered"):
        registry.resolve_backbone(str(tampered), sha256)
    with pytest.raises(DataError, match="missing"):
        registry.resolve_backbone((tmp_path / "gone").as_uri(), sha256)


def test_a_version_bundles_adapter_catalogue_and_entry_point_but_no_backbone_and_no_pickle(registered):
    import mlflow

    mlc = tracking.mlflow_client(registered["params"])
    version = mlc.get_model_version_by_alias("genrec-tiny", registry.CHAMPION)
    with tracking.tracking_store(registered["params"]):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/genrec-tiny/{version.version}"))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    names = {Path(f).name for f in files}
    assert {"MLmodel", "genrec_model.py", "adapter_model.safetensors", "template.json", "items.parquet"} <= names
    assert "model.safetensors" not in names and not [n for n in names if n.endswith(".pkl")], sorted(files)
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "peft==" in requirements


@pytest.fixture(scope="module")
def pyfunc(registered):
    import mlflow

    with tracking.tracking_store(registered["params"]):
        return mlflow.pyfunc.load_model(registry.champion_uri(registered["params"]))


def test_pyfunc_ranks_catalogue_titles_for_a_batch_of_histories(pyfunc):
    frame = pd.DataFrame({"history": [["Toy Story (1995)", "Heat (1995)"], ["Heat 1995", "Casino (1995)"]]})
    out = pyfunc.predict(frame, params={"k": 4})
    assert list(out.columns) == ["titles", "scores", "item_ids", "unknown"] and len(out) == 2
    for titles, scores, item_ids in zip(out["titles"], out["scores"], out["item_ids"]):
        assert len(titles) == 4 and len(set(titles)) == 4 and set(titles) <= set(tiny.TITLES)
        assert list(scores) == sorted(scores, reverse=True)
        assert [tiny.TITLES[int(ids[0])] for ids in item_ids] == list(titles)
    assert not {"Toy Story (1995)", "Heat (1995)"} & set(out["titles"][0])
    assert out["unknown"][0] == [] and out["unknown"][1][0]["title"] == "Heat 1995"
    assert out["unknown"][1][0]["suggestions"][0] == "Heat (1995)"


def test_pyfunc_k_column_and_default(pyfunc):
    history = ["Jumanji (1995)"]
    per_row = pyfunc.predict(pd.DataFrame({"history": [history, history], "k": [2, 5]}))
    assert [len(t) for t in per_row["titles"]] == [2, 5]
    default = pyfunc.predict(pd.DataFrame({"history": [history]}))
    assert len(default["titles"][0]) == 10 and list(default["titles"][0][:5]) == list(per_row["titles"][1])


def test_pyfunc_refuses_bad_requests_clearly(pyfunc):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="empty history"):
        pyfunc.predict(pd.DataFrame({"history": [["Heat (1995)"], []]}))
    with pytest.raises(MlflowException, match="no title of the history is in the catalogue"):
        pyfunc.predict(pd.DataFrame({"history": [["Not A Film (2099)"]]}))
    with pytest.raises(MlflowException, match="k=500"):
        pyfunc.predict(pd.DataFrame({"history": [["Heat (1995)"]]}), params={"k": 500})


def test_registry_calls_leave_the_tracking_uri_and_environment_as_they_were(registered, monkeypatch):
    """Upload a new backbone, register a new adapter (not comparable: the champion stays), promote."""
    import mlflow

    w, params = registered, registered["params"]
    elsewhere = f"sqlite:///{w['tmp'] / 'elsewhere.db'}"
    monkeypatch.delenv(tracking.TELEMETRY_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # first: teardown restores the value before the test
    mlflow.set_tracking_uri(elsewhere)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # exported by set_tracking_uri; it would win over params
    env = dict(os.environ)
    base = w["tmp"] / "other-base"
    shutil.copytree(w["base"], base)
    (base / "README.md").write_text("another backbone: a new upload")
    model_dir = tiny.write_adapter(w["tmp"] / "leak" / "model", base, params, seed=7)
    try:
        version, created = registry.register_adapter(params, model_dir=model_dir, base_dir=base,
                                                     items_path=w["processed"] / "items.parquet",
                                                     tags={"valid.ndcg_at_10": "0.001"})
        assert created and (mlflow.get_tracking_uri(), dict(os.environ)) == (elsewhere, env)
        decision = promotion.promote(params, version)
        assert not decision.moved and (mlflow.get_tracking_uri(), dict(os.environ)) == (elsewhere, env)
        registry.store_backbone(params, base)
        assert (mlflow.get_tracking_uri(), dict(os.environ)) == (elsewhere, env)
        assert not (w["tmp"] / "elsewhere.db").exists()  # nothing went to the other store either
    finally:
        mlflow.set_tracking_uri(None)
