"""``wsiscan bench``: a thin entry to the benchmarks, which live in a source checkout.

The benchmark code (``benchmarks/wsiscan_bench``) is not part of the installed package:
it needs the checkout's benchmark scripts and slide generator.  This command finds that
package (already importable, or in the checkout that holds the working folder) and hands
it every argument; without a checkout it says so in one line and exits with 1.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from . import main

BENCH_PACKAGE = "wsiscan_bench"


def find_checkout_benchmarks(start: Path) -> Path | None:
    """The ``benchmarks/`` folder of the wsiscan checkout holding ``start`` (or above it), else None."""
    for folder in (start, *start.parents):
        bench = folder / "benchmarks"
        if (bench / BENCH_PACKAGE / "__init__.py").is_file() and (folder / "pyproject.toml").is_file():
            return bench
    return None


def load_bench_command(cwd: Path) -> click.Command | None:
    """The benchmarks' ``bench`` command: importable as is, or from the checkout around ``cwd``."""
    try:
        module: Any = importlib.import_module(f"{BENCH_PACKAGE}.cli")
    except ModuleNotFoundError as exc:
        if exc.name != BENCH_PACKAGE:
            raise
        bench_dir = find_checkout_benchmarks(cwd.resolve())
        if bench_dir is None:
            return None
        sys.path.insert(0, str(bench_dir))
        module = importlib.import_module(f"{BENCH_PACKAGE}.cli")
    command: click.Command = module.bench
    return command


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
              add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Throughput against naive baselines (needs a source checkout; `wsiscan bench --help` there)."""
    command = load_bench_command(Path.cwd())
    if command is None:
        click.echo(f"wsiscan: error: `wsiscan bench` runs the benchmarks of a source checkout (benchmarks/{BENCH_PACKAGE}, "
                   f"not installed), and {Path.cwd()} is not inside one: clone the wsiscan repository and run "
                   f"`wsiscan bench` from inside the clone", err=True)
        ctx.exit(1)
    # the benchmarks' own command, in this command's place: its usage and errors read `... bench`
    with command.make_context(ctx.info_name, list(args), parent=ctx.parent) as sub_ctx:
        command.invoke(sub_ctx)
