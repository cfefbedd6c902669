#!/usr/bin/env python3
"""NeRF volume rendering (dense, and packed with early termination) against the eager torch
composite, its torch.compile and nerfacc (where installed).

    python bench/bench_volume_render.py [--out DIR] [--quick] [--dtype fp16,bf16] [--filter packed] ...

The same as ``python -m cvkernels bench volume_render ...``; every option of the harness works
(see ``--help``). Results: bench/results/<date>-<device>.csv, .json and -volume_render.png.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cvkernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["volume_render"] + sys.argv[1:]))
