#!/usr/bin/env python3
"""RoI Align (Mask R-CNN FPN shapes) and NMS / batched NMS against torchvision (eager) and
torch.compile of the torchvision call; RoI Align also with the deterministic backward.

    python bench/bench_detection.py [--out DIR] [--quick] [--dtype fp16,bf16] [--mode fwd,fwd+bwd] ...
    python bench/bench_detection.py --max-seconds 480     # the whole GPU suite in one call

The same as ``python -m cvkernels bench detection ...`` (aliases roi, roi_align, nms); every
option of the harness works (see ``--help``). Results: bench/results/<date>-<device>.csv, .json,
-detection.png and -detection-metrics.csv (boxes/s for NMS, GB/s for RoI Align).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cvkernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["detection"] + sys.argv[1:]))
