"""Where a GPU stage runs: in this process (local executor) or as one Ray task holding the GPUs an encoder actor
holds (Ray executor).

With the Ray executor the flow process is the Ray driver, which deploy/kuberay puts on a head pod that advertises
no CPUs and has no GPU. The encode stage's model lives in Ray Data actors (`executors.ray`); every other stage that
loads a model — synthesis: a local generator and the verifying re-encode — must leave the driver the same way, or
an 8B model would be loaded on the head (out of memory, or on its CPU). `run_placed` is that one way: the stage
function and its arguments go to a Ray task with `num_gpus = encode.gpus_per_worker`, its outputs are written
where the stage writes them (the shared volume), and the result comes back with where it ran.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from qscope_data.config import PipelineConfig
from qscope_data.executors.ray import RayOptions, user_error, connect

T = TypeVar("T")


def ray_options(config: PipelineConfig) -> RayOptions:
    """The Ray executor's settings of a pipeline config (`encode.*`): every GPU stage asks for the same resources."""
    enc = config.encode
    return RayOptions(address=enc.ray_address, workers=enc.workers, gpus_per_worker=enc.gpus_per_worker,
                      cpus_per_worker=enc.cpus_per_worker)


def _here(executor: str, num_gpus: float = 0.0) -> dict[str, Any]:
    place: dict[str, Any] = {"executor": executor, "pid": os.getpid(), "num_gpus": num_gpus}
    if executor == "ray":
        import ray

        ctx = ray.get_runtime_context()
        place |= {"node": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    return place


def _placed(fn: Callable[..., T], args: tuple, kwargs: dict, num_gpus: float) -> tuple[T, dict[str, Any]]:
    """The Ray task's body: run the stage function, say where."""
    return fn(*args, **kwargs), _here("ray", num_gpus)


def run_placed(fn: Callable[..., T], /, *args: Any, executor: str, ray: RayOptions | None = None,
               **kwargs: Any) -> tuple[T, dict[str, Any]]:
    """`fn(*args, **kwargs)` in this process (executor "local") or as one Ray task asking for `ray.gpus_per_worker`
    GPUs and `ray.cpus_per_worker` CPUs (executor "ray"); returns (its result, where it ran). A project error the
    task raised comes back as itself (one line at the CLI), not wrapped in Ray's error."""
    if executor != "ray":
        return fn(*args, **kwargs), _here("local")
    opts = ray or RayOptions()
    connect(opts.address)
    import ray as ray_api

    name = f"{getattr(fn, '__module__', 'qscope_data')}.{getattr(fn, '__qualname__', 'stage')}"  # every stage's is `run`
    task = ray_api.remote(_placed).options(num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker, name=name,
                                           max_retries=0)
    try:
        return ray_api.get(task.remote(fn, args, kwargs, opts.gpus_per_worker))
    except Exception as exc:
        user = user_error(exc)
        if user is not None:
            raise user from None
        raise
