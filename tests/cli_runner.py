"""Run a ``lightning-llm`` subcommand in-process and split what it says (shared by the CLI tests)."""

from __future__ import annotations

import pytest

from lightning_llm.cli import main


def run_command(capsys: pytest.CaptureFixture, command: str, *args: str) -> tuple[str | None, str, str]:
    """``lightning-llm COMMAND ARGS``: (its one-paragraph error message or None, stdout, stderr)."""
    try:
        main([command, *args])
        code = None
    except SystemExit as exc:
        code = exc.code
        assert isinstance(code, str), f"exit {code!r}: expected a one-paragraph error message"
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap.out, cap.err
