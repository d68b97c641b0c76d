"""CLI: `qscope sae inspect|convert|train` (training itself lives in qscope_data.sae.train)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qscope_data.outputs import folder_option

sae_app = typer.Typer(help="Inspect, convert and train sparse autoencoders.", no_args_is_help=True)


@sae_app.command("inspect")
def inspect(
    sae: str = typer.Argument(..., help="SAE folder, file or hub repo id (Qwen-Scope, SAELens, sparsify, qscope)."),
    layer: int | None = typer.Option(None, "--layer", help="Layer (for folders holding one SAE per layer)."),
    k: int | None = typer.Option(None, "--k", help="Override k when the files do not say it."),
) -> None:
    """Print the SAE's format and shapes as JSON."""
    from qscope_data.sae import load_sae

    print(json.dumps(load_sae(sae, layer, k=k).describe(), indent=2))


@sae_app.command("convert")
def convert(
    src: str = typer.Argument(..., help="SAE folder, file or hub repo id in any supported format."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Folder for the canonical sae.safetensors + sae.json."),
    layer: int | None = typer.Option(None, "--layer"),
    k: int | None = typer.Option(None, "--k"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: as stored)."),
) -> None:
    """Write an SAE in the canonical safetensors format, so production runs never unpickle anything."""
    from qscope_data.sae import load_sae, save_canonical
    from qscope_data.torch_dtypes import parse_dtype

    sae = load_sae(src, layer, k=k, dtype=parse_dtype(dtype) if dtype else None)
    save_canonical(sae, out)
    print(json.dumps({"out": str(out), **sae.describe()}, indent=2))


@sae_app.command("train")
def train(
    model: str = typer.Option(..., "--model", help="Model folder or hub id (causal LM or BERT-family encoder)."),
    layer: int = typer.Option(..., "--layer", help="Block n: the SAE reads the residual stream at its output."),
    inputs: list[str] = typer.Option(..., "--input", help="JSONL/Parquet file, glob, folder or HF dataset; repeatable."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Folder for sae.json + sae.safetensors + metrics.json."),
    width: int | None = typer.Option(None, "--width", help="Number of latents (d_sae); from --init-from if omitted."),
    k: int | None = typer.Option(None, "--k", help="Active latents per token; from --init-from if omitted."),
    init_from: str | None = typer.Option(None, "--init-from", help="Start from this SAE (any format) and fine-tune it."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens per text (longer texts are truncated)."),
    tokens_budget: int | None = typer.Option(None, "--tokens-budget", help="Training positions (default: one pass; "
                                             "passes repeat until the budget is spent)."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Positions per optimiser step."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (default 2e-4 / sqrt(width / 16384))."),
    aux_k: int | None = typer.Option(None, "--aux-k", help="Dead latents used by the AuxK loss (default d_model / 2)."),
    dead_tokens: int | None = typer.Option(None, "--dead-tokens", help="A latent unfired for this many tokens is dead."),
    outlier_factor: float = typer.Option(10.0, "--outlier-factor", help="Drop positions with norm > factor × batch median (0: off)."),
    shuffle_buffer: int = typer.Option(65536, "--shuffle-buffer", help="Positions shuffled together (0: no shuffle)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
    model_dtype: str | None = typer.Option(None, "--model-dtype", help="float32 | bfloat16 | float16 (default: as stored)."),
    text_field: str = typer.Option("text", "--text-field", help="Field holding the text (records with `messages` are rendered)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or step log."),
) -> None:
    """Train a TopK SAE on a model's residual stream (AuxK, unit-norm decoder, outlier filtering), or adapt one."""
    from rich.console import Console

    from qscope_data.sae.train import TrainConfig, train_sae

    cfg = TrainConfig.parse(
        model=model, layer=layer, inputs=inputs, width=width, k=k, init_from=init_from, max_tokens=max_tokens,
        tokens_budget=tokens_budget, batch_size=batch_size, lr=lr, aux_k=aux_k, dead_tokens=dead_tokens,
        outlier_factor=outlier_factor, shuffle_buffer=shuffle_buffer, seed=seed, device=device,
        model_dtype=model_dtype, text_field=text_field,
    )
    console = Console(stderr=True)
    result = train_sae(cfg, out, progress=not quiet, log=None if quiet else console.log)
    summary = {key: result.metrics[key] for key in ("explained_variance", "l0", "dead_fraction", "init_explained_variance",
                                                     "train_tokens", "steps", "seconds", "outliers_dropped", "rejects")}
    print(json.dumps({"out": str(out), **summary}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
