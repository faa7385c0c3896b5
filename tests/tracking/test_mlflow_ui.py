"""The MLflow UI in a real browser: both runs with HR@10 and NDCG@10 columns, and the `champion` alias.

Starts `mlflow ui` on 127.0.0.1 (free port, one worker) and drives Debian's headless Chromium
(/usr/bin/chromium, never a downloaded browser) with Playwright. The store is seeded here through the
MLflow client (SQLite in tmp: a GenRec run and a P5 run in the project's experiment, metrics named as
the evaluate stage logs them, a registered version with the alias) unless GENREC_UI_STORE names a
real one (e.g. sqlite:///mlflow.db after `make repro`). The screenshot (runs table above the
registered model page) goes to GENREC_UI_SCREENSHOT, else tmp.

Needs the Debian packages `chromium` (and `chromium-driver` for Selenium users) and the pip package
`playwright`. Skipped with the reason when they are missing, except under CI=true where it must run.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from genrec.tracking import registry
from genrec.tracking import runs as tracking
from genrec.tracking.model_card import model_card
from genrec.config.params import Params, TrackingParams

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRICS = ("test.hr_at_10", "test.ndcg_at_10")  # HR@10 and NDCG@10 as `genrec evaluate` logs them
SEEDED = {"genrec": {"test.hr_at_10": 0.0213, "test.ndcg_at_10": 0.0101, "test.hr_at_5": 0.0115},
          "p5": {"test.hr_at_10": 0.0344, "test.ndcg_at_10": 0.0172, "test.hr_at_5": 0.0197}}
START_TIMEOUT_S = 240
PAGE_TIMEOUT_MS = 90_000
VIEWPORT = (1800, 640)  # wide enough that the grid renders every selected column


def require_browser() -> None:
    missing = [] if CHROMIUM.exists() else [f"{CHROMIUM} (apt-get install -y chromium chromium-driver)"]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the pip package playwright")
    if missing and os.environ.get("CI") != "true":
        pytest.skip("browser test needs " + " and ".join(missing))
    if missing:
        pytest.fail("CI=true but the browser test lacks " + " and ".join(missing))


def seed_store(params: Params) -> None:
    """A GenRec and a P5 run with test metrics, and `genrec-<dataset>` version 1 holding `champion`."""
    import mlflow

    for family, metrics in SEEDED.items():
        with tracking.start_or_resume_run(params, run_name=family) as run:
            mlflow.set_tag("genrec.family", family)
            mlflow.log_metrics(metrics)
            if family == "genrec":
                genrec_run = run
    mlc = tracking.mlflow_client(params)
    name = registry.registered_model_name(params)
    mlc.create_registered_model(name)
    tags = {"valid.ndcg_at_10": "0.0123", "backbone": "smollm2-135m-instruct", "backbone_sha256": "ab" * 32,
            "dataset": params.dataset, "split_fingerprint": "cd" * 32}
    test = {"users": 610, **{key.removeprefix("test."): value for key, value in SEEDED["genrec"].items()}}
    card = model_card(name=name, version="1", tags=tags, config={"params": {"dataset": params.dataset}}, adapter=None,
                      template=None, valid={}, test=test, baselines={}, data_hashes={}, run_id=genrec_run.info.run_id)
    version = mlc.create_model_version(name, source=f"{genrec_run.info.artifact_uri}/model",
                                       run_id=genrec_run.info.run_id, tags=tags, description=card)
    mlc.set_registered_model_alias(name, registry.CHAMPION, version.version)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, local_server):
    require_browser()
    tmp = tmp_path_factory.mktemp("ui")
    store = os.environ.get("GENREC_UI_STORE") or f"sqlite:///{tmp / 'mlflow.db'}"
    params = Params(dataset=os.environ.get("GENREC_UI_DATASET", "ml-latest-small"), tracking=TrackingParams(uri=store))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if not os.environ.get("GENREC_UI_STORE"):
        seed_store(params)
    with local_server(lambda port: ["mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                                    "--port", str(port), "--workers", "1"],
                      "/health", tmp / "ui.log", START_TIMEOUT_S) as url:
        yield {"url": url, "params": params, "tmp": tmp}


def latest_runs(params: Params) -> dict:
    """The newest GenRec and P5 run of the project's experiment, by `genrec.family` tag."""
    mlc = tracking.mlflow_client(params)
    experiment = mlc.get_experiment_by_name(tracking.experiment_name(params))
    assert experiment is not None, f"no experiment {tracking.experiment_name(params)} in {params.tracking.uri}"
    runs = {}
    for family in ("genrec", "p5"):
        found = mlc.search_runs([experiment.experiment_id], f"tags.`genrec.family` = '{family}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
        assert found, f"no {family} run in {experiment.name}"
        runs[family] = found[0]
    return {"experiment_id": experiment.experiment_id, **runs}


@pytest.mark.slow
def test_runs_table_and_registered_model_alias_in_chromium(ui):
    from playwright.sync_api import sync_playwright

    runs = latest_runs(ui["params"])
    name = registry.registered_model_name(ui["params"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
            # MLflow 3.17 opens in its GenAI view with an assistant panel beside the table (the grid then
            # leaves columns out of the page for lack of width); a person clicks "Model training" and
            # closes the panel once, both kept in localStorage: preset that.
            context.add_init_script("localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
                                    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            runs_png = check_runs_table(page, ui["url"], runs)
            model_png = check_alias(page, ui["url"], name)
            card_png = check_model_card(page, ui["url"], name, champion_version(ui["params"]))
            path = Path(os.environ.get("GENREC_UI_SCREENSHOT") or ui["tmp"] / "mlflow_ui.png")
            save_side_by_side(page, [runs_png, model_png, card_png], path)
        finally:
            browser.close()
    assert path.stat().st_size > 20_000


def check_runs_table(page, url: str, runs: dict) -> bytes:
    """Open the experiment's runs table, show the HR@10/NDCG@10 columns the way a user does, check both runs."""
    page.goto(f"{url}/#/experiments/{runs['experiment_id']}/runs", wait_until="domcontentloaded")
    for family in ("genrec", "p5"):
        page.get_by_text(runs[family].info.run_name, exact=True).first.wait_for()
    for metric in METRICS:
        show_column(page, metric)
    page.keyboard.press("Escape")
    headers = set(page.locator("[role=columnheader]").all_inner_texts())
    assert set(METRICS) <= headers, sorted(headers)
    grid = page.inner_text("body")
    for family in ("genrec", "p5"):
        assert runs[family].info.run_name in grid
        if not os.environ.get("GENREC_UI_STORE"):
            for metric in METRICS:
                assert str(SEEDED[family][metric]) in grid, (family, metric, grid)
    return page.screenshot()


def show_column(page, metric: str) -> None:
    """Tick `metric` in the Columns menu and wait for its header (a click during a re-render can be lost)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    header = page.locator("[role=columnheader]").filter(has_text=metric)
    for _ in range(3):
        item = page.get_by_text(metric, exact=True).first
        if not item.is_visible():
            page.get_by_role("button", name="Columns", exact=True).click()  # not "Show more columns (N total)"
        item.click()
        try:
            header.first.wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"column {metric} did not appear after ticking it in the Columns menu")


def check_alias(page, url: str, name: str) -> bytes:
    """The registered model page lists a version carrying the `@ champion` alias."""
    page.goto(f"{url}/#/models/{name}", wait_until="domcontentloaded")
    page.get_by_text(registry.CHAMPION, exact=False).first.wait_for()
    rows = [row for row in page.locator("[role=row]").all_inner_texts() if "Version" in row and "@" in row]
    assert any(registry.CHAMPION in row for row in rows), page.inner_text("body")[-2000:]
    return page.screenshot()


def champion_version(params: Params) -> str:
    mlc = tracking.mlflow_client(params)
    return mlc.get_model_version_by_alias(registry.registered_model_name(params), registry.CHAMPION).version


def check_model_card(page, url: str, name: str, version: str) -> bytes:
    """The champion's version page shows its model card (the version description): lineage and metrics."""
    page.goto(f"{url}/#/models/{name}/versions/{version}", wait_until="domcontentloaded")
    page.get_by_text("Backbone sha256", exact=True).first.wait_for()
    body = page.inner_text("body")
    for heading in ("Lineage", "Split fingerprint", "Metrics"):
        assert heading in body, (heading, body[-2000:])
    return page.screenshot(full_page=True)


def save_side_by_side(page, images: list[bytes], path: Path) -> None:
    """Stack the screenshots in one page (rendered by the same browser) and save it as one PNG."""
    tags = "".join(f'<img style="display:block;width:{VIEWPORT[0]}px;border-bottom:4px solid #888" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}">' for png in images)
    page.set_viewport_size({"width": VIEWPORT[0], "height": VIEWPORT[1]})
    page.set_content(f'<html><body style="margin:0">{tags}</body></html>')
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
