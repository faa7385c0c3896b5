"""`mlflow models serve` on the registered champion answers POST /invocations with top-k titles.

The server runs as a real subprocess on 127.0.0.1 and a free port, with bounded waits; it is always
stopped (its whole process group: the MLflow CLI starts uvicorn as a child).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from genrec.tracking import registry
from genrec.tracking import runs as tracking

import tiny_genrec as tiny  # tests/ is on pytest's pythonpath (pyproject.toml)

START_TIMEOUT_S = 240  # the CLI imports MLflow, then the model loads torch and transformers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    w = tiny.world(tmp_path_factory.mktemp("serving"))
    tiny.promote(w, "first", seed=7, valid_ranks=[1, 2], test_ranks=[2, None])
    port, bin_dir = free_port(), Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": w["params"].tracking.uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_WAIT_POLICY": "PASSIVE", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (w["tmp"] / "serve.log").open("w")
    proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", registry.champion_uri(w["params"]),
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=w["tmp"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not up (exit {proc.poll()}):\n{(w['tmp'] / 'serve.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {**w, "url": url}
    finally:
        stop(proc)
        log.close()


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


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
