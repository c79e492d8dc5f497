"""The cluster files cannot land broken: every Ray cluster YAML validates against the
cluster-config schema that ships inside the installed Ray package, and the KubeRay RayJob
manifest has the fields KubeRay needs (and entrypoints that name real sweep specs)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = [ROOT / "ray_cluster.yaml", ROOT / "cluster" / "gcp_cluster.yaml"]
RAYJOB = ROOT / "cluster" / "kuberay_rayjob.yaml"
IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


def ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def test_every_cluster_yaml_is_covered() -> None:
    found = {p.name for p in (ROOT / "cluster").glob("*.yaml")}
    assert found == {"gcp_cluster.yaml", "kuberay_rayjob.yaml"}, "add new files to this test"


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_matches_rays_schema(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema())  # raises with the offending key
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    assert types[head]["resources"] == {"CPU": 0}, "the head must take no training work"
    workers = [name for name in types if name != head]
    assert workers
    for name in workers:
        node = types[name]
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"] == IMAGE  # the plain image of the installed Ray
    assert "ray-ml" not in json.dumps(config)  # comments aside
    assert any(
        "pip install" in c and "-e /home/ray/liveedit" in c for c in config["setup_commands"]
    )
    assert config["file_mounts"]["/home/ray/liveedit"] == "."
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "auth_token" in str(config["file_mounts"])


def test_schema_check_catches_a_broken_file() -> None:
    config = yaml.safe_load(CLUSTER_YAMLS[0].read_text())
    config["available_node_types"]["head"]["resources"] = {"CPU": -1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())
    config = yaml.safe_load(CLUSTER_YAMLS[0].read_text())
    config["head_node_typo"] = "head"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


def _containers(group: dict, where: str) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: a container needs a name and an image"
    return containers


def test_kuberay_rayjob_manifest() -> None:
    documents = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    jobs = [d for d in documents if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    _containers(head, "headGroupSpec")
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in _containers(group, f"workerGroupSpecs.{group['groupName']}"):
            assert "nvidia.com/gpu" in c["resources"]["limits"]
    assert cluster["authOptions"]["mode"] == "token"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]
    # the entrypoint runs a real spec of this repository, and the spec loads with its overrides
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["liveedit", "sweep"]
    spec_path = Path(argv[2])
    assert (
        spec_path.parts[:3] == ("/", "home", "ray") and (ROOT / "sweeps" / spec_path.name).is_file()
    )
    from liveedit.sweeps.spec import load_spec

    overrides = [a for a in argv[3:] if "=" in a and not a.startswith("--")]
    load_spec(ROOT / "sweeps" / spec_path.name, overrides)
    kinds = {d["kind"] for d in documents}
    assert {"PersistentVolumeClaim", "Deployment", "Service"} <= kinds
    for document in documents:
        assert document.get("apiVersion") and document.get("metadata", {}).get("name")


def test_submit_recipe() -> None:
    script = ROOT / "cluster" / "submit.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert re.search(r"ray job submit .*--working-dir \.", text)
    assert "--runtime-env-json" in text and "MLFLOW_TRACKING_URI" in text
    assert "-- liveedit sweep" in text
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert f"FROM {IMAGE}" in dockerfile
