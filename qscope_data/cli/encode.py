"""CLI: encode commands (not wired yet)."""

import typer


def register(app: typer.Typer) -> None:
    pass
