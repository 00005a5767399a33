"""Write a large, realistic pyramidal benchmark slide (``wsiscan_bench.make_slide``; ``--help`` for options).

    python benchmarks/make_slide.py --size 20k -o bench-out/slides/bench-20k.tif
"""

import sys

from wsiscan_bench.make_slide import main

if __name__ == "__main__":
    sys.exit(main())
