"""The `qscope` command line: one module per command group, each thin (parse, call the stage, print).

Errors: a `UsageError` (bad flags, config, files, data) prints one line `qscope: error: …` and exits 2;
`--debug` (or QSCOPE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from qscope_data.errors import QscopeError

app = typer.Typer(
    name="qscope",
    help="Read text through a language model's SAE features: encode corpora, score rules, find safety gaps, "
    "synthesise targeted data and curate SFT shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module exposes `register(app)`; the order is the order of `qscope --help`.
COMMAND_MODULES = ["demo", "run", "encode", "sae", "rules", "coverage", "explain", "synth", "curate", "sasft"]

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug or os.environ.get("QSCOPE_DEBUG") == "1"


for _name in COMMAND_MODULES:
    importlib.import_module(f"qscope_data.cli.{_name}").register(app)


def _is_read_error(exc: Exception) -> bool:
    """A Parquet / codec error from polars or pyarrow (they name no file)."""
    module = type(exc).__module__ or ""
    return module.startswith(("polars", "pyarrow")) or isinstance(exc, OSError) and "parquet" in str(exc).lower()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning project errors into one-line messages."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("QSCOPE_DEBUG") == "1"
    from qscope_data.store import forget_opened_stores

    forget_opened_stores()
    try:
        rc = app(args=argv, standalone_mode=False)  # a command's `typer.Exit(n)` comes back as the return value here
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except QscopeError as exc:
        if debug:
            raise
        print(f"qscope: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("qscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors arrive as SystemExit via standalone handling below
        import click
        from pydantic import ValidationError

        if isinstance(exc, ValidationError) and not debug:  # an options model refused a flag's value
            from qscope_data.errors import invalid

            print(f"qscope: error: {invalid(exc, flags=True)}", file=sys.stderr)
            sys.exit(2)

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        if _is_read_error(exc):
            from qscope_data.store import find_unreadable_shard

            damaged = find_unreadable_shard()
            if damaged:
                print(f"qscope: error: {damaged}", file=sys.stderr)
                sys.exit(2)
        print(f"qscope: error: {exc.__class__.__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
