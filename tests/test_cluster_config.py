"""Checks of the deployment files: cluster.yaml (Ray cluster launcher) and deploy/kuberay-*.yaml.

cluster.yaml goes through the same preparation and validation as `ray up` does before touching AWS
(Ray's JSON schema plus its cross-field checks), then our own policies: the head runs no tasks, a GPU
worker type exists, and the docker image carries the Ray version installed here (client and cluster
must agree). The KubeRay manifests must run jobs/purify.py with flags the CLI accepts, on that image.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "deploy" / "kuberay-rayjob.yaml"
CRONJOB_YAML = ROOT / "deploy" / "kuberay-cronjob.yaml"
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)(?P<suffix>-\S*)?$")


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _image_ray_version(image: str) -> str:
    match = RAY_IMAGE.match(image)
    assert match, f"not a rayproject/ray:<version>... image: {image!r}"
    return match["version"]


def _images(node: Any) -> list[str]:
    """Every `image:` value in a parsed manifest, however deep."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [img for value in node.values() for img in _images(value)]
    if isinstance(node, list):
        return [img for value in node for img in _images(value)]
    return []


# --- cluster.yaml ------------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation(cluster: dict[str, Any]) -> None:
    prepared = prepare_config(copy.deepcopy(cluster))  # what `ray up` does: merge AWS defaults, fill in
    validate_config(prepared)  # Ray's ray-schema.json + cross-field checks; raises on any problem
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"] == "us-west-2"
    assert prepared["cluster_name"] == "zip-purify"
    assert prepared["idle_timeout_minutes"] > 0


def test_head_node_runs_no_tasks(cluster: dict[str, Any]) -> None:
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not head["resources"].get("GPU")
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU instance type


def test_gpu_worker_type(cluster: dict[str, Any]) -> None:
    workers = {name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["node_config"]["InstanceType"].startswith(("g", "p"))}
    assert gpu, f"no GPU worker type in {sorted(workers)}"
    for node_type in gpu.values():
        assert node_type.get("min_workers", 0) == 0  # scale to zero between runs
        assert node_type["max_workers"] >= 1
        assert node_type["max_workers"] <= cluster["max_workers"]


def test_docker_image_matches_installed_ray(cluster: dict[str, Any]) -> None:
    docker = cluster["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            assert _image_ray_version(docker[key]) == ray.__version__, key
    assert docker["image"].endswith("-gpu")


def test_project_is_mounted_and_installed(cluster: dict[str, Any]) -> None:
    assert cluster["file_mounts"]["~/zip-purify"] == "."
    assert "pip install -e ~/zip-purify" in cluster["setup_commands"]


# --- KubeRay manifests -------------------------------------------------------------------------


def _rayjobs() -> dict[str, dict[str, Any]]:
    """The RayJob of kuberay-rayjob.yaml and the one the CronJob creates (kept in its ConfigMap)."""
    single = yaml.safe_load(RAYJOB_YAML.read_text())
    docs = [d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d]
    config_maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(config_maps) == 1
    templated = yaml.safe_load(config_maps[0]["data"]["rayjob.yaml"])
    return {"rayjob": single, "cronjob": templated}


def _check_rayjob(job: dict[str, Any]) -> list[str]:
    """Common checks; returns the entry point's arguments after `python jobs/purify.py`."""
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/purify.py"], argv
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = cluster_spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(
        c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"]
    )]
    assert gpu_groups and all(g["maxReplicas"] >= 1 for g in gpu_groups)
    assert spec["shutdownAfterJobFinishes"] is True
    # The runtime env installs exactly the project's dependencies (minus Ray, which the image has).
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(runtime_env["pip"]) == sorted(d for d in project if not d.startswith("ray"))
    return argv[2:]


def test_rayjob_manifest() -> None:
    args = _check_rayjob(_rayjobs()["rayjob"])
    assert "--input" in args and "--output" in args


def test_cronjob_manifest_runs_incremental_rayjob() -> None:
    args = _check_rayjob(_rayjobs()["cronjob"])
    assert "--incremental" in args
    docs = {d["kind"]: d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d}
    cron = docs["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= set(docs)
    script = docs["ConfigMap"]["data"]["submit_rayjob.py"]
    compile(script, "submit_rayjob.py", "exec")  # the embedded submitter is valid Python
    assert "/config/rayjob.yaml" in script


@pytest.mark.parametrize("which", ["rayjob", "cronjob"])
def test_entry_point_flags_are_accepted_by_the_cli(which: str) -> None:
    from pipeline.cli import config_from_args

    args = shlex.split(_rayjobs()[which]["spec"]["entrypoint"])[2:]
    config = config_from_args(args)
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.incremental is (which == "cronjob")
    assert config.gpus_per_actor == 1 and config.actors >= 1


def test_all_manifests_use_the_cluster_image(cluster: dict[str, Any]) -> None:
    expected = cluster["docker"]["image"]
    for path in (RAYJOB_YAML, CRONJOB_YAML):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        images = [img for d in docs for img in _images(d)]
        if path == CRONJOB_YAML:  # the RayJob template is a string inside the ConfigMap
            images += _images(_rayjobs()["cronjob"])
        assert images, path
        assert set(images) == {expected}, (path.name, sorted(set(images)))
        assert all(_image_ray_version(img) == ray.__version__ for img in images)
        assert "jobs/purify.py" in path.read_text()
