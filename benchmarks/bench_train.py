"""Training and evaluation throughput of the PCam recipe, in images/s at 96 px.

For each architecture (ResNet-18 and ResNet-50 by default) it times, on synthetic
PCam-like patches already on the device:

* training: batch augmentation (flips, rotations, colour/HED jitter, crop) + forward +
  backward + AdamW step, as ``wsiscan.train.train_one_epoch`` does it;
* evaluation: forward under ``torch.inference_mode``, as ``wsiscan.train.evaluate``.

On CUDA it uses bf16 autocast and channels_last (the training defaults); on CPU, fp32.
It also reports how fast the HDF5 reader feeds patches (DataLoader over a small
generated official-layout file), the bound a real run cannot beat.  Results go to
JSON with the device, versions and settings.

    python benchmarks/bench_train.py                       # defaults: both architectures, a few steps each
    python benchmarks/bench_train.py --batch-size 256 --steps 30 -o bench-out/train-h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsiscan import pcam, train
from wsiscan.models import ModelSpec, build_model, normalise
from wsiscan.testing_pcam import make_patches, write_pcam_h5
from wsiscan.train.engine import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, n_steps: int, n_warmup: int, device: torch.device) -> float:
    for _ in range(n_warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(n_steps):
        step()
    _sync(device)
    return time.perf_counter() - started


def bench_arch(arch: str, *, device: torch.device, batch_size: int, steps: int, warmup: int) -> dict:
    cfg = train.load_train_config(None, arch=arch, weights="none", batch_size=batch_size)
    spec = ModelSpec(arch=arch, mean=train.IMAGENET_MEAN, std=train.IMAGENET_STD)
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = train.build_optimizer(model, cfg)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    x, y = make_patches(batch_size, seed=1)
    images = torch.from_numpy(x).to(device)
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        model.train()
        x01 = train.augment_batch(images, cfg, generator)
        if channels_last:
            x01 = x01.contiguous(memory_format=torch.channels_last)
        with autocast(device, "auto"):
            logits = model(normalise(x01, spec))
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    eval_x01 = images.permute(0, 3, 1, 2).float().div(255.0)
    if channels_last:
        eval_x01 = eval_x01.contiguous(memory_format=torch.channels_last)

    def eval_step() -> None:
        with torch.inference_mode(), autocast(device, "auto"):
            model.eval()
            model(normalise(eval_x01, spec)).float().cpu()

    train_s = _time_steps(train_step, steps, warmup, device)
    eval_s = _time_steps(eval_step, steps, warmup, device)
    out = {
        "arch": arch,
        "batch_size": batch_size,
        "steps": steps,
        "train_images_per_s": steps * batch_size / train_s,
        "eval_images_per_s": steps * batch_size / eval_s,
    }
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def bench_loader(*, n: int, batch_size: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_pcam_h5(tmp, n_per_split={"train": n, "valid": 2, "test": 2}, meta=False)
        dataset = pcam.open_split(root, "train")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        started = time.perf_counter()
        seen = sum(len(labels) for _, labels in loader)
        seconds = time.perf_counter() - started
    return {"patches": n, "workers": workers, "batch_size": batch_size, "images_per_s": seen / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet50", help="comma-separated architectures")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 256 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per measurement (0: 30 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (0: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--loader-patches", type=int, default=1024, help="patches in the HDF5 reader test (0: skip)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("-o", "--out", type=Path, default=Path("bench-out/bench_train.json"))
    args = parser.parse_args(argv)

    device = train.resolve_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (256 if cuda else 16)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
    results = []
    for arch in args.archs.split(","):
        result = bench_arch(arch.strip(), device=device, batch_size=batch_size, steps=steps, warmup=warmup)
        print(f"{arch}: train {result['train_images_per_s']:.0f} img/s, eval {result['eval_images_per_s']:.0f} img/s",
              file=sys.stderr)
        results.append(result)
    loader = None
    if args.loader_patches:
        loader = bench_loader(n=args.loader_patches, batch_size=batch_size, workers=args.workers)
        print(f"HDF5 loader: {loader['images_per_s']:.0f} img/s with {args.workers} workers", file=sys.stderr)
    report = {
        "benchmark": "bench_train",
        "patch_size_px": 96,
        "device": str(device) if not cuda else f"{device} ({torch.cuda.get_device_name(device)})",
        "precision": "bf16 autocast, channels_last" if cuda else "fp32",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda if cuda else None},
        "results": results,
        "loader": loader,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
