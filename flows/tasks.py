"""Prefect tasks around the stage functions of `qscope_data.stages`, and the policies every stage shares.

- Cache: a task's key is (stage, the config sections it reads, the bytes of what it reads), from
  `stages.settings_digest` / `stages.inputs_digest`; results persist under `workdir/.prefect/results`. A task
  records its outputs' listing when it finishes (`stages.record_outputs`); a cached result is used only while
  that listing still holds (an output deleted or changed refreshes the task). `resume=False` refreshes the cache
  (and starts stores over).
- Retries: `orchestration.retries` with the backoff list `orchestration.retry_delay_seconds`; a `UsageError`
  (bad config, bad input) is never retried — it would fail the same way.
- GPU stages (encode, synth) hold a slot of the global concurrency limit `orchestration.gpu_limit`, created with
  `orchestration.gpu_slots` slots when it does not exist yet (ephemeral mode starts with none).
"""

from __future__ import annotations

import hashlib
import re
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any, Iterator

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext


from qscope_data import code_version, stages
from qscope_data.config import PipelineConfig
from qscope_data.errors import UsageError


_CODE_VERSION = code_version()


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """(stage, config sections it reads, input manifests / file hashes) → the cache key."""
    config: PipelineConfig = parameters["config"]
    stage, corpus = parameters["stage"], parameters.get("corpus")
    parts = [stage, _CODE_VERSION, config.workdir, stages.settings_digest(config, stage, corpus),
             stages.inputs_digest(stages.stage_inputs(config, stage, parameters["reads"], corpus))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def retry_unless_usage_error(task: Task, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O, a lost worker, an OOM'd GPU); never a `UsageError`."""
    try:
        state.result()
    except UsageError:
        return False
    except Exception:
        return True
    return True


def configured(t: Task, config: PipelineConfig, resume: bool, key: str | None = None) -> Task:
    """The task with the config's retries / backoff and the workdir's result storage. Its cached result counts only
    while the outputs it recorded (under `key`, default the task's name) are all there and unchanged."""
    o = config.orchestration
    intact = stages.outputs_intact(config, key or t.name)
    return t.with_options(retries=o.retries, retry_delay_seconds=list(o.retry_delay_seconds),
                          result_storage=stages.layout(config).results, refresh_cache=not (resume and intact))


def finished(config: PipelineConfig, key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Record what the stage's outputs look like now (for `configured`'s check), and pass the result on."""
    stages.record_outputs(config, key, result["outputs"])
    return result


def ensure_gpu_limit(config: PipelineConfig) -> None:
    """Create the global concurrency limit GPU stages take a slot of, if the server does not have it yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name, slots = config.orchestration.gpu_limit, config.orchestration.gpu_slots
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # another flow created it in between
                pass


@contextmanager
def gpu_slot(config: PipelineConfig) -> Iterator[None]:
    """Hold a slot of the GPU limit; waiting past `gpu_slot_timeout_s` is an error that says how to free a slot a
    crashed run still holds (Prefect cannot tell a dead holder from a slow one)."""
    o = config.orchestration
    try:
        ctx = concurrency(o.gpu_limit, occupy=1, strict=False, timeout_seconds=o.gpu_slot_timeout_s)
        ctx.__enter__()
    except TimeoutError:
        raise UsageError(
            f"no slot of the Prefect concurrency limit {o.gpu_limit!r} came free within {o.gpu_slot_timeout_s:g} s; if "
            f"no other run is using the GPU, a crashed one holds it: free it with `prefect gcl update {o.gpu_limit} "
            "--active-slots 0` (or raise orchestration.gpu_slot_timeout_s)") from None
    try:
        yield
    except BaseException:
        if not ctx.__exit__(*sys.exc_info()):
            raise
    else:
        ctx.__exit__(None, None, None)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def publish(config: PipelineConfig, result: dict[str, Any], *parts: str) -> None:
    """The stage's summary as a markdown artifact (also for cached results), and one log line."""
    row = stages.stage_named(result["stage"])
    create_markdown_artifact(markdown=result["markdown"] or f"{result['stage']}: done",
                             key=artifact_key(config.name, row.artifact or row.name, *parts),
                             description=f"qscope {result['stage']} ({config.name})")
    get_run_logger().info("%s%s → %s", result["stage"], f" {' '.join(parts)}" if parts else "",
                          ", ".join(f"{k}: {v}" for k, v in result["outputs"].items()))


def run_stage(config: PipelineConfig, stage: str, reads: dict[str, str | None], corpus: str | None = None,
              executor: stages.Executor | None = None, resume: bool = True) -> dict[str, Any]:
    """One stage of the `stages.STAGES` table: its function with its upstream outputs (`reads`), inside a GPU slot
    for GPU stages; its outputs recorded for the cache check."""
    row = stages.stage_named(stage)
    kwargs: dict[str, Any] = dict(reads)
    if row.corpus == stages.EVERY_CORPUS:
        kwargs.update(corpus=corpus, resume=resume)
    if row.gpu:
        kwargs["executor"] = executor
    with gpu_slot(config) if row.gpu else nullcontext():
        return finished(config, row.key(corpus), asdict(row.run(config, **kwargs)))


# One Prefect task per stage (the task's name is the stage's: cache keys, artifacts and the UI use it).
TASKS: dict[str, Task] = {
    row.name: task(name=row.name, task_run_name=row.key("{corpus}"), cache_key_fn=stage_cache_key, persist_result=True,
                   retry_condition_fn=retry_unless_usage_error)(run_stage)
    for row in stages.STAGES
}
