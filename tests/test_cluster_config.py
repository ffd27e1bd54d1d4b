"""Checks of the deployment files: cluster.yaml (Ray cluster launcher) and deploy/kuberay-*.yaml.

cluster.yaml goes through the same preparation and validation as `ray up` does before touching AWS
(Ray's JSON schema plus its cross-field checks), then our own policies: the head runs no tasks, a GPU
worker type exists, and the docker image carries the Ray version installed here (client and cluster
must agree). The KubeRay manifests must run jobs/purify.py with flags the CLI accepts, on that image.
"""

from __future__ import annotations

import copy
import datetime
import re
import shlex
import tomllib
import urllib.error
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


def test_every_node_type_pins_an_ami_newer_than_rays_default(cluster: dict[str, Any]) -> None:
    """Without ImageId, Ray launches its built-in Ubuntu 18.04 DLAMI (CUDA 11.2): the project's CUDA 13 torch wheels
    see no GPU there and the purifier actors silently run on the GPU nodes' CPUs."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, DEFAULT_AMI_NAME

    assert "18.04" in DEFAULT_AMI_NAME  # what an unpinned node would get (update this test if Ray moves on)
    for name, node_type in cluster["available_node_types"].items():
        ami = node_type["node_config"].get("ImageId", "")
        assert ami and ami.lower() != "latest_dlami" and ami not in DEFAULT_AMI.values(), (name, ami)
        assert ami.startswith("ami-") or ami.startswith("resolve:ssm:/aws/service/deeplearning/"), (name, ami)


# --- the README's commands ---------------------------------------------------------------------


def _readme_commands(section: str, program: str) -> list[list[str]]:
    """The `program ...` command lines of a README section's bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks, f"no bash block in README section {section!r}"
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(program)]


def _cluster_submit() -> dict[str, Any]:
    """The README's `ray job submit`, parsed by Ray's own CLI (nothing is run)."""
    from ray.dashboard.modules.job.cli import submit

    commands = [c for c in _readme_commands("Running on a cluster", "ray job submit")]
    assert len(commands) == 1, commands
    return submit.make_context("submit", commands[0][3:]).params


def test_readme_cluster_commands_match_cluster_yaml(cluster: dict[str, Any]) -> None:
    from pipeline.cli import config_from_args

    commands = _readme_commands("Running on a cluster", "ray ")
    assert ["ray", "up", "cluster.yaml"] in commands and ["ray", "dashboard", "cluster.yaml"] in commands
    params = _cluster_submit()
    # `ray dashboard` forwards the head's dashboard port to the same local port; the head uses Ray's default.
    head_start = " ".join(prepare_config(copy.deepcopy(cluster))["head_start_ray_commands"])
    port = re.search(r"--dashboard-port[= ](\d+)", head_start)
    assert params["address"] == f"http://127.0.0.1:{port[1] if port else 8265}"
    entrypoint = list(params["entrypoint"])
    assert entrypoint[:2] == ["python", "jobs/purify.py"], entrypoint
    config = config_from_args(entrypoint[2:])
    assert config.gpus_per_actor == 1 and config.actors >= 1  # the autoscaler starts GPU nodes only for these
    header = CLUSTER_YAML.read_text().split("\n\n", 1)[0]
    assert "ray job submit --address http://127.0.0.1:8265 --working-dir . -- " in header  # the same command


