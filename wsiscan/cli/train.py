"""``wsiscan train`` and ``wsiscan evaluate``: thin commands over :mod:`wsiscan.train`."""

from __future__ import annotations

from pathlib import Path

import click

from . import echo_err, main, remember_output

# Static so that `--help` and usage errors need no torch import; wsiscan.train checks
# the same list against wsiscan.models.ARCHITECTURES.
_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "smallcnn", "logreg")


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Recipe YAML whose 'train:' section sets defaults (e.g. configs/pcam-resnet18.yaml).")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Official PCam folder (camelyonpatch_level_2_split_*.h5[.gz]) "
                   "or Kaggle folder (train/, train_labels.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), callback=remember_output,
              help="Run folder: best.pt, last.pt, log.csv, tensorboard/, metrics.json.")
@click.option("--arch", type=click.Choice(_ARCHS), help="Network; logreg is the pixel logistic-regression baseline.")
@click.option("--weights", help="imagenet (torchvision, needs network or its cache), none, or PATH to weights.")
@click.option("--strategy", type=click.Choice(["finetune", "linear"]), help="finetune: all layers; linear: head only.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate of the backbone.")
@click.option("--head-lr-mult", type=click.FloatRange(min=0, min_open=True), help="Head learning rate = lr x this (10 in the published recipe).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]))
@click.option("--weight-decay", type=click.FloatRange(min=0))
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True))
@click.option("--warmup-epochs", type=click.FloatRange(min=0))
@click.option("--patience", "early_stopping_patience", type=click.IntRange(min=0),
              help="Stop after this many epochs without a better validation AUC (0: never).")
@click.option("--flips/--no-flips", default=None, help="Random horizontal and vertical flips.")
@click.option("--rot90/--no-rot90", default=None, help="Random 90-degree rotations.")
@click.option("--color-jitter", type=click.FloatRange(min=0), help="Brightness/contrast/saturation jitter strength (0: off).")
@click.option("--hed-jitter", type=click.FloatRange(min=0), help="HED stain jitter strength (0: off).")
@click.option("--crop-px", type=click.IntRange(min=1, max=96), help="Random crop size in px (96: no crop).")
@click.option("--crop-mode", type=click.Choice(["pad", "resize"]), help="Back to 96 px by reflect padding or resizing.")
@click.option("--drop-dark-bright/--keep-dark-bright", default=None,
              help="Drop mostly over-dark (<10) or over-bright (>245) training patches.")
@click.option("--max-train-patches", type=click.IntRange(min=0), help="Train on a random subset (0: all).")
@click.option("--max-val-patches", type=click.IntRange(min=0), help="Validate on a random subset (0: all).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1))
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--stop-after-epoch", type=click.IntRange(min=1), hidden=True)
@click.pass_context
def train_command(ctx: click.Context, config_path, data_dir, out_dir, resume, progress, stop_after_epoch,
                  flips, **options) -> None:
    """Train a patch classifier on PatchCamelyon; best.pt works with `wsiscan predict --model`.

    Settings: option > --config FILE > built-in defaults (with --resume, the run's own).
    """
    from .. import train

    if flips is not None:
        options["hflip"] = options["vflip"] = flips
    base = train.saved_train_config(out_dir) if resume else None
    cfg = train.load_train_config(config_path, base=base, **options)
    try:
        result = train.fit(cfg, data_dir, out_dir, resume=resume, config_path=config_path, progress=progress,
                           log=echo_err, stop_after_epoch=stop_after_epoch)
    except KeyboardInterrupt:
        echo_err(f"wsiscan: interrupted; continue with the same command plus --resume (from {out_dir}/last.pt)")
        ctx.exit(130)
    if not result.finished:
        click.echo(f"stopped after epoch {result.epochs_run}; continue with --resume")
        return
    val = result.val_metrics
    click.echo(
        f"best epoch {result.best_epoch} of {result.epochs_run}: val AUC {_fmt(val.get('auc'))}, "
        f"accuracy {_fmt(val.get('accuracy'))}, F1 {_fmt(val.get('f1'))}; temperature {result.temperature:.3f} "
        f"(val ECE {_fmt(result.ece_before)} -> {_fmt(result.ece_after)})"
    )
    click.echo(f"checkpoint: {result.best_path}  (wsiscan predict --model {result.best_path} SLIDE)")


@main.command("evaluate")
@click.option("--model", "model_ref", required=True, help="Checkpoint path or registered model name.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="PCam folder (either layout).")
@click.option("--split", default="test", show_default=True, help="train, valid or test (Kaggle folders also: all).")
@click.option("--tta", is_flag=True, help="Average the 8 flips and 90-degree rotations of each patch.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), callback=remember_output,
              help="Output folder [default: eval-SPLIT next to the checkpoint, or ./eval-NAME-SPLIT].")
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Kaggle split CSV [default: split.csv next to the checkpoint].")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Tumour probability at or above which a patch counts as positive.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--progress/--no-progress", default=True)
@click.option("--positional", is_flag=True,
              help="Also the positional-bias check: positional.png and 'positional' in metrics.json.")
@click.option("--positional-step-px", type=click.IntRange(min=1), default=16, show_default=True,
              help="Grid step of the moved centre's positions.")
@click.option("--positional-max-patches", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tumour and normal patches (each) the positional check uses.")
def evaluate_command(model_ref, data_dir, split, tta, out_dir, split_file, batch_size, threshold, device, workers,
                     progress, positional, positional_step_px, positional_max_patches) -> None:
    """Score a model on a PCam split: metrics.json, roc.png, reliability.png (with --positional also positional.png)."""
    from .. import train

    positional_result = None
    if positional:  # computed first: a split it cannot use fails before anything is written
        from ..explain.positional import run_positional_check

        positional_result = run_positional_check(model_ref, data_dir, split, split_file=split_file,
                                                 step_px=positional_step_px, max_patches=positional_max_patches,
                                                 tta=tta, device=device, batch_size=batch_size, log=echo_err)

    if out_dir is None:
        as_path = Path(model_ref)
        if as_path.is_file():
            out_dir = as_path.parent / f"eval-{split}{'-tta' if tta else ''}"
        else:
            out_dir = Path(f"eval-{model_ref.replace('/', '--')}-{split}{'-tta' if tta else ''}")
    report = train.evaluate_model(model_ref, data_dir, split, out_dir, tta=tta, batch_size=batch_size,
                                  device=device, workers=workers, split_file=split_file, threshold=threshold,
                                  progress=progress, log=echo_err)
    m = report["metrics"]
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    click.echo(
        f"{split}: n={m['n']} AUC {_fmt(m['auc'])}, accuracy {_fmt(m['accuracy'])}, balanced accuracy "
        f"{_fmt(m['balanced_accuracy'])}, precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])}, "
        f"F1 {_fmt(m['f1'])}, ECE {_fmt(m['ece'])}; tn={tn} fp={fp} fn={fn} tp={tp}"
    )
    click.echo(f"wrote {out_dir}/metrics.json, roc.png, reliability.png, predictions.csv")
    if positional_result is not None:
        from ..explain.positional import write_positional

        write_positional(out_dir, positional_result)
        r = positional_result
        click.echo(f"positional: mean p at centre {_fmt(r['mean_probability_at_centre'])}, off centre "
                   f"{_fmt(r['mean_probability_off_centre'])}; AUC {_fmt(r['auc'])}, centre replaced "
                   f"{_fmt(r['auc_centre_replaced'])}, context replaced {_fmt(r['auc_context_replaced'])}; "
                   f"wrote {out_dir}/positional.png")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
