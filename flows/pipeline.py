"""`curation_pipeline`: the whole run as one Prefect flow over one validated YAML config.

The DAG (each box a stage flow; an arrow, an output passed on)::

    encode ──► score (rules mine ─► score) ───────────────────────────► curate
          └──► gaps (features select ─► gaps) ─► synth (verify: re-encode) ─┘

Stages missing from the config are skipped. With `resume` (the default) a rerun hits each task's cache or resumes
its store; `resume=False` recomputes everything.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from qscope_data.config import load_config
from qscope_data.stages import FLOWS, STAGES, Executor
from qscope_flows.stages import FLOW_FUNCTIONS, merge_outputs
from qscope_flows.tasks import artifact_key


@flow(name="curation-pipeline")
def curation_pipeline(config_path: str, executor: Executor | None = None, resume: bool = True) -> dict[str, Any]:
    """Run every configured stage of `config_path`, flow by flow in graph order (`stages.FLOWS`), each taking what
    the ones before it wrote; returns the output paths, by output name."""
    config = load_config(config_path)
    out: dict[str, Any] = {}
    for name in FLOWS:
        if any(row.flow == name and row.configured(config) for row in STAGES):
            merge_outputs(out, FLOW_FUNCTIONS[name](config_path, executor, resume, given=out, upstream=False))
    rows = [f"| {stage} | `{path}` |" for stage, path in flatten(out)]
    create_markdown_artifact(markdown=f"## {config.name}: outputs\n\n| output | path |\n|---|---|\n" + "\n".join(rows) + "\n",
                             key=artifact_key(config.name, "pipeline"), description="qscope curation pipeline outputs")
    get_run_logger().info("pipeline %s done: %s", config.name, ", ".join(f"{k} → {v}" for k, v in flatten(out)))
    return out


def flatten(out: dict[str, Any]) -> list[tuple[str, str]]:
    """A flow's outputs as (name, path) rows: per-corpus ones as `name.corpus`."""
    rows: list[tuple[str, str]] = []
    for key, value in out.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", str(v)) for k, v in value.items()]
        else:
            rows.append((key, str(value)))
    return rows
