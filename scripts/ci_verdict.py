"""Print the fit verdict and the register decision of the last pipeline run as Markdown.

Reads ``reports/metrics.json`` (required: ``test``, ``fit``), ``reports/evaluation.json``
(``evidence``, ``recommended_action``) and ``reports/registry.json`` (``registered``, ``version``,
``alias``, ``reason``), the last two optional, as the evaluate and register stages write them.
Used by ``scripts/ci_report.sh``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        sys.exit(f"ci_verdict: error: {path}: not valid JSON ({exc})")


def render(reports: Path) -> str:
    """Return the verdict section.

    Args:
        reports: the ``reports/`` directory of a reproduced workspace.
    """
    metrics = _load(reports / "metrics.json")
    fit = metrics.get("fit") or {}
    verdict = fit.get("verdict")
    if verdict is None:
        sys.exit(f"ci_verdict: error: {reports / 'metrics.json'}: no fit.verdict")
    lines = [f"**{verdict}**"]
    facts = [
        f"{key} = {fit[key]:.4g}" if isinstance(fit[key], float) else f"{key} = {fit[key]}"
        for key in ("accuracy_gap", "loss_gap", "best_epoch", "last_epoch", "val_loss_rise")
        if key in fit
    ]
    test = metrics.get("test") or {}
    if "accuracy" in test:
        facts.insert(0, f"test accuracy = {test['accuracy']:.4f}")
    if facts:
        lines.append("(" + ", ".join(facts) + ")")
    # evaluate's diagnosis in words: the evidence list and one recommended action.
    evaluation = _load(reports / "evaluation.json")
    evidence = evaluation.get("evidence") or []
    action = evaluation.get("recommended_action")
    if evidence or action:
        lines.append("")
    lines.extend(f"- {reason}" for reason in evidence)
    if action:
        lines.append(f"- recommended action: {action}")
    registry = _load(reports / "registry.json")
    if registry:
        decision = "registered" if registry.get("registered") else "not registered"
        if registry.get("registered") and registry.get("version") is not None:
            decision += f" as version {registry['version']}"
        if registry.get("alias"):
            decision += f", alias @{registry['alias']}"
        reason = registry.get("reason")
        lines.append("")
        lines.append(f"Register gate: {decision}" + (f" ({reason})" if reason else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(Path(sys.argv[1] if len(sys.argv) > 1 else "reports")))
