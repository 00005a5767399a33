"""``wsiscan models list|info|pull``: the model registry and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import main


@main.group("models")
def models_group() -> None:
    """List, describe and download patch classifiers."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_cmd(as_json: bool) -> None:
    """List the registered models and whether each is on this machine already."""
    from ..models import cache_dir, list_models, local_copy

    rows = []
    for entry in list_models():
        local = local_copy(entry.name)
        rows.append({**entry.to_dict(), "cached": local is not None,
                     "cache_path": str(local[1]) if local else None, "source": local[0] if local else None})
    if as_json:
        click.echo(json.dumps({"cache_dir": str(cache_dir()), "models": rows}, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'NAME':<{width}}  {'ARCH':<11}  {'PATCH':>6}  {'MPP':>5}  {'LOCAL':<6}  DESCRIPTION")
    for r in rows:
        patch, mpp = (f"{r['patch_size_px']:>4}px", f"{r['input_mpp']:>5.3g}") if r["patch_size_px"] else \
            (f"{'cfg':>6}", f"{'cfg':>5}")
        click.echo(
            f"{r['name']:<{width}}  {r['arch'][:11]:<11}  {patch}  {mpp}  "
            f"{'yes' if r['cached'] else 'no':<6}  {r['description']}"
        )
    from ..models import hf_cache_dir, tiatoolbox_models_dir

    click.echo(f"cache: {cache_dir()}; also read: Hugging Face cache {hf_cache_dir()}, TIAToolbox folder "
               f"{tiatoolbox_models_dir()}  (fetch with `wsiscan models pull NAME`)")


def _local_only(call):
    """Run ``call`` with downloads switched off (HF_HUB_OFFLINE=1), restoring the environment."""
    import os

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return call()
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@models_group.command("info")
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_cmd(name_or_path: str, as_json: bool) -> None:
    """Describe a checkpoint file or a registered model (its spec and provenance).

    A registered model that is not cached yet is described from the registry,
    without downloading it.
    """
    from ..errors import OfflineError
    from ..models import fetch_model, file_sha256, get_registry_entry, load_model, registry_name

    key = registry_name(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists() and key is not None:
        try:
            path = _local_only(lambda: fetch_model(key)).path
        except OfflineError:
            entry = get_registry_entry(key)
            data = {"name": entry.name, "cached": False, "cache_path": None, "registry": entry.to_dict()}
            if as_json:
                click.echo(json.dumps(data, indent=2))
                return
            lines = [f"{'name:':<16}{entry.name}  (not cached: run `wsiscan models pull {entry.name}`)"]
            lines += [f"{k + ':':<16}{', '.join(v) if isinstance(v, list) else v}"
                      for k, v in entry.to_dict().items() if k != "name"]
            click.echo("\n".join(lines))
            return
    model, spec, sha256 = load_model(path)  # a missing name raises the one-line UnknownModelError
    n_params = sum(p.numel() for p in model.parameters())
    data = {
        "path": str(path),
        "sha256": sha256 if path.is_dir() else file_sha256(path),
        "size_bytes": sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size,
        "parameters": n_params,
        "cached": key is not None,
        "spec": spec.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    norm = "none (RGB in [0, 1])" if spec.mean is None or spec.std is None else f"mean {list(spec.mean)}, std {list(spec.std)}"
    lines = [
        f"file:           {data['path']}",
        f"sha256:         {data['sha256']}",
        f"name:           {spec.name or '(unnamed)'}",
        f"arch:           {spec.arch}  ({n_params:,} parameters)",
        f"classes:        {', '.join(spec.class_names)}  (positive: {spec.positive_class} = {spec.positive_class_name})",
        f"patch:          {spec.patch_size_px} px at {spec.input_mpp:g} um/px"
        + (f", resized to {spec.input_size_px} px" if spec.input_size_px else ""),
        f"normalisation:  {norm}",
        f"temperature:    {spec.temperature:g}",
    ]
    for title, d in (("provenance", spec.provenance), ("metrics", spec.metrics)):
        if d:
            lines.append(f"{title}:")
            lines += [f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in d.items()]
        else:
            lines.append(f"{title + ':':<15} none recorded")
    click.echo("\n".join(lines))


@models_group.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Ignore local copies: download and convert again.")
@click.option("--from", "from_file", type=click.Path(path_type=Path), default=None,
              help="Register a copy brought by hand (a .pth file, or a WSInfer model folder) under NAME.")
def pull_cmd(name: str, force: bool, from_file: Path | None) -> None:
    """Make a registered model ready to run, and say where it came from.

    Looks in the Hugging Face cache (HF_HOME), TIAToolbox's folder (TIATOOLBOX_HOME)
    and wsiscan's cache, then downloads into the Hugging Face cache unless
    HF_HUB_OFFLINE is set.  Every source's sha256 is checked against the registry's pin.
    """
    from ..models import fetch_model

    pulled = fetch_model(name, force=force, from_file=from_file)
    if pulled.source_path is not None:
        rev = f" @ {pulled.revision}" if pulled.revision else ""
        click.echo(f"{pulled.name}: from {pulled.origin} {pulled.source_path}{rev} (sha256 {pulled.source_sha256})")
    else:
        click.echo(f"{pulled.name}: from {pulled.origin}")
    click.echo(f"{pulled.name}: ready at {pulled.path}")
