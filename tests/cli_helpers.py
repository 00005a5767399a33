"""Helpers shared by the CLI tests: run a command in-process, check a one-line error."""

from __future__ import annotations

from click.testing import CliRunner

from wsiscan.cli import main


def run(*args):
    """Invoke ``wsiscan ARGS...`` in-process (stdout and stderr kept apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """Exit code 1, no traceback, exactly one stderr line starting 'wsiscan: error: ' with each needle."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
