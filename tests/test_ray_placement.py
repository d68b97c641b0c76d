"""GPU stages leave the Ray driver: with the Ray executor, synthesis (a local generator plus the verifying re-encode,
both loading the model) runs as a Ray task asking for `encode.gpus_per_worker` GPUs — on the KubeRay layout the
driver is the head pod, which holds no model. Real Ray (2 CPUs, num_gpus 0 here), a tiny Qwen3, a random SAE."""

from __future__ import annotations

import json
import os

import pytest

from qscope_data.config import PipelineConfig
from qscope_data.errors import UsageError
from synth_world import LAYER, build_world

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("placement-world"), tiny_model_dir("qwen3"))


def pipeline(world, tmp_path, executor: str, generator: str = "lm") -> PipelineConfig:
    return PipelineConfig.model_validate({
        "workdir": str(tmp_path / "run"),
        "model": {"id": str(world.model), "dtype": "float32"},
        "sae": {"path": str(world.sae), "layer": LAYER},
        "corpora": {"ref": {"input": [str(world.root / "ref.jsonl")]},
                    "target": {"input": [str(world.root / "target.jsonl")]}},
        "encode": {"executor": executor, "gpus_per_worker": 0, "cpus_per_worker": 0.5},
        "inventory": {"corpus": "ref", "min_support": 1},
        "gaps": {"target": "target"},
        "synth": {"generator": generator, "per_feature": 1, "max_attempts": 1, "languages": ["en"], "max_features": 2},
    })


def test_synthesis_with_a_local_generator_runs_as_a_ray_task(local_ray, world, tmp_path):
    from qscope_data import stages

    result = stages.synthesize_gaps(pipeline(world, tmp_path, "ray"), str(world.gaps.parent), str(world.inventory))
    where = result.summary["placement"]
    assert where["executor"] == "ray" and where["pid"] != os.getpid() and where["num_gpus"] == 0, where
    assert where["node"] == ray.get_runtime_context().get_node_id() and "Ray task" in result.markdown
    out = tmp_path / "run" / "synth"
    summary = json.loads((out / "summary.json").read_text())  # written by the task, where the stage writes
    assert summary["totals"]["requested"] == 2 == result.summary["totals"]["requested"]
    rows = [json.loads(line) for line in (out / "accepted.jsonl").read_text().splitlines()]
    assert all(r["generator"].startswith("lm:") for r in rows)


def test_a_usage_error_inside_the_ray_task_comes_back_as_itself(local_ray, world, tmp_path):
    from qscope_data import stages

    config = pipeline(world, tmp_path, "ray", generator="lm?no_such_parameter=1")
    with pytest.raises(UsageError, match="no_such_parameter"):
        stages.synthesize_gaps(config, str(world.gaps.parent), str(world.inventory))


def test_the_local_executor_runs_synthesis_in_this_process(world, tmp_path):
    from qscope_data import stages

    result = stages.synthesize_gaps(pipeline(world, tmp_path, "local"), str(world.gaps.parent), str(world.inventory))
    assert result.summary["placement"] == {"executor": "local", "pid": os.getpid(), "num_gpus": 0.0}
