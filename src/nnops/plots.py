"""The one home of matplotlib: a headless pyplot and PNG writers shared by every figure."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from nnops.io import atomic_path

DPI = 110


def pyplot() -> Any:
    """Return ``matplotlib.pyplot`` on the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, close it and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path
