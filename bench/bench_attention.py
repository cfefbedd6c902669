#!/usr/bin/env python3
"""Flash attention (SDPA) and Swin shifted-window attention against every SDPA backend, timm
(or the eager composite) and torch.compile.

    python bench/bench_attention.py [--out DIR] [--quick] [--dtype fp16,bf16] [--mode fwd,fwd+bwd] ...

The same as ``python -m cvkernels bench attention ...``; every option of the harness works
(see ``--help``). Results: bench/results/<date>-<device>.csv (with the derived "sdpa-best"
rows), .json, -attention.png and -attention-metrics.csv (GB/s and TFLOP/s of every row).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cvkernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["attention"] + sys.argv[1:]))
