"""The validate stage's library: check the raw table with a Great Expectations suite built in code.

The way through, one module per job:

1. :mod:`nnops.data_profile` condenses the raw table into small tables (columns, rows, features,
   classes), with the train/test drift from :mod:`nnops.drift`;
2. :mod:`nnops.expectations` builds the expectations on those tables and runs them with GX;
3. :mod:`nnops.validation_report` turns GX's results into ``validation.json``, one error line per
   failed expectation, and the HTML page (from ``templates/validation.html.j2``).

:func:`validate` runs the three; :func:`write_reports` writes the stage's outputs.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nnops.catalog import PROFILE_JSON, VALIDATION_HTML, VALIDATION_JSON
from nnops.config import Params
from nnops.errors import NnopsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    """What the validate stage hands over: the compact report and the training profile."""

    report: dict[str, Any]
    profile: dict[str, Any]


def import_gx_in_background() -> threading.Thread:
    """Start importing Great Expectations in a daemon thread and return the thread.

    The import takes seconds; reading and profiling the raw table (numpy and pyarrow, which
    release the GIL) can run meanwhile. :func:`nnops.expectations.run_suites` imports GX as
    usual, waiting for this import to finish; an import error surfaces there.
    """

    def _import() -> None:
        try:
            importlib.import_module("great_expectations")
        except Exception:  # reported again, in the main thread, by run_suites
            log.debug("background import of great_expectations failed", exc_info=True)

    thread = threading.Thread(target=_import, name="import-gx", daemon=True)
    thread.start()
    return thread


def validate(frame: pd.DataFrame, meta: dict[str, Any], params: Params) -> Validation:
    """Profile the raw table, run the expectations and build the report and training profile.

    Args:
        frame: the raw table (``data/raw/data.parquet``).
        meta: the raw metadata (``data/raw/meta.json``).
        params: the project params (``split``, ``validate`` and ``data.label_column`` are read).
    """
    from nnops.data_profile import profile, reference_profile
    from nnops.expectations import build_checks, run_suites
    from nnops.validation_report import summarize

    prof = profile(frame, meta, params.split, params.validation)
    checks = build_checks(prof, params.validation, meta)
    report = summarize(prof, checks, run_suites(prof, checks), meta)
    ref = reference_profile(prof, params.validation, meta, params.data.label_column)
    return Validation(report=report, profile=ref)


def write_reports(result: Validation, out: str | Path) -> None:
    """Write ``validation.json``, ``profile.json`` and ``validation.html`` into ``out``.

    Args:
        result: the report and profile from :func:`validate`.
        out: the report directory (``reports/validation``).
    """
    from nnops.data_profile import profile_json
    from nnops.io import write_json, write_text
    from nnops.validation_report import render_html

    out = Path(out)
    write_json(out / VALIDATION_JSON, result.report)
    write_text(out / PROFILE_JSON, profile_json(result.profile))
    write_text(out / VALIDATION_HTML, render_html(result.report))


def require_success(report: dict[str, Any], raw: str | Path, out: str | Path) -> None:
    """Fail the stage, naming the count and the HTML report, if any expectation failed.

    Args:
        report: the compact report.
        raw: the raw data directory, for the message.
        out: the report directory, for the message.
    """
    if not report["success"]:
        raise NnopsError(
            f"{report['n_failed']} of {report['n_expectations']} expectations failed on "
            f"{raw}; see {Path(out) / VALIDATION_HTML}"
        )
    log.info("all %d expectations passed -> %s", report["n_expectations"], out)
