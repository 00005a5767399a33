"""One GPU check in one run (<= 8 minutes on one H100/H200 with 16 cores), JSON out.

    python benchmarks/gpu_check.py --out $OUT [--before SRC] [--slide FILE] [--dry-run]

Measures, with host RSS and GPU utilisation (nvidia-smi / pynvml) sampled throughout:

1. model only: patches/s of ResNet-18 and ResNet-50 as predict runs them (``Ensemble.score_uint8``:
   uint8 in, conversion on the device; weights cast once; cudnn.benchmark), bf16, fp16 and fp32, several
   batch sizes, each timed for at least ``--model-seconds`` after a warm-up, on random bytes (never zeros);
2. feed rate: patches/s the streaming pipeline delivers to the device with the model skipped;
3. end to end on the Camelyon-sized slide (benchmarks/make_slide.py --size camelyon, made here when
   absent) at stride 96 and 32: ``wsiscan predict`` (subprocess, cold), the ``--before`` source tree
   when given, and the naive pipeline (read_region per patch in a DataLoader, one worker per core),
   interleaved in the same run.

``--dry-run`` shrinks everything (a small synthetic slide, one architecture, short rows, the CPU
when there is no GPU) so that the script can be checked on a machine without one and then runs
unchanged where a GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # wsiscan from this checkout; wsiscan_bench sits beside this script (sys.path[0])


def model_rows(device, archs, precisions, batch_sizes, seconds: float, log) -> list[dict]:
    import torch

    from wsiscan.inference import Ensemble, resolve_precision
    from wsiscan.models import ModelSpec, build_model

    rows = []
    for arch in archs:
        torch.manual_seed(0)
        spec = ModelSpec(arch=arch, name=f"random {arch}")
        for precision in precisions:
            try:
                dtype = resolve_precision(precision, device)
            except Exception as exc:  # e.g. fp16 on the CPU: recorded, not fatal
                rows.append({"arch": arch, "precision": precision, "skipped": str(exc)})
                continue
            ens = Ensemble([build_model(spec)], [spec], device, autocast_dtype=dtype, tta=False)
            for bs in batch_sizes:
                g = torch.Generator(device="cpu").manual_seed(bs)
                batches = [torch.randint(0, 256, (bs, 3, spec.patch_size_px, spec.patch_size_px), generator=g,
                                         dtype=torch.uint8).to(device) for _ in range(3)]  # rotate: not one cached input
                for b in batches:  # warm-up: cuDNN autotuning, allocator
                    ens.score_uint8(b)
                sync(device)
                n, t0 = 0, time.perf_counter()
                while True:
                    probs = ens.score_uint8(batches[n % 3])
                    n += 1
                    if n % 20 == 0 or device.type != "cuda":
                        sync(device)
                        if time.perf_counter() - t0 >= seconds:
                            break
                sync(device)
                dt = time.perf_counter() - t0
                ok = bool(torch.isfinite(probs).all())
                row = {"arch": arch, "precision": precision, "batch_size": bs, "seconds": dt, "n_patches": n * bs,
                       "patches_per_s": n * bs / dt, "finite": ok}
                log(f"model {arch} {precision} bs {bs}: {row['patches_per_s']:.0f} patches/s")
                rows.append(row)
            del ens
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    p.add_argument("--slide", type=Path, default=None, help="end-to-end slide (default: the Camelyon-sized one)")
    p.add_argument("--slide-cache", type=Path, default=REPO / "bench-out" / "slides")
    p.add_argument("--before", type=Path, default=None, help="another wsiscan source tree, run as 'before'")
    p.add_argument("--device", default="auto")
    p.add_argument("--strides", type=int, nargs="+", default=[96, 32])
    p.add_argument("--model-seconds", type=float, default=2.0)
    p.add_argument("--dry-run", action="store_true", help="shrink everything (CPU, small slide, short rows)")
    args = p.parse_args(argv)

    import torch
    from wsiscan_bench import BenchOptions, GpuSampler, PeakRss, bench_end_to_end, device_info, load_avg_1m
    from wsiscan_bench.feed import bench_feed
    from wsiscan_bench.inputs import benchmark_slide, make_checkpoint, smoke_slide

    from wsiscan.inference import select_device
    from wsiscan.tissue import usable_cores

    t_start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    device = select_device(args.device)
    cuda = device.type == "cuda"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    if args.dry_run:
        archs, precisions, batch_sizes, seconds = ["resnet18"], ["fp32", "bf16"], [8], 0.2
    else:
        archs, precisions, batch_sizes, seconds = ["resnet18", "resnet50"], ["bf16", "fp16", "fp32"], \
            [512, 2048, 4096], args.model_seconds
    report: dict = {"check": "wsiscan-gpu-check", "dry_run": args.dry_run, "device": device_info(device),
                    "load_avg_1m": {"start": load_avg_1m()}, "argv": sys.argv, "torch": torch.__version__}
    with PeakRss() as rss, GpuSampler(device.index or 0, enabled=cuda, interval_s=0.2) as gpu:
        report["model"] = model_rows(device, archs, precisions, batch_sizes, seconds, log)
        if args.slide is not None:
            slide = args.slide
        elif args.dry_run:
            slide = smoke_slide(work)
        else:
            log("Camelyon-sized slide (made once) ...")
            slide, _ = benchmark_slide("camelyon", args.slide_cache)
        opts = BenchOptions(device=str(device), repeats=1, naive_workers=usable_cores(at_most=1 << 16),
                            naive_batch_size=256 if cuda else 64, compare_src=args.before,
                            batch_size=16 if args.dry_run else None)
        report["feed"], report["end_to_end"] = [], []
        for stride in args.strides:
            log(f"feed rate, stride {stride} ...")
            report["feed"].append(bench_feed(slide, stride, device, opts, work))
        arch = "tiny" if args.dry_run else "resnet18"
        ckpt = make_checkpoint(arch, work / f"{arch}.pt")
        for stride in args.strides:
            log(f"end to end {arch}, stride {stride}: wsiscan{', before' if args.before else ''}, naive ...")
            report["end_to_end"].append(bench_end_to_end(slide, ckpt, stride, device, opts, work))
    report["peak_rss_mb_this_process"] = rss.peak_mb
    report["gpu_whole_run"] = gpu.result()
    report["load_avg_1m"]["end"] = load_avg_1m()
    report["seconds"] = time.perf_counter() - t_start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for row in report["model"]:
        if "patches_per_s" in row:
            print(f"model {row['arch']:<9} {row['precision']:<5} bs {row['batch_size']:>5}: "
                  f"{row['patches_per_s']:>10.0f} patches/s")
    for f in report["feed"]:
        print(f"feed stride {f['stride_px']}: {f['patches_per_s']:.0f} patches/s ({f['n_patches']} patches)")
    for e in report["end_to_end"]:
        cols = " ".join(f"{k} {e[k]['wall_s']:.2f} s ({e[k]['peak_rss_mb']:.0f} MB, GPU "
                        f"{e[k]['gpu_utilisation_mean_percent']} %)" for k in ("wsiscan", "before", "naive") if k in e)
        print(f"e2e stride {e['stride_px']} ({e['n_patches']} patches): {cols}")
    print(f"total {report['seconds']:.0f} s -> {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
