"""The encode stage: corpus records → model forward (stopped after the deepest SAE layer) → TopK SAE → feature store.

There is one encode path. `featurize` / `encode_records` turn a list of records into document tables (one per
layer); `encode_shard` does that for one shard and writes it through the `StoreWriter`. `run` is the stage: it
plans the job once (`plan`: validation, shard plan, resume state) and hands the pending shards to an executor —
this process (`executors.local`) or Ray actors (`executors.ray`), both calling `encode_shard` — then writes the
manifest. Synthesis verification calls `featurize` on its candidates, so every path aggregates features alike.

Sharding (what makes resume exact): the input is read in order and cut into shards of ``shard_rows`` *valid*
records — shard i holds valid records [i·shard_rows, (i+1)·shard_rows). Rejected input lines do not count; each
goes with the shard that is open when it is read (the one holding the next valid record before it was full, i.e.
rejects after a shard's last record belong to that shard; trailing rejects to the last shard). The plan depends
only on the input and ``shard_rows``, so a rerun finds the same shards and skips those with a completion marker.
Records that fail later (a chat template that raises) are rejected inside their shard, which then has fewer rows.

Aggregation per document and layer, over the *aggregated positions* (the span's positions, padding never,
position 0 only with ``keep_first``): feature_ids = features active at ≥ 1 position (ascending), max_acts = their
maximum, fire_counts = positions where active. Batches are formed by length within a shard (right padding: causal
and linear-attention blocks never see the padding of their own sequence) and rows come back in input order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, computed_field

from qscope_data.capture import LoadedModel, capture
from qscope_data import code_version  # noqa: F401 (re-exported: the executors import it from here)
from qscope_data.encode_options import EncodeOptions
from qscope_data.errors import DataError, UsageError
from qscope_data.inputs import Record, Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.passthrough import PassthroughColumns
from qscope_data.progress import Bar
from qscope_data.result import Result
from qscope_data.sae import SparseAutoencoder, load_sae
from qscope_data.spans import reads_as_chat, tokenize_records
from qscope_data.store import (
    FEATURE_SCHEMA,
    TOKEN_SCHEMA,
    FeatureStore,
    SAEInfo,
    JobState,
    ShardMarker,
    StoreManifest,
    StoreWriter,
)


# -- records → tables ---------------------------------------------------------------------------------------


@dataclass
class EncodedRecords:
    docs: dict[int, pa.Table]  # layer → document table (rows in input order, rejected records left out)
    tokens: dict[int, pa.Table] | None  # layer → token table (with token_level)
    rejects: list[Reject] = field(default_factory=list)
    n_tokens: int = 0
    n_positions: int = 0


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: a GPU out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def pad_batch(docs: list, batch: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and aggregation mask for the documents `batch` indexes."""
    width = max(docs[j].n_tokens for j in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    agg = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, j in enumerate(batch):
        n = docs[j].n_tokens
        ids[row, :n] = torch.as_tensor(docs[j].input_ids)
        attn[row, :n] = 1
        agg[row, :n] = torch.from_numpy(docs[j].aggregate)
    return ids, attn, agg


def featurize(
    lm: LoadedModel, saes: dict[int, SparseAutoencoder], records: list[Record], options: EncodeOptions
) -> dict[int, pa.Table]:
    """Document tables {layer: table} for `records`; records that cannot be tokenised have no row."""
    return encode_records(lm, saes, records, options).docs


def encode_records(
    lm: LoadedModel,
    saes: dict[int, SparseAutoencoder],
    records: list[Record],
    options: EncodeOptions,
    columns: PassthroughColumns | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    tokenized: list | None = None,
) -> EncodedRecords:
    """Tokenise, batch by length, capture every layer in one forward, encode, aggregate per document.

    `columns` fixes the pass-through types (corpus-wide); without it they are inferred from `records`.
    `on_batch(n_docs, n_tokens)` is called after each batch (progress).
    `tokenized`: `tokenize_records(...)` of `records` with these options, done elsewhere (the Ray executor's CPU tasks).
    """
    layers = sorted(saes)
    if tokenized is None:
        tokenized = tokenize_records(lm.tokenizer, records, max_tokens=options.max_tokens, span=options.span,
                                     keep_first=options.keep_first, text_as=options.text_as)
    rejects = [Reject(r.file, r.line, t, r.doc_id) for r, t in zip(records, tokenized) if isinstance(t, str)]
    ok = [i for i, t in enumerate(tokenized) if not isinstance(t, str)]
    docs = [tokenized[i] for i in ok]
    kept = [records[i] for i in ok]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    parts: dict[int, list] = {n: [] for n in layers}
    token_parts: dict[int, list] = {n: [] for n in layers}
    device = lm.device
    with torch.inference_mode():
        for batch in plan_batches([d.n_tokens for d in docs], options.batch_size):
            ids, attn, agg = pad_batch(docs, batch, pad_id)
            hidden = capture(lm, ids, attn, layers)
            agg_dev = agg.to(device)
            where = agg.nonzero()  # [N, 2] (row, position), row-major: the order of hidden[n][agg]
            doc_of = torch.as_tensor(batch, dtype=torch.long)[where[:, 0]]
            for n in layers:
                sae = saes[n]
                x = hidden[n][agg_dev]
                values, fids = sae.encode(x.to(sae.device))
                values, fids = values.cpu(), fids.cpu()
                parts[n].append(_aggregate(doc_of, values, fids, sae.d_sae))
                if options.token_level:
                    token_parts[n].append((doc_of, where[:, 1], ids[where[:, 0], where[:, 1]], values, fids))
            if on_batch is not None:
                on_batch(len(batch), int(attn.sum()))
    if columns is None:
        columns = options.passthrough().observe_all(r.fields for r in kept)
    passthrough = columns.table([r.fields for r in kept])
    doc_ids = pa.array([r.doc_id for r in kept], pa.string())
    n_tokens = np.array([d.n_tokens for d in docs], dtype=np.int32)
    n_positions = np.array([d.n_positions for d in docs], dtype=np.int32)
    tables = {n: _doc_table(doc_ids, n_tokens, n_positions, parts[n], saes[n].d_sae, passthrough) for n in layers}
    tokens = None
    if options.token_level:
        tokens = {n: _token_table(doc_ids, token_parts[n]) for n in layers}
    return EncodedRecords(tables, tokens, rejects, int(n_tokens.sum()), int(n_positions.sum()))


def _aggregate(doc: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, d_sae: int):
    """Per (doc, feature) over positions: max activation and number of positions where active. Keys sorted."""
    valid = ids >= 0
    keys = (doc.unsqueeze(1) * d_sae + ids)[valid]
    vals = values[valid]
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    maxes = torch.full((uniq.numel(),), float("-inf"), dtype=torch.float32).scatter_reduce_(0, inverse, vals, "amax")
    counts = torch.bincount(inverse, minlength=uniq.numel())
    return uniq, maxes, counts


def _doc_table(doc_ids: pa.Array, n_tokens: np.ndarray, n_positions: np.ndarray, parts: list, d_sae: int,
               passthrough: pa.Table) -> pa.Table:
    n_docs = len(doc_ids)
    if parts:
        keys = torch.cat([p[0] for p in parts])
        order = torch.argsort(keys)  # docs are disjoint across batches, so keys are unique
        keys, maxes, counts = keys[order], torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]
    else:
        keys, maxes, counts = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    doc = (keys // d_sae).numpy()
    offsets = np.zeros(n_docs + 1, dtype=np.int32)
    np.cumsum(np.bincount(doc, minlength=n_docs), out=offsets[1:])
    off = pa.array(offsets, pa.int32())

    def lists(flat: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(off, pa.array(flat, typ))

    arrays = [
        doc_ids,
        pa.array(n_tokens, pa.int32()),
        pa.array(n_positions, pa.int32()),
        lists((keys % d_sae).numpy().astype(np.int32), pa.int32()),
        lists(maxes.numpy().astype(np.float32), pa.float32()),
        lists(counts.numpy().astype(np.int32), pa.int32()),
    ]
    table = pa.Table.from_arrays(arrays, schema=FEATURE_SCHEMA)
    for name in passthrough.column_names:
        table = table.append_column(passthrough.schema.field(name), passthrough.column(name))
    return table


def _token_table(doc_ids: pa.Array, parts: list) -> pa.Table:
    if not parts:
        return TOKEN_SCHEMA.empty_table()
    doc, pos, tok, values, ids = (torch.cat([p[i] for p in parts]) for i in range(5))
    order = torch.from_numpy(np.lexsort((pos.numpy(), doc.numpy())))
    doc, pos, tok, values, ids = doc[order], pos[order], tok[order], values[order], ids[order]
    valid = ids >= 0  # encode returns values descending with -1 padding at the end of each row
    offsets = np.zeros(len(doc) + 1, dtype=np.int32)
    np.cumsum(valid.sum(1).numpy(), out=offsets[1:])
    off = pa.array(offsets, pa.int32())
    return pa.Table.from_arrays([
        doc_ids.take(pa.array(doc.numpy())),
        pa.array(pos.numpy().astype(np.int32), pa.int32()),
        pa.array(tok.numpy().astype(np.int32), pa.int32()),
        pa.ListArray.from_arrays(off, pa.array(ids[valid].numpy().astype(np.int32), pa.int32())),
        pa.ListArray.from_arrays(off, pa.array(values[valid].numpy().astype(np.float32), pa.float32())),
    ], schema=TOKEN_SCHEMA)


# -- input → shards -----------------------------------------------------------------------------------------


@dataclass
class Shard:
    index: int
    records: list[Record]
    rejects: list[Reject]


@dataclass
class InputScan:
    paths: list[str]
    fingerprint: str
    n_records: int | None  # None when streaming (not scanned up front)
    n_rejects: int | None
    n_shards: int | None
    columns: PassthroughColumns | None


def iter_shards(paths: list[str], options: EncodeOptions) -> Iterator[Shard]:
    """The deterministic shard plan (see the module docstring). `on_error=fail` raises at the first reject."""
    index, records, rejects = 0, [], []
    for item in iter_records(paths, text_field=options.text_field, id_field=options.id_field, split=options.split,
                             streaming=options.streaming):
        if isinstance(item, Reject):
            if options.on_error == "fail":
                raise DataError(f"{item.file}:{item.line}: {item.reason} (--on-error fail)")
            rejects.append(item)
            continue
        if options.long_records == "reject" and (size := record_bytes(item)) > options.max_record_bytes:
            item = Reject(item.file, item.line, f"record of {size:,} bytes exceeds max_record_bytes="
                          f"{options.max_record_bytes:,} (--long-records truncate to encode it anyway)", item.doc_id)
            if options.on_error == "fail":
                raise DataError(f"{item.file}:{item.line}: {item.reason} (--on-error fail)")
            rejects.append(item)
            continue
        if len(records) == options.shard_rows:
            yield Shard(index, records, rejects)
            index, records, rejects = index + 1, [], []
        records.append(item)
    if records or rejects:
        yield Shard(index, records, rejects)


def record_bytes(record: Record) -> int:
    """UTF-8 size of what encode would tokenise: the text, or every message's content."""
    if record.text is not None:
        return len(record.text.encode("utf-8"))
    return sum(len(str(m.get("content", "")).encode("utf-8")) for m in record.messages or [])


def resolve_inputs(inputs: str | Path | list) -> InputScan:
    """Resolve files / globs / folders / datasets (fails fast on a wrong path) and fingerprint their bytes."""
    paths = [os.path.abspath(p) if os.path.exists(p) else p for p in resolve_paths(inputs)]
    return InputScan(paths, input_fingerprint(paths), None, None, None, None)


def scan_inputs(scan: InputScan, options: EncodeOptions) -> InputScan:
    """Read the inputs once before encoding: count records and shards, fix the pass-through types, and (with
    on_error=fail) stop at the first malformed record before anything is written. Skipped when streaming."""
    if options.streaming:
        return scan
    columns = options.passthrough()
    n_records = n_rejects = n_shards = 0
    for shard in iter_shards(scan.paths, options):
        n_shards += 1
        n_records += len(shard.records)
        n_rejects += len(shard.rejects)
        for rec in shard.records:
            columns.observe(rec.fields)
    if n_shards == 0:
        raise UsageError(f"input {', '.join(scan.paths)}: holds no records")
    columns.observe_all([])
    return InputScan(scan.paths, scan.fingerprint, n_records, n_rejects, n_shards, columns)


def encode_shard(
    lm: LoadedModel,
    saes: dict[int, SparseAutoencoder],
    shard: Shard,
    writer: StoreWriter,
    options: EncodeOptions,
    columns: PassthroughColumns,
    on_batch: Callable[[int, int], None] | None = None,
    tokenized: list | None = None,
) -> ShardMarker:
    """Encode one shard and write it (files, rejects, marker). The unit a worker runs; safe to repeat."""
    result = encode_records(lm, saes, shard.records, options, columns, on_batch=on_batch, tokenized=tokenized)
    if result.rejects and options.on_error == "fail":
        first = result.rejects[0]
        raise DataError(f"{first.file}:{first.line}: {first.reason} (--on-error fail)")
    rejects = [r.to_json() for r in sorted(shard.rejects + result.rejects, key=lambda r: (r.file, r.line))]
    stats = {"n_records": len(shard.records), "n_tokens": result.n_tokens, "n_positions": result.n_positions,
             "n_chat": sum(1 for r in shard.records if reads_as_chat(r, options.text_as))}
    return writer.write_shard(shard.index, result.docs, tokens=result.tokens, rejects=rejects, stats=stats)


# -- the job: planned once, run by an executor ---------------------------------------------------------------


class EncodeSummary(BaseModel):
    out: str
    state: Literal["new", "resume", "finished"]  # what the run found in --out
    documents: int
    rejected: int
    tokens: int
    shards: int
    shards_skipped: int = 0
    seconds: float = 0.0  # the whole run, model loading included
    load_seconds: float = 0.0  # loading the model and SAEs
    encode_seconds: float = 0.0  # the shard loop
    tokens_encoded: int = 0  # by this run (resumed shards excluded)
    documents_encoded: int = 0

    @computed_field
    @property
    def tokens_per_s(self) -> float:
        return self.tokens_encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    @computed_field
    @property
    def documents_per_s(self) -> float:
        return self.documents_encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


def load_saes(spec: str, layers: list[int], *, device: str = "cpu", k: int | None = None) -> dict[int, SparseAutoencoder]:
    """One SAE per requested layer from `spec` (a Qwen-Scope folder holds one file per layer)."""
    saes: dict[int, SparseAutoencoder] = {}
    for n in layers:
        sae = load_sae(spec, n, k=k, device=device)
        if sae.layer is not None and sae.layer != n:
            raise UsageError(f"SAE {spec} reads the output of block {sae.layer}, not --layer {n}")
        saes[n] = sae
    return saes


def check_compatible(lm: LoadedModel, saes: dict[int, SparseAutoencoder]) -> None:
    for n, sae in saes.items():
        if sae.d_model != lm.d_model:
            raise UsageError(f"SAE {sae.source or ''} for layer {n} has d_model {sae.d_model}, but model "
                             f"{lm.model_id} has hidden size {lm.d_model}")


def describe_loaded(lm: LoadedModel, saes: dict[int, SparseAutoencoder]) -> dict:
    """What the manifest records about the model and SAEs, taken from the loaded objects (JSON-able: a Ray actor
    sends it back to the driver)."""
    return {
        "model": lm.describe(),
        "saes": [SAEInfo(layer=n, source=s.source, format=s.format, k=s.k, d_sae=s.d_sae, d_model=s.d_model,
                         hook=s.hook).model_dump() for n, s in saes.items()],
    }


@dataclass(frozen=True)
class EncodeInputs:
    """What the encode stage reads: the corpus (files, globs, folders or a saved dataset), the model and its SAEs
    (folders, files or hub ids), and the blocks whose output the SAEs read (none: the SAE's own)."""

    model: str
    sae: str
    input: str | Path | list | tuple
    layers: tuple[int, ...] | list[int] = ()
    revision: str | None = None
    trust_remote_code: bool = False
    sae_k: int | None = None


def job_identity(inputs: EncodeInputs, layers: list[int], scan: InputScan, options: EncodeOptions) -> dict:
    """What makes two runs the same job (resume) — specs, not loaded objects, so a finished rerun loads nothing."""
    return {
        "model": {"id": os.path.abspath(inputs.model) if os.path.exists(inputs.model) else inputs.model,
                  "revision": inputs.revision},
        "sae": {"spec": os.path.abspath(inputs.sae) if os.path.exists(inputs.sae) else inputs.sae, "k": inputs.sae_k},
        "layers": sorted(set(layers)),
        "options": options.output_options(),
        "inputs": {"paths": scan.paths, "fingerprint": scan.fingerprint},
        # What changes the floating-point result without changing the output's meaning: the device type (kernels,
        # accumulation) and the batch size (which documents share a padded batch, and the matmul shapes). A resumed
        # store must not mix shards computed both ways; the device index (cuda:0 vs cuda:1) does not matter.
        "numerics": {"device": options.device.split(":")[0], "batch_size": options.batch_size},
    }


Overwrite = bool | Literal["other-job"]


@dataclass
class ExecutorRun:
    """What an executor hands back after running a job's pending shards."""

    described: dict  # `describe_loaded` of the model and SAEs it loaded
    documents: int = 0  # encoded by this run
    tokens: int = 0
    load_seconds: float = 0.0
    encode_seconds: float = 0.0


class Executor(Protocol):
    """Runs an `EncodeJob`'s pending shards (`job.pending()`), each through `encode_shard` into `job.writer`."""

    def check(self, options: EncodeOptions) -> None:
        """Refuse options this executor cannot run, before the job is planned (nothing written yet)."""

    def run(self, job: "EncodeJob", bar: Bar) -> ExecutorRun: ...


@dataclass
class EncodeJob:
    """An encode planned once (`plan`): inputs resolved and fingerprinted, layers fixed, the job's identity, what the
    store folder already holds. Executors only run what `pending()` yields; `finish` writes the manifest. The shard
    plan is sequential (doc ids and shard cuts depend on input order); the shards' work is not."""

    options: EncodeOptions
    inputs: EncodeInputs
    out: Path
    layers: list[int]
    identity: dict
    writer: StoreWriter
    state: JobState
    scan: InputScan
    started: float
    n_shards: int = 0  # counted by `pending`
    skipped: int = 0

    def pending(self, on_skip: Callable[[int], None] | None = None) -> Iterator[tuple[Shard, PassthroughColumns]]:
        """The shards still to encode, with the pass-through column types they are written with (fixed by the input
        scan, or when streaming by the first shard encoded). Finished shards of a resumed job are skipped
        (`on_skip(n_documents)`)."""
        columns = self.scan.columns
        self.n_shards = self.skipped = 0
        for shard in iter_shards(self.scan.paths, self.options):
            self.n_shards += 1
            if self.state == "resume" and self.writer.done(shard.index):
                self.skipped += 1
                if on_skip is not None:
                    on_skip(len(shard.records))
                continue
            if columns is None:
                columns = self.options.passthrough().observe_all(r.fields for r in shard.records)
            yield shard, columns

    def finish(self, done: ExecutorRun) -> FeatureStore:
        """Merge the shards into the store (manifest last)."""
        manifest = StoreManifest(
            model=done.described["model"], saes=[SAEInfo(**s) for s in done.described["saes"]],
            options=self.options.output_options(),
            inputs={"paths": self.scan.paths, "fingerprint": self.scan.fingerprint, "n_records": self.scan.n_records},
            code_version=code_version(),
        )
        return self.writer.finish(manifest, self.n_shards)

    def summary(self, store: FeatureStore, done: ExecutorRun | None) -> EncodeSummary:
        """What the store holds and what this run did (`done` None: a finished job, nothing loaded or written)."""
        m = store.manifest
        shards = self.n_shards if done is not None else int(m.stats.get("n_shards", 0))
        ran = dict(load_seconds=done.load_seconds, encode_seconds=done.encode_seconds, tokens_encoded=done.tokens,
                   documents_encoded=done.documents) if done is not None else {}
        return EncodeSummary(out=str(self.out), state=self.state, documents=m.n_documents, rejected=m.n_rejected,
                             tokens=int(m.stats.get("n_tokens", 0)), shards=shards,
                             shards_skipped=self.skipped if done is not None else shards,
                             seconds=time.perf_counter() - self.started, **ran)


def plan(options: EncodeOptions, inputs: EncodeInputs, out: str | Path, *, overwrite: Overwrite = False) -> EncodeJob:
    """Plan the encode of `inputs` into `out`, validating everything before anything is written: the inputs resolve,
    the layers exist in the model and each SAE's d_model is the model's hidden size (from their headers, so a CPU
    driver can plan a GPU job), and (with on_error=fail) no input record is malformed. A finished job is planned
    as such and not scanned. `overwrite`: True starts over; "other-job" starts over only when `out` holds another
    job's store (the pipeline owns its folders), else resumes; False resumes and refuses another job's store."""
    from qscope_data.preflight import check_pair, model_shape, sae_shape

    started, out = time.perf_counter(), Path(out)
    layers = list(dict.fromkeys(inputs.layers))
    scan = resolve_inputs(inputs.input)
    if not layers:
        found = sae_shape(inputs.sae, None, k=inputs.sae_k).layer
        if found is None:
            raise UsageError(f"SAE {inputs.sae} does not say which layer it reads; pass --layer")
        layers = [found]
    writer = StoreWriter(out, layers, token_level=options.token_level)
    identity = job_identity(inputs, layers, scan, options)
    try:
        state = writer.state(identity, overwrite=overwrite is True)
    except UsageError:
        if overwrite != "other-job":
            raise
        overwrite = True  # another job's store in the pipeline's own folder: inputs or settings changed since
        state = writer.state(identity, overwrite=True)
    job = EncodeJob(options, inputs, out, layers, identity, writer, state, scan, started)
    if job.state == "finished":
        return job
    shape = model_shape(inputs.model, revision=inputs.revision, trust_remote_code=inputs.trust_remote_code)
    for n in layers:
        check_pair(shape, sae_shape(inputs.sae, n, k=inputs.sae_k), n)
    job.scan = scan_inputs(scan, options)
    job.state = writer.begin(identity, overwrite=overwrite is True)
    return job


def run(options: EncodeOptions, inputs: EncodeInputs, out: str | Path, *, progress: bool | None = None,
        executor: Executor | None = None, overwrite: Overwrite = False) -> Result[FeatureStore]:
    """The encode stage (`qscope encode`, the pipeline's `encode`): `inputs` into the feature store at `out`; an
    unfinished run there is resumed, a finished one left as it is. `executor`: where the shards run (default: this
    process, `executors.local.LocalExecutor`; `executors.ray.RayExecutor` on a Ray cluster) — same store either way."""
    if executor is None:
        from qscope_data.executors.local import LocalExecutor

        executor = LocalExecutor()
    executor.check(options)
    job = plan(options, inputs, out, overwrite=overwrite)
    if job.state == "finished":
        done, store = None, FeatureStore(job.out)
    else:
        with Bar("encode", job.scan.n_records, enabled=progress, unit="docs", rate_unit="tok") as bar:
            done = executor.run(job, bar)
        store = job.finish(done)
    return Result(store, {"store": job.out}, job.summary(store, done).model_dump())
