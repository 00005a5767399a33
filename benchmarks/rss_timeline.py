"""Resident memory of a command over time: the main process and its children, sampled apart.

    python benchmarks/rss_timeline.py OUT.json -- wsiscan predict SLIDE --model CKPT -o DIR

Writes OUT.json with the samples [seconds, main MB, children MB], the command's output
lines with their times (to tell the stages apart) and its exit code, and prints the
peaks.  A profile beside ``wsiscan bench``, whose peak RSS is the sum over the process tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out_path, cmd = argv[0], argv[2:]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((round(time.time() - t0, 2), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[tuple[float, int, int]] = []
    while proc.poll() is None:
        try:
            main_mb = ps.memory_info().rss >> 20
            kids_mb = sum(c.memory_info().rss for c in ps.children(recursive=True)) >> 20
        except psutil.Error:
            break
        samples.append((round(time.time() - t0, 2), main_mb, kids_mb))
        time.sleep(0.25)
    proc.wait()
    reader.join(timeout=5)
    with open(out_path, "w") as fh:
        json.dump({"command": cmd, "rc": proc.returncode, "samples": samples, "lines": lines}, fh)
    if samples:
        peak = max(samples, key=lambda s: s[1])
        print(f"rc {proc.returncode}, {time.time() - t0:.1f} s; peak main {peak[1]} MB at {peak[0]} s; "
              f"peak children {max(s[2] for s in samples)} MB; peak sum {max(s[1] + s[2] for s in samples)} MB")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