def test_working_dir_upload_holds_the_project_and_not_git_or_venv(tmp_path: Path) -> None:
    """Package the checkout the way `ray job submit --working-dir` does with the README's options (.git/ is left out
    by .rayignore)."""
    import zipfile

    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING, _zip_files
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    params = _cluster_submit()
    runtime_env = parse_runtime_env_args(runtime_env_json=params["runtime_env_json"], working_dir=params["working_dir"])
    assert runtime_env["working_dir"] == "."
    package = tmp_path / "package.zip"
    _zip_files(str(ROOT), runtime_env.get("excludes", []), str(package), include_gitignore=True)
    names = set(zipfile.ZipFile(package).namelist())
    for needed in ("jobs/purify.py", "pipeline/cli.py", "pyproject.toml", "pipeline/assets/cifar10_prior.pt",
                   "pipeline/assets/gtsrb_prior.pt", "pipeline/assets/sample/sample-00.tar"):
        assert needed in names, needed
    for left_out in (".git/", ".venv/", "runs/", ".pytest_cache/"):
        assert not any(n.startswith(left_out) for n in names), left_out
    assert package.stat().st_size < PACKAGE_SIZE_WARNING, package.stat().st_size


def test_ray_up_leaves_out_what_a_job_submission_leaves_out(cluster: dict[str, Any]) -> None:
    # `ray up` copied the checkout to every node past .gitignore alone: what a user listed in .rayignore (README: an
    # output folder made in the checkout) was kept off `ray job submit`'s upload but copied to every node by `ray up`
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    args = SSHCommandRunner._create_rsync_filter_args(None, cluster)  # the rsync arguments `ray up` copies with
    assert "dir-merge,- .gitignore" in args and "dir-merge,- .rayignore" in args
    assert {".git/", ".carry/"} <= set((ROOT / ".rayignore").read_text().split())  # rsync skips its comment lines


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
    # A stopped job (its deadline, a suspend) is SIGKILLed RAY_JOB_STOP_WAIT_TIME_S after its SIGTERM, 3 s by default:
    # it needs longer to stop its pipeline (up to 60 s for write tasks under way) and record `interrupted`
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) > 60
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


