"""CLI: `qscope run CONFIG` (the whole pipeline as a Prefect flow) and `qscope validate CONFIG` (check, compute nothing).

Thin: parse, call `qscope_flows.pipeline.curation_pipeline` / `qscope_data.stages.check_pipeline`, print.
Without PREFECT_API_URL the flow runs in Prefect's ephemeral mode (a temporary local server, no setup); with it,
the runs show up on that server.
"""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path

import typer


class ExecutorChoice(str, Enum):
    local = "local"
    ray = "ray"


def run(
    config: Path = typer.Argument(..., help="Pipeline config (YAML); see configs/."),
    executor: ExecutorChoice | None = typer.Option(None, "--executor", help="Encode executor (default: the config's encode.executor)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster: auto | ray://host:10001 (default: the config's, else a local Ray)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Reuse cached stage results and finished shards (default), or recompute all."),
) -> None:
    """Run every configured stage (encode → rules → gaps → synth → curate) as Prefect flows; logs on stderr."""
    from qscope_data.config import load_config

    load_config(config)  # a bad config fails here, with one line, before Prefect starts a server
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address  # ray.init() joins it when the config names no address
    from qscope_flows.pipeline import curation_pipeline, flatten

    if os.environ.get("QSCOPE_DEBUG") != "1" and not _debug():
        quiet_tracebacks()
    out = curation_pipeline(config_path=str(config.resolve()), executor=executor.value if executor else None,
                            resume=resume)
    for name, path in flatten(out):
        print(f"{name}: {path}")


class _OneLine(logging.Filter):
    """Prefect logs a failed task or flow with its traceback (2-3 per failure); without --debug keep one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            exc = record.exc_info[1] if record.exc_info else None
            record.msg = f"{str(record.getMessage()).splitlines()[0]}" + (f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})" if exc else "")
            record.args, record.exc_info, record.exc_text = (), None, None
        elif isinstance(record.msg, str) and "Traceback (most recent call last)" in record.getMessage():
            record.msg, record.args = record.getMessage().split("Traceback (most recent call last)")[0].rstrip() or "failed", ()
        return True


def quiet_tracebacks() -> None:
    """One line per failure in `qscope run`'s log (the CLI still prints the error itself; --debug shows everything)."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())


def _debug() -> bool:
    from qscope_data.cli import _state

    return bool(_state.get("debug"))


def validate(
    config: Path = typer.Argument(..., help="Pipeline config (YAML)."),
    model: bool = typer.Option(True, "--model/--no-model", help="Also check the model / SAE pair (headers only; needs them reachable)."),
) -> None:
    """Check the config, its inputs and rule files, and the model / SAE pair, without computing anything."""
    from qscope_data.config import load_config
    from qscope_data.stages import check_pipeline, configured_stages

    cfg = load_config(config)
    for line in check_pipeline(cfg, check_model=model):
        print(f"ok: {line}")
    print(f"{config}: valid (stages: {', '.join(configured_stages(cfg))})")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("validate")(validate)
