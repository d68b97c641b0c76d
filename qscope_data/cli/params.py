"""CLI options whose defaults come from a stage's options model, so a default is declared once (in the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from pydantic.fields import FieldInfo


def fields_of(model: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or a pydantic dataclass (a stage's frozen inputs declare defaults too)."""
    return model.__pydantic_fields__  # type: ignore[attr-defined]


def default_of(model: type, field: str) -> Any:
    """A field's default as the model declares it (a factory is called)."""
    return fields_of(model)[field].get_default(call_default_factory=True)


def option(model: type, field: str, *flags: str, to_cli: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """`typer.Option` for `model.field` (an options model or a stage's inputs dataclass): the default is the model's
    (`to_cli` turns it into the flag's form, e.g. a list into comma-separated text)."""
    default = default_of(model, field)
    info = typer.Option(to_cli(default) if to_cli else default, *flags, **kwargs)
    info.model_field = (model, field)  # what tests/test_stage_options.py checks a stage flag was declared from
    return info