def _submitter(tmp_path: Path) -> dict[str, Any]:
    """The CronJob's embedded submit_rayjob.py, loaded as a module (not run), its service-account folder in tmp_path."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d}
    module: dict[str, Any] = {"__name__": "submit_rayjob"}
    exec(compile(docs["ConfigMap"]["data"]["submit_rayjob.py"], "submit_rayjob.py", "exec"), module)
    (tmp_path / "namespace").write_text("ns\n")
    module["SA"] = str(tmp_path)
    return module


def test_cronjob_submitter_deletes_old_finished_rayjobs(tmp_path: Path) -> None:
    """KubeRay keeps a finished RayJob (and its submitter Job and pod): without pruning, one more every night."""
    submitter = _submitter(tmp_path)
    states = ["Complete", "Failed", "Complete", "Complete", "ValidationFailed", "Complete"]
    items = [{"metadata": {"name": f"run-{day}", "creationTimestamp": f"2026-01-{day:02d}T02:00:00Z"},
              "status": {"jobDeploymentStatus": state}} for day, state in enumerate(states, start=10)]
    calls: list[tuple[str, str]] = []

    def fake_call(method: str, url: str, body: Any = None) -> dict[str, Any]:
        calls.append((method, url.rsplit("/", 1)[1]))
        if method == "DELETE" and url.endswith("run-11"):
            raise OSError("API server hiccup")  # housekeeping must not cost the run
        return {"items": list(reversed(items))} if method == "GET" else {}

    created: list[str] = []
    submitter.update(call=fake_call, create=lambda base: created.append(base) or "new",
                     wait=lambda base, name: None, utcnow=lambda: _utc("2026-01-16T03:00:00Z"))
    submitter["main"]()
    assert [name for method, name in calls if method == "DELETE"] == ["run-10", "run-11", "run-12"]
    assert len(created) == 1 and created[0].endswith("/namespaces/ns/rayjobs")
    # an active RayJob of the schedule: nothing deleted, nothing created
    items.append({"metadata": {"name": "run-16", "creationTimestamp": "2026-01-16T02:00:00Z"},
                  "status": {"jobDeploymentStatus": "Running"}})
    calls.clear()
    with pytest.raises(SystemExit) as skipped:
        submitter["main"]()
    assert skipped.value.code == 0 and [m for m, _ in calls] == ["GET"] and len(created) == 1
    role = {d["kind"]: d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d}["Role"]
    assert {"create", "get", "list", "delete"} <= set(role["rules"][0]["verbs"])


def _utc(timestamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@pytest.mark.parametrize("state", ["Suspended", "Waiting", "Retrying", ""])
def test_cronjob_submitter_replaces_a_rayjob_left_unfinished_by_an_earlier_night(tmp_path: Path, state: str) -> None:
    """A RayJob left Suspended (or Waiting, Retrying, never started) is not failed by its activeDeadlineSeconds, which
    KubeRay applies only while it initializes or runs: the submitter counted it as active, and skipped every later
    night for ever. One past the deadline is deleted (its cluster with it) and the night runs; one of today is not."""
    submitter = _submitter(tmp_path)
    yesterday = {"metadata": {"name": "run-yesterday", "creationTimestamp": "2026-01-15T02:00:00Z"},
                 "status": {"jobDeploymentStatus": state} if state else {}}
    items = [yesterday, {"metadata": {"name": "run-done", "creationTimestamp": "2026-01-14T02:00:00Z"},
                         "status": {"jobDeploymentStatus": "Complete"}}]
    calls: list[tuple[str, str]] = []
    refuse: list[BaseException] = []

    def fake_call(method: str, url: str, body: Any = None) -> dict[str, Any]:
        calls.append((method, url.rsplit("/", 1)[1]))
        if method == "DELETE" and refuse:
            raise refuse[0]
        return {"items": items} if method == "GET" else {}

    created: list[str] = []
    submitter.update(call=fake_call, create=lambda base: created.append(base) or "new", wait=lambda base, name: None,
                     utcnow=lambda: _utc("2026-01-16T02:00:00Z"))
    submitter["main"]()
    assert [name for method, name in calls if method == "DELETE"] == ["run-yesterday"] and len(created) == 1
    # one that cannot be deleted: the night fails, rather than start a second run beside it
    calls.clear()
    refuse.append(OSError("API server hiccup"))
    with pytest.raises(SystemExit) as failed:
        submitter["main"]()
    assert "could not delete stale RayJob run-yesterday" in str(failed.value.code) and len(created) == 1
    # gone already (404): the night runs
    refuse[0] = urllib.error.HTTPError("url", 404, "Not Found", None, None)  # type: ignore[arg-type]
    submitter["main"]()
    assert len(created) == 2
    # within a day of its creation (a run started by hand this afternoon): still skipped, nothing deleted
    refuse.clear()
    calls.clear()
    submitter["utcnow"] = lambda: _utc("2026-01-15T20:00:00Z")
    with pytest.raises(SystemExit) as skipped:
        submitter["main"]()
    assert skipped.value.code == 0 and [m for m, _ in calls] == ["GET"] and len(created) == 2
    # stale means past the RayJob's own deadline, and before the next night
    deadline = _rayjobs()["cronjob"]["spec"]["activeDeadlineSeconds"]
    assert deadline < submitter["STALE_S"] < 24 * 3600


@pytest.mark.parametrize("state", ["Initializing", "Running"])
def test_cronjob_submitter_never_deletes_a_rayjob_its_deadline_still_governs(tmp_path: Path, state: str) -> None:
    """KubeRay's activeDeadlineSeconds counts from a RayJob's start, which a queue (Kueue) may delay past the day: a
    RayJob initializing or running a day after its creation may be well inside its deadline, doing real work. The
    night skips it rather than kill it; KubeRay's deadline ends it if it overruns."""
    submitter = _submitter(tmp_path)
    items = [{"metadata": {"name": "run-queued", "creationTimestamp": "2026-01-14T02:00:00Z"},
              "status": {"jobDeploymentStatus": state}}]
    calls: list[tuple[str, str]] = []

    def fake_call(method: str, url: str, body: Any = None) -> dict[str, Any]:
        calls.append((method, url.rsplit("/", 1)[1]))
        return {"items": items} if method == "GET" else {}

    created: list[str] = []
    submitter.update(call=fake_call, create=lambda base: created.append(base) or "new", wait=lambda base, name: None,
                     utcnow=lambda: _utc("2026-01-16T02:00:00Z"))
    with pytest.raises(SystemExit) as skipped:
        submitter["main"]()
    assert skipped.value.code == 0 and [m for m, _ in calls] == ["GET"] and not created


