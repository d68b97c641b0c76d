"""CLI: `qscope encode` — a corpus into a feature store (thin: parse, call `qscope_data.encode.run`, print)."""

from __future__ import annotations

from pathlib import Path

import typer

from qscope_data.cli.params import option
from qscope_data.encode_options import EncodeOptions, RayOptions
from qscope_data.outputs import folder_option


def encode(
    model: str = typer.Option(..., "--model", help="Model folder or hub id (Qwen3, Qwen3-MoE, Qwen3.5, … or a BERT-family encoder)."),
    sae: str = typer.Option(..., "--sae", help="SAE folder, file or hub repo id (one SAE per layer for Qwen-Scope)."),
    layer: list[int] = typer.Option([], "--layer", help="Block whose output the SAE reads (repeat for several; default: the SAE's own)."),
    input: list[str] = typer.Option(..., "--input", help="JSONL / Parquet files, globs, folders, or a saved HF dataset (repeatable)."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Store folder (created; an unfinished run there is resumed)."),
    text_field: str = option(EncodeOptions, "text_field", "--text-field"),
    id_field: str = option(EncodeOptions, "id_field", "--id-field", help="Record id field (absent: a stable content hash)."),
    max_tokens: int = option(EncodeOptions, "max_tokens", "--max-tokens", help="Truncate each record to its first N tokens."),
    batch_size: int = option(EncodeOptions, "batch_size", "--batch-size"),
    device: str = option(EncodeOptions, "device", "--device", help="cpu | cuda | cuda:N"),
    dtype: str = option(EncodeOptions, "dtype", "--dtype", help="auto | float32 | bfloat16 | float16"),
    keep_first: bool = option(EncodeOptions, "keep_first", "--keep-first", help="Aggregate position 0 too (attention-sink outliers)."),
    span: str = option(EncodeOptions, "span", "--span", help="Chat records: all | prompt | response positions."),
    text_as: str = option(EncodeOptions, "text_as", "--text-as", help="Plain-text records: text (as they are) | user (as the user turn of a chat, via its template)."),
    token_level: bool = option(EncodeOptions, "token_level", "--token-level", help="Also write the per-position top-k table."),
    drop_text: bool = option(EncodeOptions, "drop_text", "--drop-text", help="Leave text / messages out of the store."),
    on_error: str = option(EncodeOptions, "on_error", "--on-error", help="skip: bad records go to rejects.jsonl; fail: exit 2 at the first."),
    shard_rows: int = option(EncodeOptions, "shard_rows", "--shard-rows", help="Records per shard (the unit of resume)."),
    max_record_bytes: int = option(EncodeOptions, "max_record_bytes", "--max-record-bytes", help="Records longer than this (UTF-8 bytes of text / messages) are handled by --long-records."),
    long_records: str = option(EncodeOptions, "long_records", "--long-records", help="reject: to rejects.jsonl; truncate: tokenise whole, keep --max-tokens (recorded in the manifest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over instead of resuming."),
    split: str | None = option(EncodeOptions, "split", "--split", help="Split of a Hugging Face dataset input."),
    streaming: bool = option(EncodeOptions, "streaming", "--streaming", help="Stream a hub dataset (no up-front count, no ETA)."),
    revision: str | None = typer.Option(None, "--revision", help="Model revision (hub)."),
    sae_k: int | None = typer.Option(None, "--sae-k", help="k when the SAE files do not say it."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    executor: str = typer.Option("local", "--executor", help="local: this process; ray: Ray Data encoder actors."),
    ray_address: str | None = option(RayOptions, "address", "--ray-address", help="Ray: auto | ray://host:10001 (default: RAY_ADDRESS, else a local Ray)."),
    workers: int = option(RayOptions, "workers", "--workers", help="Ray: encoder actors (one model copy each)."),
    gpus_per_worker: float = option(RayOptions, "gpus_per_worker", "--gpus-per-worker", help="Ray: GPUs per actor (fractional packs several on a GPU)."),
) -> None:
    """Encode a corpus with a model's SAE features into a resumable Parquet feature store."""

    from qscope_data.encode import EncodeInputs, run
    from qscope_data.errors import UsageError

    options = EncodeOptions(  # a bad value: one line naming the flag (cli.main)
        max_tokens=max_tokens, keep_first=keep_first, span=span, text_as=text_as, text_field=text_field, id_field=id_field,
        drop_text=drop_text, token_level=token_level, batch_size=batch_size, shard_rows=shard_rows,
        device=device, dtype=dtype, on_error=on_error, split=split, streaming=streaming,
        max_record_bytes=max_record_bytes, long_records=long_records,
    )
    inputs = EncodeInputs(model, sae, list(input), tuple(layer), revision=revision,
                          trust_remote_code=trust_remote_code, sae_k=sae_k)
    if executor == "ray":
        from qscope_data.executors.ray import RayExecutor

        where = RayExecutor(RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker))
    elif executor == "local":
        where = None
    else:
        raise UsageError(f"--executor {executor!r}: expected local or ray")
    s = run(options, inputs, out, progress=progress, executor=where, overwrite=overwrite).stats
    if s["state"] == "finished":
        print(f"{out}: already complete ({s['documents']:,} documents, {s['rejected']:,} rejected); nothing to do")
        return
    resumed = f", {s['shards_skipped']} of {s['shards']} shards resumed" if s["shards_skipped"] else ""
    print(
        f"encoded {s['documents']:,} documents ({s['tokens']:,} tokens), {s['rejected']:,} rejected"
        f"{' (see ' + str(out / 'rejects.jsonl') + ')' if s['rejected'] else ''} in {s['seconds']:.1f} s "
        f"({s['tokens_per_s']:,.0f} tokens/s){resumed} → {out}"
    )


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
