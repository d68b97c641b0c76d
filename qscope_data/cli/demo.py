"""CLI: `qscope demo` — the README's main command."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("qscope-demo"), "--out", help="Folder for everything the demo writes (reused on rerun)."),
) -> None:
    """Run the whole pipeline offline on Gemma-3-270M read through the shipped demo SAE (CPU, a few minutes)."""
    import os

    # The demo's flow runs, caches and concurrency slots live with its outputs, not in the user's Prefect home,
    # unless a Prefect server is configured. Set before anything imports prefect.
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str((out / ".prefect-home").resolve()))
    from rich.console import Console

    from qscope_data.demo.run import print_summary, run_demo

    console = Console(stderr=True)
    console.rule("qscope demo: Gemma-3-270M + SAE → encode → rules → gaps → synth → curate")
    summary = run_demo(out, progress=True, log=console.log)
    print_summary(summary, Console())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
