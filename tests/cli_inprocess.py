"""Run `qscope` in the test's own process: the console script's code path without a new interpreter's start-up."""

from __future__ import annotations

from qscope_data.cli import main


def qscope(*args, capsys=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `qscope ARGS…`; pass pytest's capsys to get the output."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err
