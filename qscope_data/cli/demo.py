"""CLI: `qscope demo` — the README's main command."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("qscope-demo"), "--out", help="Folder for everything the demo writes (reused on rerun)."),
    shared_data: bool = typer.Option(True, "--shared-data/--no-shared-data",
                                     help="Also train the SAE on ../shared/data text when that folder is there."),
    sae_tokens: int | None = typer.Option(None, "--sae-tokens", min=1000,
                                          help="Training positions for the demo SAE (default 200,000; fewer is faster and rougher)."),
) -> None:
    """Run the whole pipeline offline on all-MiniLM-L6-v2 with an SAE trained on the spot (CPU, a few minutes)."""
    import os

    # The demo's flow runs, caches and concurrency slots live with its outputs, not in the user's Prefect home,
    # unless a Prefect server is configured. Set before anything imports prefect.
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str((out / ".prefect-home").resolve()))
    from rich.console import Console

    from qscope_data.demo.run import print_summary, run_demo

    console = Console(stderr=True)
    console.rule("qscope demo: train SAE → encode → rules → gaps → synth → curate")
    summary = run_demo(out, use_shared=shared_data, progress=True,
                       sae_overrides={"tokens_budget": sae_tokens} if sae_tokens else None)
    print_summary(summary, Console())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
