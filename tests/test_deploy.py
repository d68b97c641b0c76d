"""deploy/ is loadable as written: Prefect deployments point at real flows with valid parameters and cron schedules,
the KubeRay manifests have the expected kinds and a GPU worker group, the RayJob's command parses, and every config
the deployments name is a valid pipeline config."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path

import pytest
import yaml

import qscope_flows  # noqa: F401  (Prefect environment defaults)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/opt/qscope-data/"  # where the Dockerfile puts the repository


def deployments() -> list[dict]:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_entrypoints_resolve_to_flows_with_matching_parameters(monkeypatch):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root, as `prefect deploy` reads them
    deps = deployments()
    assert {d["name"] for d in deps} >= {"nightly-cleaning", "weekly-gap-report"}
    for d in deps:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert isinstance(flow, Flow), d["entrypoint"]
        params = inspect.signature(flow.fn).parameters
        assert set(d.get("parameters", {})) <= set(params), (d["name"], set(d["parameters"]) - set(params))
        assert "config_path" in d["parameters"]
        assert d["work_pool"]["name"]


def test_prefect_yaml_schedules_are_valid_cron():
    from cronsim import CronSim
    from datetime import datetime, timezone

    scheduled = [d for d in deployments() if d.get("schedules")]
    assert {d["name"] for d in scheduled} == {"nightly-cleaning", "weekly-gap-report"}
    for d in scheduled:
        for s in d["schedules"]:
            start = datetime(2026, 1, 1, tzinfo=timezone.utc)
            fire = next(CronSim(s["cron"], start))  # raises CronSimError on a bad expression
            assert fire > start
    nightly = next(d for d in scheduled if d["name"] == "nightly-cleaning")["schedules"][0]["cron"]
    weekly = next(d for d in scheduled if d["name"] == "weekly-gap-report")["schedules"][0]["cron"]
    nights = list(_take(CronSim(nightly, datetime(2026, 1, 1)), 3))
    assert [(b - a).days for a, b in zip(nights, nights[1:])] == [1, 1]
    weeks = list(_take(CronSim(weekly, datetime(2026, 1, 1)), 2))
    assert (weeks[1] - weeks[0]).days == 7


def _take(it, n):
    for _, value in zip(range(n), it):
        yield value


@pytest.mark.parametrize("config", sorted({d["parameters"]["config_path"] for d in deployments()}))
def test_deployed_configs_are_valid_pipeline_configs(config):
    from qscope_data.config import load_config

    assert config.startswith(IMAGE_ROOT)
    cfg = load_config(REPO / config.removeprefix(IMAGE_ROOT))
    assert cfg.encode.executor == "ray" and cfg.encode.gpus_per_worker > 0 and cfg.model.device == "cuda"


def manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "kuberay").glob("*.yaml"))}


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if any("nvidia.com/gpu" in (c.get("resources", {}).get("requests", {}) | c.get("resources", {}).get("limits", {}))
                   for c in g["template"]["spec"]["containers"])]


def test_kuberay_manifests_have_expected_kinds_and_a_gpu_worker_group():
    found = manifests()
    kinds = {doc["kind"] for doc in found.values()}
    assert kinds == {"RayCluster", "RayJob"}
    for doc in found.values():
        assert doc["apiVersion"].startswith("ray.io/")
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, not actors
        groups = _gpu_groups(spec)
        assert groups, f"{doc['kind']}: no worker group requests nvidia.com/gpu"
        for g in groups:
            assert float(g["rayStartParams"]["num-gpus"]) >= 1
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_rayjob_entrypoint_is_a_valid_qscope_command():
    import typer.main

    from qscope_data.cli import app

    job = next(doc for doc in manifests().values() if doc["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["qscope", "run"]
    command = typer.main.get_command(app).commands["run"]
    ctx = command.make_context("run", argv[2:])  # raises click.UsageError on an unknown option or value
    assert ctx.params["executor"].value == "ray" and ctx.params["ray_address"] == "auto"
    assert (REPO / ctx.params["config"].as_posix().removeprefix(IMAGE_ROOT)).is_file()


def test_dockerfile_copies_what_exists_and_is_cuda_based():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "\nFROM nvidia/cuda:" in text and "torch==2.13.0" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if str(quantity).endswith("m") else float(quantity)


@pytest.mark.parametrize("config", sorted({d["parameters"]["config_path"] for d in deployments()}))
def test_gpu_stages_fit_a_gpu_worker_and_never_the_head(config):
    """What the GPU stages ask Ray for (encoder actors and the synth task: encode.gpus_per_worker GPUs and
    cpus_per_worker CPUs each) fits one GPU worker pod of every manifest, and the head offers neither CPUs nor GPUs
    to tasks, so the model is never loaded in the driver's pod."""
    from qscope_data.config import load_config
    from qscope_data.executors.placement import ray_options

    opts = ray_options(load_config(REPO / config.removeprefix(IMAGE_ROOT)))
    assert opts.gpus_per_worker > 0
    for name, doc in manifests().items():
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0" and head["rayStartParams"].get("num-gpus") == "0", name
        assert not any("nvidia.com/gpu" in str(c.get("resources", {})) for c in head["template"]["spec"]["containers"])
        for g in _gpu_groups(spec):
            assert opts.gpus_per_worker <= float(g["rayStartParams"]["num-gpus"]), (name, g["groupName"])
            (container,) = g["template"]["spec"]["containers"]
            assert opts.cpus_per_worker + opts.tokenize_cpus <= _cpus(container["resources"]["requests"]["cpu"]), name
