"""Training and evaluation of patch classifiers on PatchCamelyon.

Modules: ``config`` (the ``train:`` section), ``augment`` (batch augmentation),
``engine`` (weights, loaders, one epoch, evaluation, optimiser, schedule), ``fit`` (a
whole run) and ``evaluation`` (scoring a model on a split for ``wsiscan evaluate``).

Composed of small functions, as torchvision's classification reference is:
:func:`train_one_epoch`, :func:`evaluate` (under ``torch.inference_mode``) and :func:`fit`,
which adds checkpointing, early stopping on validation AUC, resume and temperature
scaling.  A run folder holds::

    best.pt          wsiscan checkpoint of the epoch with the best validation AUC, with
                     spec.temperature fitted on the validation set: `wsiscan predict --model`
    last.pt          the latest epoch, plus optimizer, scheduler, RNG states, history (resume)
    config.yaml      the resolved training configuration
    split.csv        Kaggle layout only: the stratified train/valid/test split (reused)
    train_kept.npy   with drop_dark_bright: positions of the training patches kept
    log.csv          one row per epoch; tensorboard/ the same as TensorBoard scalars
    metrics.json     validation metrics of best.pt, before and after calibration

Recipe choices (see configs/pcam-*.yaml for the literature they follow):

* Inputs are RGB scaled to [0, 1] and normalised with ImageNet's mean and std for every
  architecture, pretrained or not, so all checkpoints share one preprocessing.
* Augmentation runs on whole batches on the training device, with its own generator
  seeded per epoch: flips, 90-degree rotations, brightness/contrast/saturation jitter,
  HED stain jitter (Tellez et al. 2018) and a random crop.  The crop takes ``crop_px``
  (90) px and, by default, reflect-pads back to 96 px (``crop_mode: pad``): a small
  translation that keeps the 0.972 um/px scale the model sees at inference; ``resize``
  scales the crop back up instead (a ~7 % zoom).
* Weight decay applies to weights only, not to biases and normalisation parameters.
* The learning rate rises linearly over ``warmup_epochs`` and then follows a cosine to
  ``min_lr_ratio`` of its peak, stepped every batch; the head's is ``head_lr_mult`` times
  the backbone's.
* Resume restarts at the epoch after the last one completed, with the same result as an
  uninterrupted run: the data order and augmentation depend only on (seed, epoch).
"""

from __future__ import annotations

from .augment import augment_batch, dihedral_views
from .config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig, load_train_config, saved_train_config
from .engine import EvalResult, build_optimizer, evaluate, load_initial_weights, resolve_device, train_one_epoch
from .evaluation import evaluate_model
from .fit import FitResult, fit

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TrainConfig",
    "load_train_config",
    "saved_train_config",
    "resolve_device",
    "load_initial_weights",
    "augment_batch",
    "dihedral_views",
    "build_optimizer",
    "train_one_epoch",
    "EvalResult",
    "evaluate",
    "FitResult",
    "fit",
    "evaluate_model",
]
