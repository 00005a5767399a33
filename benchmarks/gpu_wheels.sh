#!/usr/bin/env bash
# Wheels of the dependencies the GPU machine's image lacks (it has PyTorch, numpy, scipy, scikit-image,
# tifffile, pillow, click, tqdm, pyyaml, psutil, matplotlib, h5py, ...; no registry), for Python 3.12
# x86-64, into .whl/ (ignored by git; carried with the `run` call), and the tissue source slide into
# .gpu-data/. Run here, from the repository root, before benchmarks/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo /.gpu-data/ >> "$(git rev-parse --git-path info/exclude)"
mkdir -p .whl .gpu-data
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_31_x86_64 --platform any)
for req in openslide-python openslide-bin zarr numcodecs donfig crc32c typing_extensions imagecodecs shapely; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl "$req"
done
cp -n ../shared/data/slides/CMU-1-Small-Region.svs .gpu-data/ 2>/dev/null || cp -n /work/shared/data/slides/CMU-1-Small-Region.svs .gpu-data/
du -sh .whl .gpu-data   # the working tree that travels must stay under 64 MiB
