"""When stages hand themselves to a warm server, and which server: the pure rules of nnops.warm."""

import os
import sys

import pytest

from nnops import warm

pytestmark = pytest.mark.unit


def test_the_key_follows_what_libraries_read_when_imported():
    base = dict(os.environ, PYTHONHASHSEED="0", TF_ENABLE_ONEDNN_OPTS="0")
    key = warm.server_key(base)
    assert len(key) == 20 and warm.server_key(dict(base)) == key
    for name, value in [("TF_ENABLE_ONEDNN_OPTS", "1"), ("PYTHONHASHSEED", "1"),
                        ("CUDA_VISIBLE_DEVICES", "0"), ("PYTHONPATH", "/elsewhere")]:  # fmt: skip
        assert warm.server_key({**base, name: value}) != key, name
    # what a stage reads when it runs, not at import, is handed to each stage as it starts
    run_time = [("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"), ("DVC_EXP_NAME", "x"),
                ("NNOPS_WARM_DIR", "/tmp/other"), ("MLFLOW_TRACKING_PASSWORD", "pw")]  # fmt: skip
    for name, value in run_time:
        assert warm.server_key({**base, name: value}) == key, name


def test_off_switches_and_the_places_it_is_off_by_default():
    if not sys.platform.startswith("linux"):
        assert not warm.enabled({"NNOPS_WARM": "1"})  # fork + descriptor passing: Linux only
        return
    assert warm.enabled({"NNOPS_WARM": "1"})
    for off in ("0", "off", "false", "no"):
        assert not warm.enabled({"NNOPS_WARM": off})
    assert not warm.enabled({"TF_CONFIG": '{"cluster": {}}'})  # multi-worker training
    assert not warm.enabled({"PYTHONPROFILEIMPORTTIME": "1"})  # import profiling needs cold
    assert warm.enabled({"NNOPS_WARM": "1", "TF_CONFIG": "{}"})  # asked for explicitly


def test_the_runtime_dir_is_private(tmp_path):
    assert warm.runtime_dir({"NNOPS_WARM_DIR": str(tmp_path / "w")}) == tmp_path / "w"
    assert warm.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == warm.Path(
        "/run/user/7/nnops-warm"
    )
    home = warm._private_dir(tmp_path / "w")
    assert home.stat().st_mode & 0o777 == 0o700
    (tmp_path / "open").mkdir(mode=0o777)
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(PermissionError, match="not a private directory"):
        warm._private_dir(tmp_path / "open")


def test_outside_a_warm_child_the_stage_pid_is_this_process():
    assert warm.stage_pid() == os.getpid()
