"""The encode stage on a Ray cluster: the same shards, the same encode code, the same store as the local executor.

Pipeline (Ray Data, streaming, so neither the driver nor the object store ever holds the corpus)::

    driver: `encode.plan` (validation, shard plan, resume state: the same job the local executor runs)
            → `job.pending()` → one staged file per pending shard in the writer's scratch folder (a pickle
              of its records, written and read only by this job; removed when the store is finished)
    read_binary_files(staged shards)                         Ray Data read, one row per shard
    .map(tokenize_shard, num_cpus=c)                         CPU tasks: tokenise with the model's tokenizer
    .map_batches(EncoderActor, num_gpus=G, num_cpus=c,       model + SAEs loaded once per actor; each batch is
                 batch_size=1, compute=ActorPool(size=N))    one shard: `encode_shard` (the local executor's
                                                             code) writes it via `StoreWriter` under its index
    driver: iter_rows() → one small marker per shard (progress), then `job.finish` → manifest.json

Shard files are named by shard index only (never Ray's uuids), written write-then-rename with a completion marker,
so a rerun resumes exactly like the local executor and the finished store is the same, shard for shard. OUT must be
on a filesystem that the driver and every worker see (a shared volume on a cluster).

On a small machine: actors and tokenise tasks claim fractional CPUs (actors that claim whole CPUs starve Ray Data's
read tasks on 2 cores and the job hangs), and `batch_size` is always passed.
"""

from __future__ import annotations

import functools
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qscope_data import atomic
from qscope_data.encode import EncodeJob, EncodeOptions, ExecutorRun, Shard, describe_loaded
from qscope_data.encode_options import RayOptions
from qscope_data.errors import QscopeError, UsageError
from qscope_data.passthrough import PassthroughColumns
from qscope_data.progress import Bar
from qscope_data.store import ShardMarker, StoreWriter

STAGED = "inputs"  # the writer's scratch folder for staged shards: part-{i:05d}.pkl


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join (or start) Ray once; an already-initialised Ray is used as it is (never re-initialised differently)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})") from None


def staged_path(writer: StoreWriter, index: int) -> Path:
    return writer.scratch(STAGED) / f"part-{index:05d}.pkl"


def _index_of(path: str) -> int:
    return int(Path(path).name.removeprefix("part-").removesuffix(".pkl"))


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    """One tokenizer per worker process (Ray reuses processes, so tasks after the first pay nothing) — loaded by the
    local executor's own loader, fallback chat template included, so both executors tokenise alike."""
    from qscope_data.capture import load_tokenizer

    return load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code)


def tokenize_shard(row: dict[str, Any], *, model: str, revision: str | None, trust_remote_code: bool,
                   options: dict) -> dict[str, Any]:
    """CPU task: a staged shard → its records, input rejects and tokenised documents (what the actor encodes)."""
    from qscope_data.spans import tokenize_records

    opts = EncodeOptions(**options)
    records, rejects = pickle.loads(row["bytes"])
    tokenized = tokenize_records(_tokenizer(model, revision, trust_remote_code), records, max_tokens=opts.max_tokens,
                                 span=opts.span, keep_first=opts.keep_first, text_as=opts.text_as)
    return {"index": _index_of(row["path"]), "payload": pickle.dumps((records, rejects, tokenized), protocol=5)}


class EncoderActor:
    """A Ray Data actor: the model and SAEs are loaded once in `__init__`; each call encodes and writes one shard."""

    def __init__(self, *, model: str, revision: str | None, trust_remote_code: bool, sae_spec: str, sae_k: int | None,
                 layers: list[int], options: dict, out: str, columns: PassthroughColumns):
        from qscope_data.capture import check_layers, load_model
        from qscope_data.encode import check_compatible, load_saes
        from qscope_data.torch_dtypes import parse_dtype

        self.options = EncodeOptions(**options)
        self.lm = load_model(model, device=self.options.device, dtype=parse_dtype(self.options.dtype),
                             revision=revision, trust_remote_code=trust_remote_code)
        check_layers(self.lm, layers)
        self.saes = load_saes(sae_spec, layers, device=self.options.device, k=sae_k)
        check_compatible(self.lm, self.saes)
        self.writer = StoreWriter(out, layers, token_level=self.options.token_level)
        self.columns = columns
        self.describe = json.dumps(describe_loaded(self.lm, self.saes))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from qscope_data.encode import encode_shard

        markers = []
        for index, payload in zip(batch["index"], batch["payload"]):
            records, rejects, tokenized = pickle.loads(payload)
            shard = Shard(int(index), records, rejects)
            marker = encode_shard(self.lm, self.saes, shard, self.writer, self.options, self.columns, tokenized=tokenized)
            markers.append(marker.model_dump_json())
        n = len(markers)
        return {"index": np.asarray(batch["index"], dtype=np.int64), "marker": np.array(markers, dtype=object),
                "describe": np.array([self.describe] * n, dtype=object)}


