"""Two DVC experiments compared in the real MLflow UI, in headless Chromium, as a user clicks.

The store holds two pipeline runs that differ in ``train.learning_rate``: once the embedded
sqlite store behind ``make ui``, once the PostgreSQL-backed server with sign-in behind
``make team-up``. From the UI's home page the test clicks the ``nnops`` experiment and must land
on the training runs table (not MLflow's GenAI overview) already showing the param, test
accuracy and fit verdict columns (no column chooser opened), draws val_loss per run in the chart
view, then selects both runs and presses Compare. Screenshots land in the test's temporary
directory (``$NNOPS_SCREENSHOTS`` keeps copies).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from teamserver import TeamServer, team_server  # noqa: F401  (the session fixture)

from conftest import dvc, free_port, make_project, serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXPERIMENTS = {"lr-small": "0.001", "lr-large": "0.01"}  # DVC experiment name -> learning rate
PARAM, METRIC, TAG = "train.learning_rate", "test.accuracy", "fit"
WAIT_S = 60


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose embedded store holds two pipeline runs with different learning rates."""
    root = make_project(tmp_path_factory.mktemp("ui") / "repo", {"train": {"epochs": 2}})
    for name, lr in EXPERIMENTS.items():
        dvc("exp", "run", "-n", name, "-S", f"{PARAM}={lr}", cwd=root)
    return root


@pytest.fixture(scope="module")
def two_team_runs(
    tmp_path_factory: pytest.TempPathFactory,
    team_server: TeamServer,  # noqa: F811
) -> Path:
    """The same two pipeline runs, logged to the team server (PostgreSQL, sign-in)."""
    root = make_project(tmp_path_factory.mktemp("ui-team") / "repo", {"train": {"epochs": 2}})
    for name, lr in EXPERIMENTS.items():
        dvc("exp", "run", "-n", name, "-S", f"{PARAM}={lr}", cwd=root, env=team_server.env())
    return root


def _store_runs(client) -> tuple[str, dict[str, object]]:
    """Return the experiment id and the runs (by name) as the store holds them."""
    experiment = client.get_experiment_by_name("nnops")
    assert experiment is not None, "the pipeline did not create the 'nnops' experiment"
    runs = client.search_runs([experiment.experiment_id])
    return experiment.experiment_id, {run.info.run_name: run for run in runs}


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {WAIT_S} s waiting for {what} at {driver.current_url}")


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel when it is open (it narrows the run table)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def _view_mode(driver, mode: str) -> None:
    """Switch the experiment page between its TABLE, CHART and ARTIFACT views."""
    from selenium.webdriver.common.by import By

    radio = driver.find_element(By.CSS_SELECTOR, f"input[name='runs-view-mode'][value='{mode}']")
    radio.find_element(By.XPATH, "./ancestor::label").click()


def _table(driver) -> dict[str, dict[str, str]]:
    """Read the run table as {run name: {column header: cell text}} from ag-grid's DOM."""
    return driver.execute_script(
        """
        const headers = {};
        document.querySelectorAll('.ag-header-cell[col-id]').forEach(h => {
          headers[h.getAttribute('col-id')] = h.innerText.trim();
        });
        const rows = {};
        document.querySelectorAll('.ag-row[row-index]').forEach(r => {
          const cells = rows[r.getAttribute('row-index')] ||= {};
          r.querySelectorAll('.ag-cell[col-id]').forEach(c => {
            const header = headers[c.getAttribute('col-id')];
            // A run-name cell also holds its colour swatch; its link holds the name alone.
            const link = c.querySelector('a');
            if (header) cells[header] = (link || c).innerText.trim();
          });
        });
        const out = {};
        Object.values(rows).forEach(cells => {
          if (cells['Run Name']) out[cells['Run Name']] = cells;
        });
        return out;
        """
    )


