"""CLI: `qscope sae inspect|convert` (and `train`, from the training module)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

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
    out: Path = typer.Option(..., "--out", help="Folder for the canonical sae.safetensors + sae.json."),
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


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