def _describe_task(model: str, revision: str | None, trust_remote_code: bool, sae_spec: str, sae_k: int | None,
                   layers: list[int], options: dict) -> dict:
    """For a resumed run whose shards were all done already: load once on a worker just to describe."""
    from qscope_data.capture import load_model
    from qscope_data.encode import load_saes
    from qscope_data.torch_dtypes import parse_dtype

    opts = EncodeOptions(**options)
    lm = load_model(model, device=opts.device, dtype=parse_dtype(opts.dtype), revision=revision,
                    trust_remote_code=trust_remote_code)
    return describe_loaded(lm, load_saes(sae_spec, layers, device=opts.device, k=sae_k))


def user_error(exc: BaseException) -> QscopeError | None:
    """The project error a Ray task raised, if any (Ray wraps it; the CLI should still print one line)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, QscopeError):
            return cur
        stack += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
    return None


@dataclass(frozen=True)
class RayExecutor:
    """Runs a job's pending shards on Ray (`RayOptions`: cluster address, actors, GPUs and CPUs per actor)."""

    options: RayOptions = field(default_factory=RayOptions)

    def check(self, options: EncodeOptions) -> None:
        if options.device.startswith("cuda") and self.options.gpus_per_worker <= 0:
            raise UsageError(f"--device {options.device} on Ray needs --gpus-per-worker > 0 (Ray hides GPUs from "
                             "actors without one)")

    def run(self, job: EncodeJob, bar: Bar) -> ExecutorRun:
        ray_options, options = self.options, job.options
        # Stage the pending shards (the plan is sequential; the work is not).
        columns, pending = job.scan.columns, []
        for shard, columns in job.pending(on_skip=bar.skip):
            atomic.write_bytes(staged_path(job.writer, shard.index),
                               pickle.dumps((shard.records, shard.rejects), protocol=5))
            pending.append(shard.index)
        inputs = job.inputs
        common = dict(model=inputs.model, revision=inputs.revision, trust_remote_code=inputs.trust_remote_code)
        opts = options.model_dump()
        done = ExecutorRun(described={})
        loop_start = time.perf_counter()
        connect(ray_options.address)
        import ray

        try:
            if pending:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False  # ours counts documents; Ray's would count blocks
                ds = (
                    ray.data.read_binary_files([str(staged_path(job.writer, i)) for i in pending], include_paths=True,
                                               override_num_blocks=len(pending))
                    .map(tokenize_shard, fn_kwargs={**common, "options": opts}, num_cpus=ray_options.tokenize_cpus,
                         compute=ray.data.TaskPoolStrategy(size=ray_options.tokenize_tasks or ray_options.workers))
                    .map_batches(
                        EncoderActor,
                        fn_constructor_kwargs={**common, "sae_spec": inputs.sae, "sae_k": inputs.sae_k,
                                               "layers": job.layers, "options": opts, "out": str(job.out),
                                               "columns": columns},
                        batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=ray_options.workers),
                        num_gpus=ray_options.gpus_per_worker or None, num_cpus=ray_options.cpus_per_worker,
                    )
                )
                for row in ds.iter_rows():
                    marker = ShardMarker.model_validate_json(row["marker"])
                    done.described = done.described or json.loads(row["describe"])
                    done.documents += marker.rows
                    done.tokens += int(marker.stats.get("n_tokens", 0))
                    bar.advance(marker.rows, work=int(marker.stats.get("n_tokens", 0)))
            else:
                remote = ray.remote(num_cpus=ray_options.cpus_per_worker, num_gpus=ray_options.gpus_per_worker or None)
                done.described = ray.get(remote(_describe_task).remote(
                    sae_spec=inputs.sae, sae_k=inputs.sae_k, layers=job.layers, options=opts, **common))
        except Exception as exc:
            user = user_error(exc)
            if user is not None:
                raise user from None
            raise
        done.encode_seconds = time.perf_counter() - loop_start
        return done
