"""Shared fixtures: a quiet environment and real temporary copies of the repository."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from nnops.stage import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_WARM_HOME = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Stages started by the tests share one warm server directory (``nnops.warm``), the
    session's own: its servers are stopped when the session ends."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the workers inherit the controller's directory
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="nnops-warm-tests-"))
    os.environ["NNOPS_WARM_DIR"] = str(home)
    config.stash[_WARM_HOME] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_WARM_HOME, None)
    if home is not None:
        from nnops.warm_server import stop_servers

        stop_servers(home)
        shutil.rmtree(home, ignore_errors=True)


# Under `make test` (pytest-xdist, --dist loadscope) each test module is one unit of work, so its
# module fixtures are built on one worker; the tests that use the session's team server (their
# node ids say "team_server") are one unit too, so PostgreSQL and the signed-in server start once,
# not once per worker. The controller schedules from node ids alone, hence the naming rule, which
# pytest_collection_modifyitems enforces.
TEAM_UNIT = "team_server"


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return TEAM_UNIT if TEAM_UNIT in nodeid else nodeid.split("::")[0]

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unnamed = [
        i.nodeid for i in items if "team_server" in i.fixturenames and TEAM_UNIT not in i.nodeid
    ]
    if unnamed:
        raise pytest.UsageError(
            f"{', '.join(unnamed)}: a test using the team_server fixture needs {TEAM_UNIT!r} in "
            "its module or test name, so that one worker runs all of them (tests/conftest.py)"
        )


def project_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH, no telemetry, no inherited store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(QUIET_ENV)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONHASHSEED="0",
        GIT_AUTHOR_NAME="nnops tests",
        GIT_AUTHOR_EMAIL="tests@nnops.local",
        GIT_COMMITTER_NAME="nnops tests",
        GIT_COMMITTER_EMAIL="tests@nnops.local",
    )
    env.update(extra)
    return env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout=900
) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on unexpected failure show stdout and stderr."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def stage_in_process(
    stage: str, args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``pipelines/<stage>.py`` in this process as its ``__main__`` does (``run_stage`` with
    its own parser and body) from ``cwd``; return its exit code and captured output.

    For tests where the stage's logic and messages are the point, not its process: the heavy
    imports are paid once per test process. Each stage keeps at least one subprocess test.
    """
    import importlib.util

    from nnops.stage import run_stage

    path = REPO / "pipelines" / f"{stage}.py"
    spec = importlib.util.spec_from_file_location(f"_stage_{stage}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        code = run_stage(stage, module.main, module.build_parser(), argv=list(args))
    finally:
        os.chdir(before)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([str(path), *args], code, out.out, out.err)


def dvc(*args: str, cwd: Path, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    """Run the real ``dvc`` CLI of this environment."""
    return run([str(BIN / "dvc"), *args], cwd=cwd, env=env, check=check, timeout=timeout)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(
    cmd: list[str], url: str, cwd: Path, log: Path, timeout_s: float = 120, env=None
) -> subprocess.Popen:
    """Start a server in its own process group and wait until ``url`` answers 200.

    Args:
        cmd: the command line.
        url: a page that answers 200 once the server is up.
        cwd: the working directory.
        log: where the server's output goes (shown when it fails to start).
        timeout_s: how long to wait for it.
        env: the server's environment (``project_env()`` when omitted).
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env or project_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{cmd} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_service(proc, signal.SIGKILL)
            pytest.fail(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def stop_service(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server started by ``start_service`` and its children (SIGKILL after 20 s)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with suppress(ProcessLookupError):  # a child the group leader left behind
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def serving(
    cmd: list[str],
    url: str,
    cwd: Path,
    log: Path,
    timeout_s: float = 120,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run a server (see ``start_service``) until the block ends; yield ``url``."""
    proc = start_service(cmd, url, cwd, log, timeout_s, env)
    try:
        yield url
    finally:
        stop_service(proc)


class MlflowServer:
    """A real tracking server as ``make server`` starts it: sqlite + proxied artifacts in ``store``.

    ``start`` again after ``kill`` brings it back on the same port over the same store.
    """

    def __init__(self, store: Path, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = store.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        cmd = [sys.executable, "-m", "nnops.ui", "server", "--port", str(self.port),
               "--workers", "1", "--store", str(self.store)]  # fmt: skip
        self.proc = start_service(cmd, f"{self.uri}/health", self.store.parent, self.log)
        return self

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no clean shutdown), as a crash would."""
        if self.proc is not None:
            stop_service(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_service(self.proc)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real tracking server on a free port over a fresh store in ``tmp_path/server``."""
    server = MlflowServer(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


CHROMIUM = Path(os.environ.get("NNOPS_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("NNOPS_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with a fresh profile, driven through the system chromedriver."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(
            f"browser tests need {CHROMIUM} and {CHROMEDRIVER} (scripts/ensure_chromium.sh; "
            "NNOPS_CHROMIUM / NNOPS_CHROMEDRIVER point elsewhere)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """``folder`` made unwritable, yielding the reason a write there gives: chmod for a user, an
    immutable folder (chattr +i) for root, whom permissions do not stop."""
    as_root = os.geteuid() == 0
    if as_root:
        if shutil.which("chattr") is None:
            pytest.fail("running as root needs chattr (e2fsprogs) to make a folder unwritable")
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if made.returncode != 0:  # tmpfs and some overlays have no immutable flag
            pytest.skip(f"chattr +i is not supported here: {made.stderr.decode().strip()}")
    else:
        folder.chmod(0o500)
    try:
        yield "Operation not permitted" if as_root else "Permission denied"
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o700)


def section(dotted: str, **overrides: object) -> object:
    """A params section as the repository's ``params.yaml`` sets it, with ``overrides`` applied.

    Code holds no defaults, so tests build sections from the real file (validated again).

    Args:
        dotted: the section, e.g. ``"train"`` or ``"evaluate.fit"``.
        overrides: field values to replace.
    """
    from nnops.config import load_params

    model = load_params(REPO / "params.yaml")
    for part in dotted.split("."):
        model = getattr(model, {"validate": "validation", "register": "registry"}.get(part, part))
    return type(model).model_validate({**model.model_dump(), **overrides})


def repo_params() -> object:
    """The repository's ``params.yaml``, validated."""
    from nnops.config import load_params

    return load_params(REPO / "params.yaml")


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


def make_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the repository's source files into ``dest`` as a fresh git + DVC repo.

    Args:
        dest: an empty directory.
        params: nested overrides merged into ``params.yaml`` before the first commit.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in _tracked_files():
        if rel.startswith(("data/", "models/", "reports/", "mlruns/")) and not rel.endswith(
            ".gitignore"
        ):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    if params:
        set_params(dest, params)
    env = project_env()
    run(["git", "init", "-q", "-b", "main"], cwd=dest, env=env)
    run(["git", "add", "-A"], cwd=dest, env=env)
    run(["git", "commit", "-q", "-m", "test project"], cwd=dest, env=env)
    return dest


def merge_params(base: dict, overrides: dict) -> dict:
    """Merge nested ``overrides`` into ``base`` in place (nested dicts replace keys); return it."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_params(base[key], value)
        else:
            base[key] = value
    return base


def set_params(root: Path, overrides: dict) -> None:
    """Merge nested ``overrides`` into ``root/params.yaml``."""
    path = root / "params.yaml"
    data = merge_params(yaml.safe_load(path.read_text()) or {}, overrides)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# Few epochs so pipeline tests stay quick; the defaults are exercised by `make run`.
FAST_PARAMS = {"train": {"epochs": 3}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the repository (git + DVC) with fast training params."""
    return make_project(tmp_path / "repo", FAST_PARAMS)


# Enough epochs on the embedded data for the register gate to pass (a champion to serve).
GATE_PARAMS = {"train": {"epochs": 15}}


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full ``dvc repro`` of a fresh copy whose model became @champion.

    Shared by every test that only reads a pipeline's outputs, its store and its registry: such
    tests write nothing into it (their files go to ``tmp_path``).
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # under pytest-xdist, one build for all workers
        shared = shared.parent
    home, done = shared / "reproduced", shared / "reproduced.done"
    with FileLock(shared / "reproduced.lock"):
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)  # what a failed build left
            make_project(home / "repo", GATE_PARAMS)
            dvc("repro", cwd=home / "repo")
            done.touch()
    return home / "repo"


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real sqlite MLflow store, created and migrated once per session by the real client."""
    import mlflow

    db = tmp_path_factory.mktemp("migrated-store") / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    return db


def copy_store(template: Path, db: Path) -> str:
    """Copy a migrated store to ``db``; its Default experiment keeps artifacts beside the copy.

    A store the client creates itself puts the Default experiment's artifacts under
    ``<working directory>/mlruns/0``; the copy uses ``<db's directory>/mlruns/0``, which is what a
    stage run from the project directory gets.
    """
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(db.parent.resolve() / "mlruns" / "0"),),
        )
    con.close()
    return f"sqlite:///{db}"


@pytest.fixture
def mlflow_store(_migrated_store: Path, tmp_path: Path) -> str:
    """A fresh real sqlite MLflow store at ``tmp_path/mlflow.db`` (a copy of one migrated once)."""
    return copy_store(_migrated_store, tmp_path / "mlflow.db")


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    for key, value in QUIET_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if (REPO / "tests" / "unit") in request.path.parents:  # the unit tier starts no servers
        monkeypatch.setenv("NNOPS_WARM", "0")


# A user's CSV as the data source: scikit-learn's digits written out as a table (64 pixel columns
# and a label), read by ingest from inputs/digits.csv, which git does not track.
CSV_PARAMS = {
    "data": {"source": "csv", "path": "inputs/digits.csv", "label_column": "label"},
    "train": {"epochs": 4},
    "explain": {"enabled": False},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
}


def write_digits_csv(path: Path) -> Path:
    """Write scikit-learn's digits as a CSV with a ``label`` column; return the path."""
    from sklearn.datasets import load_digits

    digits = load_digits(as_frame=True)
    table = digits.data.astype(int)
    table["label"] = digits.target
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def edit_csv_cell(path: Path, row: int = 0, column: str = "pixel_1_2") -> None:
    """Change one cell of a CSV in place (a user fixing a value in their data)."""
    import pandas as pd

    table = pd.read_csv(path)
    table.loc[row, column] = int(table.loc[row, column]) + 1
    table.to_csv(path, index=False)
