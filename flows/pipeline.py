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
from qscope_data.stages import Executor
from qscope_flows.stages import curate_flow, encode_flow, gaps_flow, score_flow, synth_flow
from qscope_flows.tasks import artifact_key


@flow(name="curation-pipeline")
def curation_pipeline(config_path: str, executor: Executor | None = None, resume: bool = True) -> dict[str, Any]:
    """Run every configured stage of `config_path`; returns the output paths, by stage."""
    config = load_config(config_path)
    out: dict[str, Any] = {"stores": encode_flow(config_path, executor, resume)}
    if config.rules:
        out.update(score_flow(config_path, executor, resume, stores=out["stores"]))
    if config.inventory and config.gaps:
        out.update(gaps_flow(config_path, executor, resume, stores=out["stores"]))
    if config.synth:
        out.update(synth_flow(config_path, executor, resume, gaps=out["gaps"], inventory=out["inventory"]))
    if config.curate:
        scores = out.get("scores") if config.score and config.score.corpus == config.curate.corpus else None
        out.update(curate_flow(config_path, executor, resume, stores=out["stores"], scores=scores,
                               synth=out.get("synth"), upstream=False))
    rows = [f"| {stage} | `{path}` |" for stage, path in _flatten(out)]
    create_markdown_artifact(markdown=f"## {config.name}: outputs\n\n| output | path |\n|---|---|\n" + "\n".join(rows) + "\n",
                             key=artifact_key(config.name, "pipeline"), description="qscope curation pipeline outputs")
    get_run_logger().info("pipeline %s done: %s", config.name, ", ".join(f"{k} → {v}" for k, v in _flatten(out)))
    return out


def _flatten(out: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in out.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", str(v)) for k, v in value.items()]
        else:
            rows.append((key, str(value)))
    return rows
