"""What `genrec recommend` and the served pyfunc trust: the store's errors, the version's code and its files.

One real tiny champion (MLflow on SQLite in tmp) is registered by the promote stage; each test that edits the
version's files in the artifact store restores them. Command-line runs whose stderr must hold no traceback run
`genrec` as a subprocess, so that MLflow's own logging is seen as a user sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from genrec.cli import recommend
from genrec.config.params import to_dict
from genrec.errors import DataError
from genrec.tracking import promotion, registry, trust
from genrec.tracking import runs as tracking

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tiny.world(tmp_path_factory.mktemp("trust"))
    tiny.promote(w, "first", seed=3, valid_ranks=[1, 2], test_ranks=[2, None])
    w["params_path"] = w["tmp"] / "params.yaml"
    w["params_path"].write_text(yaml.safe_dump(to_dict(w["params"])))
    w["version"] = tracking.mlflow_client(w["params"]).get_model_version_by_alias("genrec-tiny", registry.CHAMPION)
    return w


def stored(w) -> Path:
    """The champion's folder in the (local) artifact store: the files every later load reads."""
    import mlflow

    with tracking.tracking_store(w["params"]):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/genrec-tiny/{w['version'].version}"))


@contextlib.contextmanager
def edited(path: Path, extra: str):
    """Append `extra` to a stored file for the block, then restore its bytes."""
    before = path.read_bytes()
    path.write_bytes(before + extra.encode())
    try:
        yield
    finally:
        path.write_bytes(before)


