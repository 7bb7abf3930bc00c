"""The users' CI workflow is valid, runs the same scripts as .ci/run, and its report is right."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, project_env, run

pytestmark = pytest.mark.unit

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
CI_RUN = REPO / ".ci" / "run"
CHECK_JSONSCHEMA = str(BIN / "check-jsonschema")

# The shared steps: each must appear in both the workflow and .ci/run.
SHARED_STEPS = ("make lint", "make test", "scripts/ci_pipeline.sh", "scripts/ci_report.sh")


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _run_lines(workflow: dict) -> str:
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    return "\n".join(s.get("run", "") for s in steps)


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workflow_matches_github_schema(tmp_path: Path) -> None:
    ok = _schema_check(WORKFLOW)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The checker really checks: a job without runs-on is rejected.
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:", 1))
    bad = _schema_check(broken)
    assert bad.returncode != 0
    assert "runs-on" in bad.stdout + bad.stderr


def test_workflow_and_ci_run_share_the_same_scripts() -> None:
    workflow_runs = _run_lines(_workflow())
    ci_run = CI_RUN.read_text()
    for step in SHARED_STEPS:
        assert step in workflow_runs, f"{WORKFLOW.name} does not run {step!r}"
        assert step in ci_run, f".ci/run does not run {step!r}"
    for script in re.findall(r"scripts/[\w.]+", workflow_runs + ci_run):
        assert (REPO / script).is_file(), f"{script} is referenced but missing"


def test_workflow_reports_to_summary_and_pull_request() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in triggers and "push" in triggers
    (job,) = workflow["jobs"].values()
    assert job["timeout-minutes"] <= 90
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0, "the report needs the base branch's history"
    report = next(s for s in job["steps"] if "ci_report.sh" in s.get("run", ""))
    assert "$GITHUB_STEP_SUMMARY" in report["run"]
    comment = next(s for s in job["steps"] if "gh pr comment" in s.get("run", ""))
    assert comment["if"] == "github.event_name == 'pull_request'"
    assert "pull-requests" in workflow["permissions"]


def test_workflow_expressions_use_known_contexts() -> None:
    text = WORKFLOW.read_text()
    workflow = _workflow()
    defined_env = set(workflow.get("env", {}))
    for job in workflow["jobs"].values():
        defined_env |= set(job.get("env", {}))
        for step in job["steps"]:
            defined_env |= set(step.get("env", {}))
    contexts = {"github", "env", "secrets", "vars", "runner", "job", "steps", "matrix", "inputs"}
    expressions = re.findall(r"\$\{\{(.*?)\}\}", text)
    assert expressions
    for expr in expressions:
        for name in re.findall(r"(?<![\w.'])([a-z_]+)\.", expr):
            assert name in contexts, f"unknown context {name!r} in ${{{{{expr}}}}}"
        for var in re.findall(r"\benv\.(\w+)", expr):
            assert var in defined_env, f"env.{var} is not defined in the workflow"


@pytest.mark.parametrize(
    "script", ["ci_pipeline.sh", "ci_report.sh", "ensure_chromium.sh"], ids=str
)
def test_shell_scripts_parse(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def _write_reports(root: Path) -> dict:
    """Write reports/ as the evaluate and register stages do, with the functions they use."""
    import numpy as np

    from conftest import repo_params
    from nnops import evaluate as ev
    from nnops import register as reg
    from nnops import scoring
    from nnops.diagnose import diagnose
    from nnops.io import write_json

    params, names = repo_params(), ["a", "b", "c"]
    y = np.tile([0, 1, 2], 20)
    proba = np.full((len(y), 3), 0.05)
    proba[np.arange(len(y)), y] = 0.9
    proba[0] = [0.1, 0.8, 0.1]  # one mistake
    scores = {s: scoring.score_split(y, proba, names) for s in scoring.SPLITS}
    history = {"epoch": [1.0, 2.0, 3.0], "loss": [0.9, 0.5, 0.3], "val_loss": [0.9, 0.52, 0.33],
               "accuracy": [0.6, 0.9, 0.98], "val_accuracy": [0.6, 0.88, 0.98]}  # fmt: skip
    fit = diagnose(
        scores["train"].headline(), scores["val"].headline(), history, params.evaluate.fit
    )
    metrics = {s: scores[s].headline() for s in scoring.SPLITS} | {"fit": fit.metrics()}
    test = metrics["test"]["accuracy"]
    cand = reg.Candidate("nnops-mlp", "3", "r1", metrics, (proba, y))
    champion = {"version": "2", "accuracy": test - 0.01, "candidate_accuracy": test}
    written = {
        "metrics": metrics,
        "evaluation": ev.evaluation_report(scores, names, fit, None),
        "registry": reg.decision_record(cand, params.registry, "2", champion),
    }
    (root / "reports").mkdir(exist_ok=True)
    for name, content in written.items():
        write_json(root / "reports" / f"{name}.json", content)
    return written


def test_verdict_section_names_verdict_evidence_and_gate(tmp_path: Path) -> None:
    written = _write_reports(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ci_verdict.py"), str(tmp_path / "reports")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    metrics, evaluation, registry = written["metrics"], written["evaluation"], written["registry"]
    assert f"**{metrics['fit']['verdict']}**" in out
    assert f"test accuracy = {metrics['test']['accuracy']:.4f}" in out
    assert evaluation["evidence"] and evaluation["recommended_action"]
    for reason in evaluation["evidence"]:
        assert f"- {reason}" in out
    assert f"- recommended action: {evaluation['recommended_action']}" in out
    assert registry["promoted"] and registry["reason"].startswith("promoted: passed")
    assert f"registered as version 3, alias @champion ({registry['reason']})" in out


def test_verdict_section_fails_without_a_verdict(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.9}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ci_verdict.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "metrics.json: no fit.verdict" in proc.stderr


STAGE = """\
stages:
  evaluate:
    cmd: python evaluate.py
    params: [train.learning_rate]
    metrics:
      - reports/metrics.json:
          cache: false
