"""The MLflow server apps nnops starts: MLflow's own, opening on model training, not GenAI.

MLflow 3's UI opens every experiment on its GenAI views (traces, latency) until the user finds the
"Model training" switch in the side bar; the switch is remembered in the browser's local storage.
These apps serve MLflow's UI unchanged except that a browser which never chose sets that switch
to model training, so a click on the ``nnops`` experiment lands on the runs table. A user who
switches to GenAI keeps that choice. Registered as ``mlflow.app`` entry points (pyproject):
``nnops`` (``make ui``) and ``nnops-auth`` (MLflow's basic-auth app, ``make team-up``).
"""

from __future__ import annotations

import os
from typing import Any

# The UI's own storage key and value format for its workflow switch (MLflow 3.x).
WORKFLOW_KEY = "mlflow.workflowType_v1"
TRAINING_DEFAULT = (
    f"<script>try{{if(!localStorage.getItem('{WORKFLOW_KEY}'))"
    f"localStorage.setItem('{WORKFLOW_KEY}','\"machine_learning\"')}}catch(e){{}}</script>"
)


def open_on_training(flask_app: Any) -> Any:
    """Serve the UI's ``index.html`` with the model-training default added; return the app.

    Args:
        flask_app: MLflow's Flask app (``mlflow.server.app``).
    """
    from flask import Response

    index = os.path.join(flask_app.static_folder, "index.html")
    original = flask_app.view_functions["serve"]

    def serve() -> Any:
        if not os.path.exists(index):
            return original()
        with open(index, encoding="utf-8") as fh:
            html = fh.read()
        return Response(
            html.replace("<head>", "<head>" + TRAINING_DEFAULT, 1), mimetype="text/html"
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
