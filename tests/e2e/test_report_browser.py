"""The run report in a real headless Chromium: every section is there and every image loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nnops.report import SECTIONS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def open_report(driver, html: Path, shot: Path) -> dict:
    """Load the report from disk, wait for its images and return what the page holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(html.resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"
        )
    )
    driver.execute_script("document.body.style.zoom = '1'")
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 100, 1000), 16000))
    driver.save_screenshot(str(shot))
    return driver.execute_script(
        """
        return {
          sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
          images: Array.from(document.images).map(i => ({
            alt: i.alt, width: i.naturalWidth, height: i.naturalHeight,
            inline: i.src.startsWith('data:image/png;base64,')})),
          resources: performance.getEntriesByType('resource').map(r => r.name),
          title: document.title,
          text: document.body.innerText,
        };
        """
    )


def _check(page: dict, expected_images: set[str]) -> None:
    assert page["sections"] == list(SECTIONS)
    alts = {img["alt"] for img in page["images"]}
    assert alts == expected_images
    for img in page["images"]:
        assert img["inline"], img["alt"]
        assert img["width"] > 0 and img["height"] > 0, f"image {img['alt']!r} did not load"
    # Self-contained: the page fetched nothing besides itself.
    assert [r for r in page["resources"] if not r.startswith("data:")] == []


def test_report_of_the_default_run_renders(reproduced_project: Path, browser, tmp_path: Path):
    html = reproduced_project / "reports" / "report.html"
    copy = tmp_path / "report.html"
    shutil.copy(html, copy)  # open a copy: nothing next to it that it could lean on
    page = open_report(browser, copy, tmp_path / "report.png")
    _check(
        page,
        {"learning curves", "confusion matrix", "attribution grid", "misclassified examples"},
    )
    text = page["text"]
    assert "nnops run report: digits" in page["title"]
    for phrase in ("Data validation", "Fit verdict", "Recommended action", "Confusion matrix",
                   "Lineage", "MLflow run id", "processed data hash",
                   # the run's params are the committed params.yaml (no experiment overrides)
                   "All params are as committed"):  # fmt: skip
        assert phrase.lower() in text.lower(), phrase
    assert (tmp_path / "report.png").stat().st_size > 10_000
