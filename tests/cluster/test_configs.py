"""Every file under cluster/ is configuration `ray up` and KubeRay would accept, consistent with the lock file,
and safe; broken variants fail with a message naming the file, the key and the fix."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from click.testing import CliRunner
from ray.autoscaler._private.util import prepare_config, validate_config

from clusterlint import ClusterSpec, ConfigProblem, validate_file
from engine.cli.main import main
from engine.config import FeatureSettings
from tests.cluster.helpers import CLUSTER, REPO, lock_version

RAY_VERSION = lock_version("ray")
LAUNCHERS = {"aws": "aws.yaml", "gcp": "gcp.yaml", "local": "onprem.yaml", "fake_multinode": "fake-multinode.yaml"}
MANIFESTS = {"RayCluster": "kuberay/raycluster.yaml", "RayJob": "kuberay/rayjob-retail.yaml",
             "RayCronJob": "kuberay/raycronjob-retail.yaml"}
WORKER_TYPES = {"cpu-worker", "gpu-worker"}


def spec_of(name: str) -> ClusterSpec:
    specs = validate_file(CLUSTER / name, RAY_VERSION)
    assert len(specs) == 1
    return specs[0]


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def test_the_installed_ray_is_the_one_the_lock_file_pins() -> None:
    assert ray.__version__ == RAY_VERSION


def test_every_yaml_under_cluster_is_covered_by_these_tests() -> None:
    found = {str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*.yaml")}
    assert found == set(LAUNCHERS.values()) | set(MANIFESTS.values())


@pytest.mark.parametrize("provider", LAUNCHERS)
def test_launcher_configs_pass_ray_ups_own_validation(provider: str) -> None:
    raw = yaml.safe_load((CLUSTER / LAUNCHERS[provider]).read_text())
    assert raw["provider"]["type"] == provider
    prepared = raw if provider == "fake_multinode" else prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    spec = spec_of(LAUNCHERS[provider])
    assert spec.kind == "launcher" and spec.provider == provider
    assert spec.token_auth is (provider != "fake_multinode")
    for node in spec.workers.values():
        assert 0 <= node.min_workers <= node.max_workers


@pytest.mark.parametrize("kind", MANIFESTS)
def test_kuberay_manifests_are_well_formed(kind: str) -> None:
    spec = spec_of(MANIFESTS[kind])
    assert spec.kind == kind and spec.token_auth
    objects = [d for d in documents(MANIFESTS[kind]) if d["kind"] == kind]
    assert len(objects) == 1 and objects[0]["apiVersion"] == "ray.io/v1"


def test_the_same_node_types_everywhere_with_matching_resources() -> None:
    cloud = [spec_of(LAUNCHERS["aws"]), spec_of(LAUNCHERS["gcp"])]
    kuberay = [spec_of(name) for name in MANIFESTS.values()]
    fake = spec_of(LAUNCHERS["fake_multinode"])
    for spec in [*cloud, *kuberay, fake]:
        assert set(spec.workers) == WORKER_TYPES, spec.path
        assert spec.head.resources.get("CPU") == 0, f"{spec.path}: the head runs no tasks"
        assert all(t.min_workers == 0 for t in spec.workers.values()), f"{spec.path}: workers scale to zero"
        assert "GPU" in spec.workers["gpu-worker"].resources and "GPU" not in spec.workers["cpu-worker"].resources
        assert spec.workers["gpu-worker"].resources.get("CPU") == 0, f"{spec.path}: no CPU work on GPU nodes"
    reference = cloud[0]
    for spec in [*cloud, *kuberay]:
        assert spec.idle_timeout_s == reference.idle_timeout_s == 300, spec.path
        for name, node in spec.workers.items():
            expected = reference.workers[name]
            assert node.max_workers == expected.max_workers, (spec.path, name)
            assert {k: float(v) for k, v in node.resources.items()} == {
                k: float(v) for k, v in expected.resources.items()}, (spec.path, name)


def test_kuberay_manifests_autoscale_and_run_the_retail_pipeline() -> None:
    cluster = documents(MANIFESTS["RayCluster"])[-1]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["upscalingMode"] == "Default"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    job = documents(MANIFESTS["RayJob"])[0]["spec"]
    cron = documents(MANIFESTS["RayCronJob"])[0]["spec"]
    assert job["rayClusterSpec"] == cluster and cron["jobTemplate"]["rayClusterSpec"] == cluster
    assert job["entrypoint"] == cron["jobTemplate"]["entrypoint"] == "medallion run retail"
    assert job["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]["MEDALLION__STORAGE__ROOT"].startswith("s3://")
    assert cron["schedule"] == "0 2 * * *"


def test_images_and_pins_follow_the_lock_file() -> None:
    uv = re.search(r'UV_VERSION="([^"]+)"', (REPO / "scripts" / "dev").read_text()).group(1)
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{RAY_VERSION}-py311\n" in dockerfile
    assert "uv export --frozen" in dockerfile
    for name in [*LAUNCHERS.values(), "Dockerfile"]:
        for pinned in re.findall(r"uv==([\w.]+)", (CLUSTER / name).read_text()):
            assert pinned == uv, name
    for name in [*LAUNCHERS.values(), *MANIFESTS.values()]:
        for spec in validate_file(CLUSTER / name, RAY_VERSION):
            for node in [spec.head, *spec.workers.values()]:
                assert node.image is None or RAY_VERSION in node.image.rsplit(":", 1)[1], (name, node.image)
    for provider in ("aws", "gcp"):
        text = (CLUSTER / LAUNCHERS[provider]).read_text()
        assert "uv export --frozen --no-dev" in text and "--dashboard-host=127.0.0.1" in text


def test_the_image_holds_every_folder_a_job_needs() -> None:
    """The packages of the wheel, and the feature repository that `train` and `features` read."""
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.M).group(1)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = [*packages["packages"], FeatureSettings().repo]
    assert set(needed) >= {"engine", "pipelines", "features"}
    for folder in needed:
        assert (REPO / folder).is_dir(), folder
        assert f"COPY --chown=ray:users {folder} ./{folder}\n" in dockerfile, f"the image lacks `{folder}/`"
        assert f"!{folder}/" in ignored, f"cluster/Dockerfile.dockerignore leaves `{folder}/` out of the context"
    assert f"ENV MEDALLION_FEATURE_REPO={workdir}/{FeatureSettings().repo}\n" in dockerfile


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """A mutation setting the dotted `path` (list indices allowed) to `value`; `...` deletes the key."""
    def mutate(document: Any) -> None:
        *parents, last = path.split(".")
        for part in parents:
            document = document[int(part)] if part.isdigit() else document[part]
        if value is ...:
            del document[last]
        else:
            document[int(last) if last.isdigit() else last] = value
    return mutate


def _rename(path: str, new: str) -> Callable[[Any], None]:
    def mutate(document: Any) -> None:
        *parents, last = path.split(".")
        for part in parents:
            document = document[int(part)] if part.isdigit() else document[part]
        document[new] = document.pop(last)
    return mutate


BROKEN = {
    "typo in a top-level key": (
        "aws.yaml", 0, _rename("idle_timeout_minutes", "idle_timout_minutes"),
        "unknown key `idle_timout_minutes` at the top level; did you mean `idle_timeout_minutes`?"),
    "typo in a node type key": (
        "gcp.yaml", 0, _rename("available_node_types.cpu-worker.max_workers", "max_worker"),
        "unknown key `max_worker` under `available_node_types.cpu-worker`; did you mean `max_workers`?"),
    "wrong type": (
        "aws.yaml", 0, _set("upscaling_speed", "fast"),
        "key `upscaling_speed`: 'fast' is not of type 'number'"),
    "wrong type of a resource": (
        "gcp.yaml", 0, _set("available_node_types.cpu-worker.resources.CPU", "8"),
        "key `available_node_types.cpu-worker.resources.CPU`: '8' is not of type 'integer'"),
    "min_workers above max_workers": (
        "aws.yaml", 0, _set("available_node_types.gpu-worker.min_workers", 3),
        "`available_node_types.gpu-worker.min_workers` (3) is greater than "
        "`available_node_types.gpu-worker.max_workers` (2); lower min_workers or raise max_workers"),
    "global min_workers above max_workers": (
        "onprem.yaml", 0, _set("min_workers", 5),
        "`min_workers` (5) is greater than `max_workers` (4)"),
    "unknown head node type": (
        "aws.yaml", 0, _set("head_node_type", "ray.head.large"),
        "`head_node_type` must be one of `available_node_types`"),
    "on-premises cluster without a head": (
        "onprem.yaml", 0, _set("provider.head_ip", ...),
        "Please supply a `head_ip` and list of `worker_ips`"),
    "node without an instance type": (
        "aws.yaml", 0, _rename("available_node_types.cpu-worker.node_config.InstanceType", "InstanceTyp"),
        "`available_node_types.cpu-worker.node_config` has no `InstanceType`"),
    "image of another Ray": (
        "aws.yaml", 0, _set("docker.image", "rayproject/ray:2.59.0-py311"),
        "does not carry Ray 2.60.0 (the lock file's)"),
    "image of another Python": (
        "gcp.yaml", 0, _set("docker.image", f"rayproject/ray:{RAY_VERSION}-py312"),
        "is for Python 3.12; the project runs on Python 3.11"),
    "dashboard open to every network": (
        "aws.yaml", 0, _set("head_start_ray_commands.1", "RAY_AUTH_MODE=token ray start --head "
                            "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0"),
        "binds the dashboard and Jobs API to 0.0.0.0, reachable from any network"),
    "Ray's defaults expose the dashboard": (
        "gcp.yaml", 0, _set("head_start_ray_commands", ...),
        "binds the dashboard and Jobs API to 0.0.0.0"),
    "workers without token auth": (
        "onprem.yaml", 0, _set("worker_start_ray_commands.1", "ray start --address=$RAY_HEAD_IP:6379"),
        "`worker_start_ray_commands` starts Ray without token authentication"),
    "Jobs API port open to the internet": (
        "aws.yaml", 0, _set("provider.security_group", {"GroupName": "medallion", "IpPermissions": [
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "opens 8265 (dashboard and Jobs API) to the internet"),
    "typo in a RayCluster field": (
        "kuberay/raycluster.yaml", 1, _rename("spec.enableInTreeAutoscaling", "enableInTreeAutoscalling"),
        "unknown field `enableInTreeAutoscalling`; did you mean `enableInTreeAutoscaling`?"),
    "number where the CRD wants a string": (
        "kuberay/raycluster.yaml", 1, _set("spec.headGroupSpec.rayStartParams.num-cpus", 0),
        "rayStartParams.num-cpus: must be a string (quote it: `\"0\"`)"),
    "minReplicas above maxReplicas": (
        "kuberay/raycluster.yaml", 1, _set("spec.workerGroupSpecs.1.minReplicas", 5),
        "`spec.workerGroupSpecs[1]`: minReplicas (5) is greater than maxReplicas (2)"),
    "head exposed by a load balancer": (
        "kuberay/raycluster.yaml", 1, _set("spec.headGroupSpec.serviceType", "LoadBalancer"),
        "the head service must stay `ClusterIP`"),
    "no token authentication": (
        "kuberay/raycluster.yaml", 1, _set("spec.authOptions", ...),
        "`spec.authOptions.mode` must be `token`"),
    "another Ray version": (
        "kuberay/rayjob-retail.yaml", 0, _set("spec.rayClusterSpec.rayVersion", "2.59.0"),
        "`spec.rayClusterSpec.rayVersion` is `2.59.0`; the lock file pins Ray 2.60.0"),
    "old API version": (
        "kuberay/raycluster.yaml", 1, _set("apiVersion", "ray.io/v1alpha1"),
        "`apiVersion` is `ray.io/v1alpha1`; KubeRay serves `ray.io/v1`"),
    "requests below limits": (
        "kuberay/raycluster.yaml", 1, _set("spec.workerGroupSpecs.0.template.spec.containers.0.resources.requests.cpu",
                                           "2"),
        "requests cpu 2 but is limited to 8"),
    "job without entrypoint": (
        "kuberay/rayjob-retail.yaml", 0, _set("spec.entrypoint", ...), "`spec.entrypoint` is required"),
    "schedule that is no cron expression": (
        "kuberay/raycronjob-retail.yaml", 0, _set("spec.schedule", "nightly"),
        "`spec.schedule` must be a five-field cron expression, found 'nightly'"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_config_fails_with_a_clear_message(case: str, tmp_path: Path) -> None:
    name, index, mutate, expected = BROKEN[case]
    docs = documents(name)
    mutate(docs[index])
    broken = tmp_path / Path(name).name
    broken.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    with pytest.raises(ConfigProblem) as raised:
        validate_file(broken, RAY_VERSION)
    assert expected in str(raised.value)
    assert str(raised.value).startswith(f"`{broken}`")
    assert raised.value.path == str(broken)


def test_medallion_cluster_validate_reports_every_file(tmp_path: Path) -> None:
    broken = tmp_path / "aws.yaml"
    broken.write_text((CLUSTER / "aws.yaml").read_text().replace("max_workers: 8", "max_workers: eight"))
    good = [str(CLUSTER / name) for name in [*LAUNCHERS.values(), *MANIFESTS.values()]]
    result = CliRunner().invoke(main, ["cluster", "validate", *good, str(broken)])
    assert result.exit_code == 1
    assert result.output.count("valid   ") == len(good)
    assert f"invalid `{broken}`: key `available_node_types.cpu-worker.max_workers`: 'eight' is not of type " \
           "'integer'" in result.output
    assert "1 of 8 file(s) invalid" in result.output
