"""The MLflow server apps nnops starts: MLflow's own, opening on model training, not GenAI.

MLflow 3's UI opens every experiment on its GenAI views (traces, latency) until the user finds the
"Model training" switch in the side bar; the switch is remembered in the browser's local storage.
These apps serve MLflow's UI unchanged except that a browser which never chose sets that switch
to model training, so a click on the ``nnops`` experiment lands on the runs table. A user who
switches to GenAI keeps that choice.

The runs table likewise opens with nnops' key columns: test accuracy, the fit verdict and the
params whose values differ across the experiment's runs. The UI keeps each experiment page's
state (``selectedColumns`` among it) in local storage under ``STATE_KEY``, written on the first
visit; for each experiment a browser has no state for yet, the served page writes one whose
column selection is MLflow's default plus these columns. A browser that visited before keeps its
own (the column chooser still changes it). Registered as ``mlflow.app`` entry points (pyproject):
``nnops`` (``make ui``) and ``nnops-auth`` (MLflow's basic-auth app, ``make team-up``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# The UI's own storage key and value format for its workflow switch (MLflow 3.x).
WORKFLOW_KEY = "mlflow.workflowType_v1"
TRAINING_DEFAULT = (
    f"<script>try{{if(!localStorage.getItem('{WORKFLOW_KEY}'))"
    f"localStorage.setItem('{WORKFLOW_KEY}','\"machine_learning\"')}}catch(e){{}}</script>"
)

# The experiment page's persisted state (MLflow 3.x LocalStorageStore, ExperimentPage scope);
# ``{ids}`` is JSON.stringify of the page's sorted experiment ids, e.g. ["1"].
STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{ids}-ReactComponentState"
# The UI's own default column selection, then nnops' key metric and tag (column ids: type.`name`).
UI_DEFAULT_COLUMNS = ("attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`")
KEY_METRICS = ("test.accuracy",)
KEY_TAGS = ("fit",)
FALLBACK_PARAMS = ("train.learning_rate", "train.epochs")  # shown when no param varies yet
MAX_EXPERIMENTS, MAX_RUNS = 100, 500


def key_columns(runs: Iterable[Any]) -> list[str]:
    """Return the run-table column ids to show for these runs (MLflow ``Run`` objects).

    MLflow's default columns, then each key metric and tag some run has, then the params whose
    values differ between runs (a param one run lacks counts as differing), sorted by name;
    ``FALLBACK_PARAMS`` when none differs (a single run). An empty list when there is no run.
    """
    runs = list(runs)
    if not runs:
        return []
    params = [run.data.params for run in runs]
    names = sorted({name for p in params for name in p})
    varying = [n for n in names if len({p.get(n) for p in params}) > 1]
    varying = varying or [n for n in FALLBACK_PARAMS if n in names]
    metrics = [m for m in KEY_METRICS if any(m in run.data.metrics for run in runs)]
    tags = [t for t in KEY_TAGS if any(t in run.data.tags for run in runs)]
    return [
        *UI_DEFAULT_COLUMNS,
        *(f"metrics.`{m}`" for m in metrics),
        *(f"params.`{p}`" for p in varying),
        *(f"tags.`{t}`" for t in tags),
    ]


def column_script(columns: Mapping[str, list[str]]) -> str:
    """Return the ``<script>`` that seeds each experiment's column selection if it has none.

    Args:
        columns: experiment id -> column ids (``key_columns``); empty lists are left out.
    """
    states = {
        STATE_KEY.format(ids=json.dumps([exp_id])): json.dumps({"selectedColumns": cols})
        for exp_id, cols in columns.items()
        if cols
    }
    if not states:
        return ""
    data = json.dumps(states).replace("<", "\\u003c")  # no "</script>" inside the script
    return (
        f"<script>try{{var s={data};for(var k in s)"
        "if(!localStorage.getItem(k))localStorage.setItem(k,s[k])}catch(e){}</script>"
    )


def store_columns() -> dict[str, list[str]]:
    """Return ``key_columns`` of each active experiment in the server's tracking store."""
    from mlflow.entities import ViewType
    from mlflow.server.handlers import _get_tracking_store

    store = _get_tracking_store()
    experiments = store.search_experiments(ViewType.ACTIVE_ONLY, max_results=MAX_EXPERIMENTS)
    return {
        exp.experiment_id: key_columns(
            store.search_runs([exp.experiment_id], None, ViewType.ACTIVE_ONLY, MAX_RUNS)
        )
        for exp in experiments
    }


def open_on_training(
    flask_app: Any, columns: Callable[[], Mapping[str, list[str]]] = store_columns
) -> Any:
    """Serve the UI's ``index.html`` with the training and column defaults added; return the app.

    Args:
        flask_app: MLflow's Flask app (``mlflow.server.app``).
        columns: called on each page load for experiment id -> column ids to seed.
    """
    from flask import Response

    index = os.path.join(flask_app.static_folder, "index.html")
    original = flask_app.view_functions["serve"]

    def serve() -> Any:
        if not os.path.exists(index):
            return original()
        with open(index, encoding="utf-8") as fh:
            html = fh.read()
        try:
            seed = column_script(columns())
        except Exception as err:  # the UI still opens, with MLflow's own columns
            log.warning("run-table columns not seeded: %s", err)
            seed = ""
        return Response(
            html.replace("<head>", "<head>" + TRAINING_DEFAULT + seed, 1), mimetype="text/html"
        )

    flask_app.view_functions["serve"] = serve
    return flask_app


def _served(flask_app: Any) -> Any:
    from mlflow.server import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app


def create_app() -> Any:
    """MLflow's tracking server and UI (``mlflow server --app-name nnops``)."""
    from mlflow.server import app

    return _served(open_on_training(app))


def create_auth_app() -> Any:
    """MLflow's basic-auth app (``mlflow server --app-name nnops-auth``)."""
    from mlflow.server import app
    from mlflow.server.auth import create_app as create_basic_auth_app

    return create_basic_auth_app(open_on_training(app))
