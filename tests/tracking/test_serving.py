"""`mlflow models serve` on the registered champion answers POST /invocations with top-k titles.

The server runs as a real subprocess on 127.0.0.1 and a free port, with bounded waits; it is always
stopped (its whole process group: the MLflow CLI starts uvicorn as a child).
"""

from __future__ import annotations

import pandas as pd
import pytest
import requests

from genrec.tracking import registry
from genrec.tracking import runs as tracking

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

START_TIMEOUT_S = 240  # the CLI imports MLflow, then the model loads torch and transformers


@pytest.fixture(scope="module")
def server(tmp_path_factory, local_server):
    w = tiny.world(tmp_path_factory.mktemp("serving"))
    tiny.promote(w, "first", seed=7, valid_ranks=[1, 2], test_ranks=[2, None])
    model = registry.champion_uri(w["params"])
    with local_server(lambda port: ["mlflow", "models", "serve", "-m", model, "--env-manager", "local",
                                    "-h", "127.0.0.1", "-p", str(port)],
                      "/ping", w["tmp"] / "serve.log", START_TIMEOUT_S, cwd=w["tmp"],
                      MLFLOW_TRACKING_URI=w["params"].tracking.uri) as url:
        yield {**w, "url": url}


@pytest.mark.slow
def test_invocations_answer_a_batch_of_histories_as_the_model_does_in_process(server):
    import mlflow

    histories = [["Toy Story (1995)", "Heat (1995)"], ["Casino (1995)", "Heat 1995"]]
    response = requests.post(f"{server['url']}/invocations", timeout=60,
                             json={"dataframe_records": [{"history": h} for h in histories], "params": {"k": 3}})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction in predictions:
        assert len(prediction["titles"]) == 3 and set(prediction["titles"]) <= set(tiny.TITLES)
        assert prediction["scores"] == sorted(prediction["scores"], reverse=True)
    assert predictions[0]["unknown"] == [] and predictions[1]["unknown"][0]["title"] == "Heat 1995"
    with tracking.tracking_store(server["params"]):
        local = mlflow.pyfunc.load_model(registry.champion_uri(server["params"]))
    expected = local.predict(pd.DataFrame({"history": histories}), params={"k": 3})
    assert [p["titles"] for p in predictions] == [list(t) for t in expected["titles"]]


@pytest.mark.slow
def test_invocations_refuse_an_empty_history_with_a_clear_400(server):
    response = requests.post(f"{server['url']}/invocations", timeout=60,
                             json={"dataframe_records": [{"history": ["Heat (1995)"]}, {"history": []}]})
    assert response.status_code == 400 and "empty history" in response.json()["message"]
