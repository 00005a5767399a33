"""The ``bench`` command: its options, the run and the report; ``wsiscan bench`` forwards to it.

Lives beside the benchmark code in the checkout's ``benchmarks/``, so the installed
``wsiscan`` carries only the thin entry that finds this package.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from .options import BenchOptions
from .report import format_table, run_bench


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _command_line() -> str:
    """How this run was started: the `wsiscan` command, or the host program when embedded (tests)."""
    if Path(sys.argv[0]).name == "wsiscan" or sys.argv[0].replace("\\", "/").endswith("wsiscan/__main__.py"):
        return shlex.join(["wsiscan", *sys.argv[1:]])
    return shlex.join(sys.argv)


@click.command(name="bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--slide", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Measure this slide (default: a generated benchmark slide of --size).")
@click.option("--size", type=click.Choice(["small", "20k", "camelyon"]), default="20k", show_default=True,
              help="Generated slide at 0.25 um/px, ~30 % tissue: small 8,000 px, 20k 20,000 px, camelyon 100,000 px "
                   "(made once with benchmarks/make_slide.py, then cached).")
@click.option("--arch", "archs", multiple=True, help="Architecture(s) for the model-only figures (repeat); the first "
              "one runs end to end (random weights: speed does not depend on them). Default: resnet18.")
@click.option("--stride-px", "strides", type=click.IntRange(min=1), multiple=True,
              help="Stride(s) of the end-to-end runs, px (repeat; 32 gives ~9x the patches). Default: 96.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="Model precision of wsiscan's runs (auto: bf16 on CUDA, fp32 on CPU); the baseline is always fp32.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="wsiscan's batch size (default: fit to the device).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model in the model-only figures.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs of each contender, interleaved; the fastest is reported.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="wsiscan's decode threads (default: one per usable core that memory allows).")
@click.option("--naive-workers", type=click.IntRange(min=1), default=None,
              help="DataLoader workers of the naive pipeline (default: one per usable core, as peers set it).")
@click.option("--naive-batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size of the naive pipeline.")
@click.option("--naive-max-tiles", type=click.IntRange(min=1), default=2000, show_default=True,
              help="The naive tiling run reads at most this many patches; its rate is extrapolated to all of them.")
@click.option("--model-batches", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed batches per model-only run, at least; each run lasts --model-seconds too.")
@click.option("--model-seconds", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Shortest timed model-only run (stable figures need seconds, not a few batches).")
@click.option("--compare-src", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Also run `wsiscan tile` and `wsiscan predict` from this source tree (a folder holding the "
                   "wsiscan package, e.g. an older commit's) as a 'before' contender.")
@click.option("--skip", type=click.Choice(["tiling", "feed", "decode", "tissue", "model", "e2e"]), multiple=True,
              help="Leave a section out (repeat).")
@click.option("--smoke", is_flag=True, help="CI-sized run: a tiny synthetic slide, few patches, one repeat (seconds).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where generated slides are kept (default: bench-out/slides in the source tree).")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where temporary stores and results go (default: the system's temporary folder).")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the JSON report here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def bench(slide, size, archs, strides, device, precision, batch_size, compile_, repeats, workers, naive_workers,
          naive_batch_size, naive_max_tiles, model_batches, model_seconds, compare_src, skip, smoke, cache_dir, work_dir, out_path,
          quiet) -> None:
    """Measure throughput against naive baselines in the same run; print a table, write JSON.

    Tiling (decode MB/s, tiles/s), tissue-mask time, model-only patches/s per
    architecture, end-to-end s/slide and patches/s of `wsiscan predict`, peak host RSS,
    GPU utilisation and memory (with CUDA), each beside the naive figure and the ratio.
    """
    from wsiscan.tissue import usable_cores

    naive_workers = naive_workers if naive_workers is not None else usable_cores(at_most=1 << 16)
    if repeats < 1 or model_batches < 1 or naive_max_tiles < 1:
        raise click.BadParameter("--repeats, --model-batches and --naive-max-tiles must be >= 1")
    opts = BenchOptions(
        slide=slide, size=size, archs=tuple(archs) or ("resnet18",), strides_px=tuple(strides) or (96,),
        device=device, precision=precision, batch_size=batch_size, repeats=repeats, workers=workers,
        naive_workers=naive_workers, naive_batch_size=naive_batch_size, naive_max_tiles=naive_max_tiles,
        model_batches=model_batches, model_seconds=model_seconds, compile=compile_, compare_src=compare_src.resolve() if compare_src else None,
        smoke=smoke, work_dir=work_dir, skip=tuple(skip), progress=(lambda m: None) if quiet else _echo_err,
    )
    if cache_dir is not None:
        opts.cache_dir = cache_dir
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    command = _command_line()
    report = run_bench(opts, command=command)
    report["options"] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                         for k, v in click.get_current_context().params.items()}
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(format_table(report))
    if out_path is not None:
        click.echo(f"wrote {out_path}")