def _open_experiment_from_home(driver, base: str, shots: Path) -> None:
    """Open the UI's home page and click the ``nnops`` experiment, as a user does."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    xpath = "//a[normalize-space(.)='nnops']"
    links = _wait(driver, lambda d: d.find_elements(By.XPATH, xpath), "the nnops experiment link")
    driver.save_screenshot(str(shots / "home.png"))
    links[0].click()
    _wait(driver, lambda d: len(_table(d)) == 2, "both runs in the run table")
    # The click lands on the training runs, not on MLflow's GenAI overview of traces.
    assert "/runs" in driver.current_url, driver.current_url
    assert "workflowType=genai" not in driver.current_url, driver.current_url
    assert "Detect Issues" not in driver.find_element(By.TAG_NAME, "body").text


def test_embedded_store_from_home_page_to_comparison(
    two_runs: Path, browser, tmp_path: Path
) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{two_runs / 'mlflow.db'}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nnops.ui", "--port", str(port)]
    with serving(cmd, f"{base}/health", two_runs, tmp_path / "ui.log"):
        _compare_in_browser(browser, base, client, tmp_path, "embedded")


def test_team_server_from_home_page_to_comparison(
    two_team_runs: Path,
    team_server: TeamServer,  # noqa: F811
    browser,
    tmp_path: Path,
) -> None:
    import base64

    # The browser signs in with the admin's credentials on every request (basic auth).
    token = base64.b64encode(f"{team_server.username}:{team_server.password}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    _compare_in_browser(browser, team_server.url, team_server.client(), tmp_path, "team")


def _compare_in_browser(driver, base: str, client, tmp_path: Path, label: str) -> None:
    from selenium.webdriver.common.by import By

    _, runs = _store_runs(client)
    assert set(runs) == set(EXPERIMENTS), f"runs in the store: {sorted(runs)}"
    _open_experiment_from_home(driver, base, tmp_path)
    time.sleep(0.5)
    _close_assistant(driver)

    # The key columns show without the column chooser: the served page seeds them (mlflow_app).
    _wait(
        driver,
        lambda d: all({PARAM, METRIC, TAG} <= set(r) for r in _table(d).values()),
        "the param, metric and tag columns, shown without opening the column chooser",
    )
    table = _table(driver)
    driver.save_screenshot(str(tmp_path / "runs.png"))
    for name, lr in EXPERIMENTS.items():
        row, run = table[name], runs[name]
        assert float(row[PARAM]) == float(lr), row
        assert float(row[METRIC]) == pytest.approx(run.data.metrics[METRIC], abs=5e-4), row
        assert row[TAG] == run.data.tags[TAG], row

    # The chart view draws the per-epoch curves of both runs (filtered to val_loss).
    _view_mode(driver, "CHART")
    search = _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']"),
        "the chart search box",
    )
    search[0].send_keys("val_loss")
    legends = [f"{name} (val_loss)" for name in EXPERIMENTS]
    _wait(
        driver,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
            and all(legend in d.find_element(By.TAG_NAME, "body").text for legend in legends)
        ),
        "the val_loss chart of both runs",
    )
    driver.save_screenshot(str(tmp_path / "charts.png"))
    _view_mode(driver, "TABLE")
    _wait(driver, lambda d: len(_table(d)) == 2, "the run table again")

    # Select both runs and open MLflow's comparison view from the selection.
    for box in driver.find_elements(
        By.CSS_SELECTOR, "input[aria-label^='Press Space to toggle row selection']"
    ):
        box.click()
    compare = _wait(
        driver,
        lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Compare"],
        "the Compare button",
    )
    compare[0].click()
    _wait(driver, lambda d: "compare-runs" in d.current_url, "the comparison view")
    _wait(
        driver,
        lambda d: "Comparing 2 Runs" in d.find_element(By.TAG_NAME, "body").text,
        "the comparison page",
    )
    _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"),
        "the parallel-coordinates plot",
    )
    text = driver.find_element(By.TAG_NAME, "body").text
    driver.save_screenshot(str(tmp_path / "compare.png"))

    for run in runs.values():
        assert run.info.run_id in driver.current_url or run.info.run_id in text
    lines = text.splitlines()

    def row(key: str) -> str:
        return next(line for line in lines if line.startswith(key + " "))

    # Params, metrics and tags tables of the comparison, one column per run.
    assert set(row(PARAM).split()[1:]) == set(EXPERIMENTS.values()), row(PARAM)
    assert set(row("dvc.exp_name").split()[1:]) == set(EXPERIMENTS), row("dvc.exp_name")
    for run in runs.values():
        assert run.data.tags[TAG] in row(TAG)
    metrics_at = lines.index("Metrics")
    assert "accuracy" in lines[metrics_at : metrics_at + 5], lines[metrics_at : metrics_at + 5]
    shots = [tmp_path / f"{name}.png" for name in ("home", "runs", "charts", "compare")]
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot} looks empty"
    keep = os.environ.get("NNOPS_SCREENSHOTS")
    if keep:
        folder = Path(keep) / label
        folder.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy2(shot, folder / shot.name)
    print(json.dumps({"screenshots": [str(shot) for shot in shots]}))