def invoke(w, *args):
    result = CliRunner().invoke(recommend, ["--params", str(w["params_path"]), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def genrec(*args, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genrec.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV, **env})


def one_line_refusal(result, message: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1, result.stderr


# 1. An unreadable registry is not "no champion".

def test_no_registered_model_and_no_alias_mean_no_champion(world, tmp_path):
    mlc = tracking.mlflow_client(tiny.params(tmp_path))
    assert promotion.current_champion(mlc, "genrec-tiny") is None  # a fresh store
    mlc.create_registered_model("genrec-tiny")
    assert promotion.current_champion(mlc, "genrec-tiny") is None  # a model without the alias
    champion = promotion.current_champion(tracking.mlflow_client(world["params"]), "genrec-tiny")
    assert str(champion.version) == str(world["version"].version)


def test_a_corrupt_store_stops_current_champion_and_reset_with_one_line(world, tmp_path):
    shutil.copy(world["tmp"] / "mlflow.db", tmp_path / "mlflow.db")
    params = tiny.params(tmp_path)
    mlc = tracking.mlflow_client(params)  # opened while the file was whole: the store breaks under a client
    (tmp_path / "mlflow.db").write_bytes(b"not a database " * 100)
    with pytest.raises(DataError, match="tracking store sqlite:.*cannot read the champion of genrec-tiny"):
        promotion.current_champion(mlc, "genrec-tiny")
    with pytest.raises(DataError, match="tracking store sqlite:.*: cannot .*file is not a database"):
        registry.register_adapter(params, model_dir=world["tmp"] / "first" / "model", base_dir=world["base"],
                                  items_path=world["processed"] / "items.parquet", tags={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    result = genrec("promote", "--params", "params.yaml", "--reset", "--reason", "x", cwd=tmp_path)
    one_line_refusal(result, "file is not a database")
    assert "nothing to archive" not in result.stderr + result.stdout


def test_a_tracking_server_that_is_down_stops_reset_with_one_line(world, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "params.yaml").write_text(world["params_path"].read_text())
    result = genrec("promote", "--params", "params.yaml", "--reset", "--reason", "x", cwd=tmp_path,
                    MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    one_line_refusal(result, f"tracking store http://127.0.0.1:{port}: cannot read the champion")
    assert "nothing to archive" not in result.stderr + result.stdout


@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only for this process, root included (chattr +i where the tests run as root)."""
    mode = path.stat().st_mode
    path.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        path.chmod(mode)
        pytest.skip("root cannot make a file read-only on this file system")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def test_a_read_only_store_stops_reset_with_one_line_and_keeps_the_champion(world, tmp_path):
    shutil.copy(world["tmp"] / "mlflow.db", tmp_path / "mlflow.db")
    params = replace(world["params"], tracking=replace(world["params"].tracking,
                                                       uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    with read_only(tmp_path / "mlflow.db"):
        result = genrec("promote", "--params", "params.yaml", "--reset", "--reason", "x", cwd=tmp_path)
    one_line_refusal(result, "attempt to write a readonly database")
    assert "cannot archive genrec-tiny version" in result.stderr
    assert promotion.current_champion(tracking.mlflow_client(params), "genrec-tiny") is not None


# 2. The files served are the files registered.

def test_registration_records_a_hash_per_group_of_files_as_tags_and_in_the_model_config(world):
    tags = world["version"].tags
    assert all(len(tags[tag]) == 64 for tag in trust.HASH_TAGS)
    config = yaml.safe_load((stored(world) / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    assert config["sha256"] == {tag: tags[tag] for tag in trust.HASH_TAGS}


@pytest.mark.parametrize("file, group", [("adapter_config.json", "adapter"), ("tokenizer.json", "tokenizer"),
                                         ("template.json", "template"), ("config.json", "other files")])
def test_a_changed_file_of_the_version_is_refused_by_recommend_and_by_the_pyfunc(world, file, group):
    import mlflow

    with edited(stored(world) / "artifacts" / "model" / file, " "):  # still valid JSON, other bytes
        result = invoke(world, "--history", "Heat (1995)")
        assert result.exit_code == 1 and f"{group} (" in result.stderr and "refused" in result.stderr, result.output
        assert file in result.stderr
        with tracking.tracking_store(world["params"]), pytest.raises(DataError, match=f"{group} .*refused"):
            mlflow.pyfunc.load_model(registry.champion_uri(world["params"]))
    assert invoke(world, "--history", "Heat (1995)").exit_code == 0


def test_a_changed_catalogue_is_refused(world):
    with edited(stored(world) / "artifacts" / "items.parquet", "\0"):
        result = invoke(world, "--history", "Heat (1995)")
    assert result.exit_code == 1 and "catalogue (items.parquet)" in result.stderr, result.output


# 3. Only versions genrec built load, and none of their code runs.

def test_a_line_appended_to_the_stored_entry_point_is_refused_and_never_runs(world, tmp_path):
    marker = tmp_path / "ran"
    with edited(stored(world) / trust.ENTRY_POINT, f"\nopen({str(marker)!r}, 'w').write('ran')\n"):
        result = invoke(world, "--history", "Heat (1995)")
    assert result.exit_code == 1 and "not a version genrec built" in result.stderr, result.output
    assert f"{trust.ENTRY_POINT} differs" in result.stderr and not marker.exists()


@pytest.fixture(scope="module")
def foreign(world):
    """A cloudpickled PythonModel registered under genrec's name: it touches a file when it loads."""
    import mlflow

    marker = world["tmp"] / "foreign-ran"

    class Foreign(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            os.system(f"touch {marker}")

        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"answer": [42] * len(model_input)})

    with tracking.tracking_store(world["params"]), mlflow.start_run(
            experiment_id=tracking.mlflow_client(world["params"]).get_experiment_by_name("genrec-tiny").experiment_id):
        info = mlflow.pyfunc.log_model(name="foreign", python_model=Foreign())
        version = mlflow.register_model(info.model_uri, "genrec-tiny")
    marker.unlink(missing_ok=True)  # logging loads the model once to check it
    return {"uri": f"models:/genrec-tiny/{version.version}", "marker": marker}


def test_a_foreign_pyfunc_under_genrecs_name_is_refused_without_running(world, foreign):
    result = invoke(world, "--model", foreign["uri"], "--history", "Heat (1995)")
    assert result.exit_code == 1 and "not a version genrec built: a pickled python_model" in result.stderr, \
        result.output
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
    assert not foreign["marker"].exists()


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:5001/invocations", "a served model's http(s) endpoint"),
    ("runs:/0123/recommender", "not a registry version"),
    ("models:/genrec-tiny", "expected a version number or an alias"),
])
def test_only_registry_versions_are_loaded(world, uri, message):
    result = invoke(world, "--model", uri, "--history", "Heat (1995)")
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output, result.output


# 4. Filter strings quote their values.

def test_quoted_values_survive_mlflows_filter_grammar(tmp_path):
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ["plain", "genrec-o'neil", 'genrec-say"hi"']:
        mlc.create_registered_model(name)
        mlc.create_model_version(name, "file:///nowhere")
        assert [v.name for v in mlc.search_model_versions(f"name = {registry.quoted(name)}")] == [name]
    with pytest.raises(DataError, match="both quote characters"):
        registry.quoted("a'b\"c")


def test_a_dataset_with_a_quote_is_registered_once_promoted_and_served(world, tmp_path):
    params = replace(world["params"], dataset="o'neil")
    model_dir = tiny.write_adapter(world["tmp"] / "oneil" / "model", world["base"], params, seed=11)
    kwargs = dict(model_dir=model_dir, base_dir=world["base"], items_path=world["processed"] / "items.parquet",
                  tags={"valid.ndcg_at_10": "0.5"})
    first, created = registry.register_adapter(params, **kwargs)
    again, created_again = registry.register_adapter(params, **kwargs)
    assert created and not created_again and first.name == "genrec-o'neil" and again.version == first.version
    report = tiny.promote(world, "oneil", seed=11, valid_ranks=[1, 2], test_ranks=[2, None], params=params,
                          model_dir=model_dir)
    assert report["champion"]["version"] == int(first.version)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    result = CliRunner().invoke(recommend, ["--params", str(tmp_path / "params.yaml"), "--history", "Heat (1995)"])
    assert result.exit_code == 0 and "models:/genrec-o'neil@champion" in result.stdout, result.output


# 5. Settings and k as asked.

def test_recommend_honours_eval_overrides_and_names_ignored_ones(world):
    result = invoke(world, "--history", "Heat (1995)", "--json", "--set", "eval.num_beams=3", "--set", "eval.k=[1,3]")
    assert result.exit_code == 0, result.output
    assert len(json_out(result)["recommendations"]) == 3  # default k is eval.num_beams
    ignored = invoke(world, "--history", "Heat (1995)", "-k", "2", "--set", "split.user_core=3")
    assert ignored.exit_code == 0 and "warning: --set split.user_core is ignored" in ignored.stderr


def json_out(result) -> dict:
    import json

    return json.loads(result.stdout)


def test_pyfunc_refuses_k_0_as_a_param_as_it_does_as_a_column(world):
    import mlflow
    from mlflow.exceptions import MlflowException

    with tracking.tracking_store(world["params"]):
        model = mlflow.pyfunc.load_model(registry.champion_uri(world["params"]))
    for call in (lambda: model.predict(pd.DataFrame({"history": [["Heat (1995)"]]}), params={"k": 0}),
                 lambda: model.predict(pd.DataFrame({"history": [["Heat (1995)"]], "k": [0]}))):
        with pytest.raises(MlflowException, match="k=0"):
            call()


# 6. Partial answers say so.

def test_only_the_latest_unknown_titles_get_suggestions_and_at_most_five():
    from genrec.decoding.trie import Catalogue
    from genrec.models.genrec.recommend import MAX_SUGGESTED, MAX_SUGGESTIONS, resolve_history

    catalogue = Catalogue.from_items(pd.DataFrame({"item_id": [str(i) for i in range(len(tiny.TITLES))],
                                                   "title": tiny.TITLES}))
    unknown = [f"{t.lower()} x" for t in tiny.TITLES[:MAX_SUGGESTED + 3]]
    resolved = resolve_history(["Heat (1995)", *unknown], catalogue, n_suggestions=50)
    assert [u.suggestions is None for u in resolved.unknown] == [True] * 3 + [False] * MAX_SUGGESTED
    assert all(0 < len(u.suggestions) <= MAX_SUGGESTIONS for u in resolved.unknown[3:])


def test_an_archived_champion_is_served_with_a_warning(world):
    mlc = tracking.mlflow_client(world["params"])
    version = world["version"].version
    mlc.set_model_version_tag("genrec-tiny", version, promotion.ARCHIVED_TAG, "protocol changed")
    try:
        result = invoke(world, "--history", "Heat (1995)", "-k", "2")
    finally:
        mlc.delete_model_version_tag("genrec-tiny", version, promotion.ARCHIVED_TAG)
    assert result.exit_code == 0 and "was archived (protocol changed) and is served anyway" in result.stderr


def test_a_history_of_the_whole_catalogue_is_refused(world):
    result = invoke(world, *[word for title in tiny.TITLES for word in ("--history", title)])
    assert result.exit_code == 1 and "nothing is left to recommend" in result.stderr, result.output
    assert "Top 0" not in result.stdout


def test_a_shorter_list_than_asked_says_how_many_it_could_return(world):
    result = invoke(world, "--history", "Heat (1995)", "-k", "100")
    assert result.exit_code == 0, result.output
    assert (f"warning: 23 title(s) where 100 were asked for: the catalogue has {len(tiny.TITLES)} titles, 1 of them "
            "in the history") in result.stderr
