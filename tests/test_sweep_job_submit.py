"""``ray job submit`` of a tiny sweep through ``cluster/submit.sh`` to a Ray cluster that the test
starts with ``ray start --head`` on 127.0.0.1 (free ports, its own temp dir, token auth off).

The cluster is stopped by ending the ``ray start --head --block`` process this test started (Ray
then stops that cluster's processes), and, should any survive, its process group. Not ``ray
stop``: that would kill every Ray process on the machine, other people's clusters included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # `ray start --block` shuts its cluster down on exit
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this cluster only (its own group)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


@pytest.fixture
def ray_head(tmp_path: Path):
    """A one-node Ray cluster on 127.0.0.1 (2 CPUs, dashboard / job server on a free port)."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths
    dashboard = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    }
    env.pop("RAY_ADDRESS", None)
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    argv = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0"]
    argv += [
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
    ]
    argv += [f"{flag}={port}" for flag, port in ports.items()]
    argv += [f"--temp-dir={temp}", "--disable-usage-stats"]
    log = (tmp_path / "ray_start.log").open("w")
    proc = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(tmp_path / 'ray_start.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Ray job server did not come up within 120 s")
            time.sleep(1)
        yield address, env
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_of_a_tiny_sweep(ray_head, tiny_world, tiny_llava_dir, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    address, env = ray_head
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        "bash",
        "cluster/submit.sh",
        "--address",
        address,
        "sweeps/fig4_k.yaml",
        "--tiny",
        "--quiet",
        f"storage={tmp_path / 'sweeps'}",
        f"base.train.world={tiny_world}",
        f"base.train.backbone={tiny_llava_dir}",
        "base.train.editor.layer=2",
        "base.train.steps=2",
        "base.train.checkpoint_every=2",
        "search.train.editor.k.grid=[4]",
    ]
    job_env = {**env, "MLFLOW_TRACKING_URI": uri, "PYTHON": sys.executable}
    done = subprocess.run(
        command, cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=420
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "sweep fig4_k_tiny: 1 trials (1 completed), complete" in output, output[-4000:]
    assert "succeeded" in output.lower()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fig4_k_tiny")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("liveedit.kind") == "sweep"]
    assert parent.data.tags["ray.job_submission_id"].startswith("raysubmit_")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert parent.data.tags["liveedit.git_commit"].startswith(commit)  # LIVEEDIT_GIT_COMMIT
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) == 1
