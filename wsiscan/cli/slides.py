"""``wsiscan info`` and ``wsiscan tile``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..layout import MANIFEST_NAME
from . import echo_err, main, remember_output


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


@main.command()
@click.argument("slide", type=click.Path(path_type=Path, readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--slide-mpp", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the slide's base resolution, um/px.")
@click.option("--properties", is_flag=True, help="Include every OpenSlide property (with --json).")
def info(slide: Path, as_json: bool, slide_mpp: float | None, properties: bool) -> None:
    """Describe SLIDE: vendor, levels, resolution and where it came from."""
    from ..slide import open_slide

    with open_slide(slide, slide_mpp=slide_mpp) as s:
        data = s.info.to_dict(with_properties=properties)
        # which reader decodes each level, and why OpenSlide where it is OpenSlide
        readers = [{"reader": s.reader_for(lv.index), "why_openslide": s.why_openslide(lv.index) or None}
                   for lv in s.info.levels]
        # a damaged thumbnail, label or macro is listed as unreadable; the slide's pixels do not need them
        data["unreadable_associated_images"] = {k: v for k, v in s.associated_image_problems().items() if v}
    for lv, rd in zip(data["levels"], readers, strict=True):
        lv.update(rd)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    mpp = data["mpp"]
    lines = [
        f"file:            {data['path']}",
        f"size:            {_human_bytes(data['file_size_bytes'])}",
        f"vendor:          {data['vendor']}",
        f"dimensions:      {data['levels'][0]['dimensions_px'][0]} x {data['levels'][0]['dimensions_px'][1]} px (level 0)",
    ]
    if mpp:
        lines.append(f"base mpp:        {mpp['mpp_x']:.4g} x {mpp['mpp_y']:.4g} um/px  (source: {mpp['source']}: {mpp['detail']})")
    else:
        why = f" ({data['mpp_problem']})" if data["mpp_problem"] else ""
        lines.append(f"base mpp:        unknown{why}; pass --slide-mpp to tile this slide")
    power = data["objective_power"]
    lines.append(f"objective power: {power:g}x" if power else "objective power: unknown")
    lines.append(f"levels:          {len(data['levels'])}")
    for lv in data["levels"]:
        w, h = lv["dimensions_px"]
        m = f"{lv['mpp']:.4g} um/px" if lv["mpp"] else "? um/px"
        why = f" ({lv['why_openslide']})" if lv["why_openslide"] else ""
        lines.append(f"  level {lv['index']}: {w:>7} x {h:<7} px  downsample {lv['downsample']:<8.4g} {m:<14} "
                     f"read by {lv['reader']}{why}")
    assoc = data["associated_images"]
    if assoc:
        bad = data["unreadable_associated_images"]
        lines.append("associated:      " + ", ".join(
            f"{k} (unreadable: {bad[k]})" if k in bad else f"{k} ({v[0]}x{v[1]})" for k, v in assoc.items()))
    else:
        lines.append("associated:      none")
    click.echo("\n".join(lines))


def _wait_lock_env(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    import os

    from ..slide_lock import WAIT_ENV

    if value is not None:  # read by wsiscan.slide_lock here and in the Dask workers this run starts
        os.environ[WAIT_ENV] = repr(value)


def tiling_options(func):
    """Options shared by ``tile`` and ``predict``."""
    opts = [
        click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
                     callback=remember_output, help="Output folder; each slide gets OUT/<slide-id>/."),
        click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                     help="YAML config overriding the packaged defaults (configs/default.yaml)."),
        click.option("--slide-mpp", type=click.FloatRange(min=0, min_open=True), default=None, help="Base resolution of the slide(s), um/px (overrides the file)."),
        click.option("--tile-size-px", type=click.IntRange(min=8), default=None, help="Patch side in px at the target resolution."),
        click.option("--stride-px", type=click.IntRange(min=1), default=None, help="Distance between patches in px (32: one patch per PCam centre cell)."),
        click.option("--min-tissue", type=click.FloatRange(0, 1), default=None, help="Smallest tissue fraction of a kept patch (0-1)."),
        click.option("--workers", type=click.IntRange(min=0), default=None, help="Parallel decoders: threads below 256 chunks, processes from 256 (0 or unset: one per usable core that memory allows)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing result for another slide or configuration."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
        click.option("--wait-lock", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     expose_value=False, callback=_wait_lock_env,
                     help="Wait up to SECONDS for another run writing the same slide folder to finish "
                          "(default 0: refuse at once). Sets WSISCAN_WAIT_LOCK_S for this run."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def build_config(config_path: Path | None, *, target_mpp=None, slide_mpp=None, tile_size_px=None, stride_px=None,
                 min_tissue=None, workers=None):
    from ..config import load_config
    from ..errors import ConfigError

    cfg = load_config(config_path)
    try:
        cfg = cfg.replace("slide", slide_mpp=slide_mpp)
        cfg = cfg.replace("tile", target_mpp=target_mpp, tile_size_px=tile_size_px, stride_px=stride_px,
                          min_tissue=min_tissue, workers=workers)
    except ConfigError as exc:  # options that clash with each other or with the config file: bad usage
        message = str(exc).removeprefix("<options>: ")
        for key, option in _OPTION_OF_KEY.items():
            message = message.replace(key, option)
        raise click.UsageError(message) from exc
    return cfg


# the tile options' config keys, as the options name them in a usage error
_OPTION_OF_KEY = {"tile.tile_size_px": "--tile-size-px", "tile.stride_px": "--stride-px",
                  "tile.target_mpp": "--target-mpp", "tile.min_tissue": "--min-tissue",
                  "tile.workers": "--workers", "slide.slide_mpp": "--slide-mpp"}


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@tiling_options
@click.option("--target-mpp", type=click.FloatRange(min=0, min_open=True), default=None, help="Resolution to cut patches at, um/px (default 0.972, PCam's).")
def tile(slides, out_dir, config_path, slide_mpp, tile_size_px, stride_px, min_tissue, workers, overwrite, quiet,
         target_mpp) -> None:
    """Find the tissue in each SLIDE and write its patches into a zarr tile store.

    Writes OUT/<slide-id>/store.zarr and OUT/<slide-id>/qc.png.  A killed run resumes
    when rerun with the same arguments.
    """
    from ..manifest import run_header
    from ..predict import SlideJob, config_hash, slide_config
    from ..runner import TileBackend, pending_entry, run_slides
    from ..slide_ids import unique_slide_ids

    distinct = list(dict.fromkeys(slides))
    ids = dict(zip(distinct, unique_slide_ids(distinct), strict=True))
    cfg = build_config(config_path, target_mpp=target_mpp, slide_mpp=slide_mpp, tile_size_px=tile_size_px,
                       stride_px=stride_px, min_tissue=min_tissue, workers=workers)

    def report(outcome, progress) -> None:
        if outcome.error is not None:
            echo_err(f"wsiscan: error: {outcome.error}")
            return
        r = outcome.result
        geo = r.plan.geometry
        resumed = f", {r.n_chunks_resumed} resumed" if r.n_chunks_resumed else ""
        click.echo(
            f"{r.slide_id}: {r.n_tiles} tiles of {cfg.tile.tile_size_px} px at {geo.effective_mpp:.4g} um/px "
            f"(stride {cfg.tile.stride_px} px, level {r.plan.selection.level}, mpp from {r.plan.mpp_source}); "
            f"{r.n_chunks_written} chunks written{resumed} in {r.timings_s['total_s']:.1f} s -> {r.store_path}"
        )

    jobs = [SlideJob(Path(s), slide_id=ids[s]) for s in slides]
    run = run_slides(jobs, out_dir, TileBackend(out_dir, cfg, overwrite=overwrite, progress=not quiet),
                     header=run_header("tile", config_hash=config_hash(cfg)),
                     entry_for=lambda job: pending_entry(job, worker="local", model_hash=None,
                                                         config_hash=config_hash(slide_config(cfg, job))),
                     on_entry=report)
    failed = run["totals"]["failed"]
    if failed:
        echo_err(f"wsiscan: tile: {failed} of {len(jobs)} slides failed (see {Path(out_dir) / MANIFEST_NAME})")
        raise click.exceptions.Exit(1)
