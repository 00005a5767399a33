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
    """List the registered models and whether each is in the local cache."""
    from ..models import cache_dir, cached_checkpoint_path, list_models

    rows = []
    for entry in list_models():
        path = cached_checkpoint_path(entry.name)
        rows.append({**entry.to_dict(), "cached": path.is_file(), "cache_path": str(path)})
    if as_json:
        click.echo(json.dumps({"cache_dir": str(cache_dir()), "models": rows}, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'NAME':<{width}}  {'ARCH':<9}  {'PATCH':>6}  {'MPP':>5}  {'CACHED':<6}  DESCRIPTION")
    for r in rows:
        click.echo(
            f"{r['name']:<{width}}  {r['arch']:<9}  {r['patch_size_px']:>4}px  {r['input_mpp']:>5.3g}  "
            f"{'yes' if r['cached'] else 'no':<6}  {r['description']}"
        )
    click.echo(f"cache: {cache_dir()}  (fetch with `wsiscan models pull NAME`)")


@models_group.command("info")
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_cmd(name_or_path: str, as_json: bool) -> None:
    """Describe a checkpoint file or a registered model (its spec and provenance).

    A registered model that is not cached yet is described from the registry,
    without downloading it.
    """
    from ..models import (
        cached_checkpoint_path,
        file_sha256,
        get_registry_entry,
        list_models,
        load_checkpoint,
    )

    registered = {e.name for e in list_models()}
    path = Path(name_or_path).expanduser()
    if not path.is_file() and name_or_path in registered:
        cached = cached_checkpoint_path(name_or_path)
        if not cached.is_file():
            entry = get_registry_entry(name_or_path)
            data = {"name": entry.name, "cached": False, "cache_path": str(cached),
                    "registry": entry.to_dict()}
            if as_json:
                click.echo(json.dumps(data, indent=2))
                return
            lines = [f"{'name:':<16}{entry.name}  (not cached: run `wsiscan models pull {entry.name}`)"]
            lines += [f"{k + ':':<16}{', '.join(v) if isinstance(v, list) else v}"
                      for k, v in entry.to_dict().items() if k != "name"]
            click.echo("\n".join(lines))
            return
        path = cached
    elif not path.is_file():
        from ..models import resolve_model

        path = resolve_model(name_or_path)  # raises the one-line UnknownModelError

    model, spec = load_checkpoint(path)
    n_params = sum(p.numel() for p in model.parameters())
    data = {
        "path": str(path),
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "parameters": n_params,
        "cached": name_or_path in registered,
        "spec": spec.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    norm = "none (RGB in [0, 1])" if spec.mean is None else f"mean {list(spec.mean)}, std {list(spec.std)}"
    lines = [
        f"file:           {data['path']}",
        f"sha256:         {data['sha256']}",
        f"name:           {spec.name or '(unnamed)'}",
        f"arch:           {spec.arch}  ({n_params:,} parameters)",
        f"classes:        {', '.join(spec.class_names)}  (positive: {spec.positive_class} = {spec.positive_class_name})",
        f"patch:          {spec.patch_size_px} px at {spec.input_mpp:g} um/px",
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
@click.option("--force", is_flag=True, help="Download and convert again even if cached.")
def pull_cmd(name: str, force: bool) -> None:
    """Download a registered model into the local cache (needs network).

    On a machine without network, run this on a connected one and copy the file it
    prints into the same cache folder ($WSISCAN_HOME/models or ~/.cache/wsiscan/models).
    """
    from ..models import file_sha256, pull_model

    path = pull_model(name, force=force)
    click.echo(f"{name}: {path}  (sha256 {file_sha256(path)})")