def test_kuberay_heads_list_their_service_ports() -> None:
    """The RayJob the CronJob creates named no head ports, while deploy/kuberay-rayjob.yaml lists GCS, the dashboard
    (where KubeRay's submitter sends the job) and Ray Client: both list the same."""
    for which, job in _rayjobs().items():
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in head.get("ports", [])}
        assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}, (which, ports)


def test_readme_installs_boto3_before_ray_up() -> None:
    """`ray up` with the AWS provider imports boto3 on the user's machine, and nothing `pip install -e .` brings installs
    it (s3fs brings botocore only): following the README stopped at `ray up` with Ray's "install boto3" error."""
    import inspect

    from ray.autoscaler._private import providers

    assert "import boto3" in inspect.getsource(providers._import_aws)  # the client side of `ray up` needs it
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    if any(d.split("[")[0].split("=")[0].split(">")[0].strip() == "boto3" for d in deps):
        return  # the project's own install brings it
    commands = [" ".join(c) for c in _readme_commands("Running on a cluster", "")]
    install = [i for i, c in enumerate(commands) if c.startswith("pip install") and "boto3" in c.split()]
    up = [i for i, c in enumerate(commands) if c.startswith("ray up")]
    assert install and up and install[0] < up[0], commands


def test_gpu_nodes_are_asked_for_a_driver_that_runs_the_pinned_torch() -> None:
    """The pinned torch wheels are built for one CUDA major, which needs a minimum NVIDIA driver on the GPU hosts;
    cluster.yaml pins an AMI for it, and the KubeRay manifest must say it too (a K8s GPU node pool picks its own driver)."""
    import torch

    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch is installed here: the pinned wheels' CUDA version is not known")
    min_driver = {12: 525, 13: 580}[int(torch.version.cuda.split(".")[0])]  # NVIDIA's minimum per CUDA major
    for path in (CLUSTER_YAML, RAYJOB_YAML):
        text = " ".join(path.read_text().replace("#", " ").split())
        assert f"driver >= {min_driver}" in text, path.name
        assert f"CUDA {torch.version.cuda}" in text, path.name


# The KubeRay version that added each RayJob spec field the manifests rely on (older operators do not know them).
RAYJOB_FIELD_SINCE = {"runtimeEnvYAML": (1, 0), "shutdownAfterJobFinishes": (0, 5), "ttlSecondsAfterFinished": (0, 5),
                      "activeDeadlineSeconds": (1, 1)}


@pytest.mark.parametrize("which, path", [("rayjob", RAYJOB_YAML), ("cronjob", CRONJOB_YAML)])
def test_stated_kuberay_version_has_every_rayjob_field_used(which: str, path: Path) -> None:
    """The header's "KubeRay >= X.Y" covers the fields used: it said 1.0, but activeDeadlineSeconds (the guard against a
    runaway run holding GPUs, and what ends a night's run before the next) came in KubeRay 1.1."""
    text = " ".join(path.read_text().replace("#", " ").split())
    stated = re.search(r"KubeRay(?: operator)?, version >= (\d+)\.(\d+)|KubeRay >= (\d+)\.(\d+)", text)
    assert stated, path.name
    numbers = [int(n) for n in stated.groups() if n is not None]
    used = set(_rayjobs()[which]["spec"]) & set(RAYJOB_FIELD_SINCE)
    assert "activeDeadlineSeconds" in used
    needed = max(RAYJOB_FIELD_SINCE[field] for field in used)
    assert tuple(numbers) >= needed, (path.name, numbers, needed)