"""

# Stands in for the real stages: the report only reads params.yaml and the reports/ files.
EVALUATE = """\
import json, pathlib, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["learning_rate"]
acc = {0.001: 0.9, 0.01: 0.95}[lr]
pathlib.Path("reports").mkdir(exist_ok=True)
verdict = "good fit" if acc > 0.92 else "underfitting"
metrics = {"test": {"accuracy": acc}, "fit": {"verdict": verdict}}
pathlib.Path("reports/metrics.json").write_text(json.dumps(metrics))
"""


@pytest.mark.pipeline
def test_ci_report_on_a_real_repo_with_two_commits(tmp_path: Path) -> None:
    env = project_env()
    dvc = str(BIN / "dvc")
    (tmp_path / "scripts").mkdir()
    for name in ("ci_report.sh", "ci_verdict.py"):
        (tmp_path / "scripts" / name).write_bytes((REPO / "scripts" / name).read_bytes())
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / "evaluate.py").write_text(EVALUATE)
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 0.001\n")
    run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, env=env)
    run([dvc, "init", "-q"], cwd=tmp_path, env=env)
    run([dvc, "repro", "-q"], cwd=tmp_path, env=env)
    run(["git", "add", "-A"], cwd=tmp_path, env=env)
    run(["git", "commit", "-qm", "baseline"], cwd=tmp_path, env=env)
    run(["git", "checkout", "-qb", "feature"], cwd=tmp_path, env=env)
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 0.01\n")
    run([dvc, "repro", "-q"], cwd=tmp_path, env=env)
    run(["git", "commit", "-qam", "faster learning"], cwd=tmp_path, env=env)

    report = run(["bash", "scripts/ci_report.sh", "main"], cwd=tmp_path, env=env).stdout
    assert "**good fit**" in report
    metrics_rows = [line for line in report.splitlines() if "test.accuracy" in line]
    assert metrics_rows, report
    assert re.search(r"0\.9\s*\|\s*0\.95\s*\|\s*0\.05", metrics_rows[0]), metrics_rows[0]
    params_rows = [line for line in report.splitlines() if "train.learning_rate" in line]
    assert params_rows and "0.001" in params_rows[0] and "0.01" in params_rows[0], report

    # A base the clone does not have falls back to HEAD and says so; nothing changed there.
    fallback = run(["bash", "scripts/ci_report.sh", "origin/nope"], cwd=tmp_path, env=env).stdout
    assert "`origin/nope` was not found" in fallback
    assert "No params changed." in fallback

    (tmp_path / "reports" / "metrics.json").unlink()
    missing = run(["bash", "scripts/ci_report.sh", "main"], cwd=tmp_path, env=env, check=False)
    assert missing.returncode != 0
    assert "reports/metrics.json is missing" in missing.stderr


def test_make_ui_and_server_call_the_launcher_on_localhost(tmp_path: Path) -> None:
    from nnops.ui import server_command, ui_command

    makefile = (REPO / "Makefile").read_text()
    recipes = dict(re.findall(r"^(ui|server):.*\n\t(.+)$", makefile, flags=re.M))
    assert "python -m nnops.ui ui" in recipes["ui"]
    assert "python -m nnops.ui server" in recipes["server"]

    ui = ui_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000, tmp_path / "art")
    assert ui[ui.index("--backend-store-uri") + 1] == "sqlite:////x/mlflow.db"
    assert ui[ui.index("--host") + 1] == "127.0.0.1"
    server = server_command(tmp_path / "store", "127.0.0.1", 5001)
    assert server[3] == "server" and "--serve-artifacts" in server
    backend = server[server.index("--backend-store-uri") + 1]
    assert backend == f"sqlite:///{(tmp_path / 'store' / 'mlflow.db').resolve()}"
    artifacts = server[server.index("--artifacts-destination") + 1]
    assert artifacts == (tmp_path / "store" / "artifacts").resolve().as_uri()
    assert server[server.index("--port") + 1] == "5001"


def test_dvc_remote_steps_run_only_when_a_remote_is_configured() -> None:
    job = _workflow()["jobs"]["pipeline"]
    assert job["env"]["DVC_REMOTE_URL"] == "${{ secrets.DVC_REMOTE_URL }}"
    steps = {s["name"]: s for s in job["steps"] if "name" in s}
    pull = next(s for s in steps.values() if "dvc pull --run-cache" in s.get("run", ""))
    push = next(s for s in steps.values() if "dvc push --run-cache" in s.get("run", ""))
    assert pull["if"] == "env.DVC_REMOTE_URL != ''"
    assert push["if"] == "env.DVC_REMOTE_URL != '' && github.event_name == 'push'"
    names = list(steps)
    pipeline = next(n for n in names if "scripts/ci_pipeline.sh" in steps[n].get("run", ""))
    assert names.index(pull["name"]) < names.index(pipeline) < names.index(push["name"])
