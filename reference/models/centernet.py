"""Reference CenterNet ("Objects as Points") on a ResNet with an upsampling (deconvolution) neck.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2133-2164  Kalhor: CenterNet models an object as the centre point of its box: a fully convolutional network
                 gives a heatmap whose peaks are the centres; three heads: heatmap (centre per class), dimension
                 (size) and offset (the discretization error of the downsampled centre); K l.1825:
                 Hourglass-104, 512 px, COCO AP 42.1.
Paper: Zhou, Wang, Krahenbuhl, "Objects as Points", arXiv:1904.07850: Sec. 3 (output stride R = 4; ground-truth
  heatmap = per-class max of Gaussians exp(-((x - p_x)^2 + (y - p_y)^2) / (2 sigma_p^2)) at the low-resolution
  centres; the penalty-reduced focal loss, alpha 2, beta 4, normalized by the object count; L1 offset loss
  (weight 1) and L1 size loss (weight 0.1) at the centres), Sec. 4 (peaks = values not smaller than their 8
  neighbours, by a 3x3 max-pool, top 100; box = centre + offset -/+ size / 2), Sec. 5 / released code (ResNet
  with three 4x4 stride-2 up-convolutions of 256, 128, 64 channels, each after a 3x3 conv (deformable in the
  paper, a plain conv here) with BN + ReLU; heads 3x3 conv (64) + ReLU + 1x1 conv; heatmap bias -2.19; the
  Gaussian radius of CornerNet with min overlap 0.7, sigma = (2 r + 1) / 6).
The standard configuration is the paper's ResNet-18 variant (Hourglass-104 of the AP figure is not modelled).
Deviations: plain 3x3 convs instead of deformable ones; images taken as given; class labels 0-based. There is no
NMS (the max-pool peak extraction replaces it) and no RoI operator: nothing for cvkernels.convert's detection
pass to route. Nothing here imports cvkernels, torchvision or timm.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from ._detection import NOT_REPRODUCIBLE, detector_input
from .faster_rcnn import ResNetBody, square_images_input
from . import resnet as _resnet

__all__ = ["gaussian_radius", "draw_heatmap", "centernet_focal_loss", "CenterNet", "centernet_resnet18"]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's radius: the smallest of the three corner displacements keeping IoU >= min_overlap."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_heatmap(heatmap: Tensor, cx: int, cy: int, radius: int):
    """heatmap (H, W) = max(heatmap, Gaussian of sigma (2 radius + 1) / 6 at (cx, cy), cut at +-radius), in place."""
    h, w = heatmap.shape
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(h, dtype=heatmap.dtype, device=heatmap.device)[:, None] - cy
    xs = torch.arange(w, dtype=heatmap.dtype, device=heatmap.device)[None, :] - cx
    g = torch.exp(-(xs ** 2 + ys ** 2) / (2 * sigma * sigma))
    g = g * ((xs.abs() <= radius) & (ys.abs() <= radius))
    torch.maximum(heatmap, g, out=heatmap)


def centernet_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Penalty-reduced pixel-wise focal loss (alpha 2, beta 4) of heatmap logits against Gaussian targets,
    divided by the number of centres (target == 1); predictions clamped to [1e-4, 1 - 1e-4]."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).to(pred.dtype)
    neg_weight = (1 - target) ** 4
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred ** 2 * neg_weight * (1 - pos)).sum()
    num_pos = pos.sum()
    return -(pos_loss + neg_loss) / num_pos.clamp(min=1)


class CenterNet(nn.Module):
    """ResNet body -> three (3x3 conv + BN + ReLU -> 4x4/2 ConvTranspose2d + BN + ReLU) stages -> heads hm
    (num_classes), wh (2), reg (2) at stride 4.

    forward(images, targets=None): training -> {loss_hm, loss_wh (x 0.1), loss_off}; eval -> a list of
    {boxes, scores, labels} per image (the top_k peaks with score > score_thresh).
    """

    def __init__(self, num_classes=80, backbone="resnet18", backbone_width=64, deconv_channels=(256, 128, 64),
                 head_conv=64, top_k=100, score_thresh=0.0, wh_weight=0.1, off_weight=1.0):
        super().__init__()
        resnet = getattr(_resnet, backbone)(width=backbone_width)
        self.backbone = ResNetBody(resnet, {"layer4": "0"})
        cin = backbone_width * 8 * resnet.layer1[0].expansion
        layers = []
        for c in deconv_channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.ConvTranspose2d(c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.deconv_layers = nn.Sequential(*layers)
        self.down_ratio = 32 // 2 ** len(deconv_channels)
        heads = {"hm": num_classes, "wh": 2, "reg": 2}
        for name, out in heads.items():
            head = nn.Sequential(nn.Conv2d(cin, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_conv, out, 1))
            nn.init.constant_(head[-1].bias, -2.19 if name == "hm" else 0.0)
            self.add_module(name, head)
        self.num_classes, self.top_k, self.score_thresh = num_classes, top_k, score_thresh
        self.wh_weight, self.off_weight = wh_weight, off_weight

    def compute_loss(self, hm, wh, reg, targets):
        n, C, H, W = hm.shape
        target_hm = torch.zeros_like(hm)
        pos_b, pos_y, pos_x, sizes, offsets = [], [], [], [], []
        for b, target in enumerate(targets):
            for box, label in zip(target["boxes"] / self.down_ratio, target["labels"]):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                centre = (box[:2] + box[2:]) / 2
                cx, cy = min(int(centre[0]), W - 1), min(int(centre[1]), H - 1)
                draw_heatmap(target_hm[b, int(label)], cx, cy, max(0, int(gaussian_radius(h, w))))
                pos_b.append(b)
                pos_y.append(cy)
                pos_x.append(cx)
                sizes.append(torch.stack([box[2] - box[0], box[3] - box[1]]))
                offsets.append(centre - torch.tensor([cx, cy], dtype=centre.dtype))
        idx = (torch.tensor(pos_b), slice(None), torch.tensor(pos_y), torch.tensor(pos_x))
        num = len(pos_b)
        loss_wh = F.l1_loss(wh.permute(0, 2, 3, 1)[idx[0], idx[2], idx[3]], torch.stack(sizes), reduction="sum") / num
        loss_off = F.l1_loss(reg.permute(0, 2, 3, 1)[idx[0], idx[2], idx[3]], torch.stack(offsets),
                             reduction="sum") / num
        return {"loss_hm": centernet_focal_loss(hm, target_hm), "loss_wh": self.wh_weight * loss_wh,
                "loss_off": self.off_weight * loss_off}

    def postprocess(self, hm, wh, reg, image_shapes):
        n, C, H, W = hm.shape
        heat = hm.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
        scores, idx = peaks.view(n, -1).topk(min(self.top_k, C * H * W))
        labels, pix = idx // (H * W), idx % (H * W)
        ys, xs = (pix // W).to(hm.dtype), (pix % W).to(hm.dtype)
        results = []
        for b in range(n):
            off, size = reg[b].view(2, -1)[:, pix[b]], wh[b].view(2, -1)[:, pix[b]]
            cx, cy = xs[b] + off[0], ys[b] + off[1]
            boxes = torch.stack([cx - size[0] / 2, cy - size[1] / 2, cx + size[0] / 2, cy + size[1] / 2], 1)
            keep = scores[b] > self.score_thresh
            results.append({"boxes": boxes[keep] * self.down_ratio, "scores": scores[b][keep],
                            "labels": labels[b][keep]})
        return results

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        x = self.deconv_layers(self.backbone(images)["0"])
        hm, wh, reg = self.hm(x), self.wh(x), self.reg(x)
        if self.training:
            return self.compute_loss(hm, wh, reg, targets)
        return self.postprocess(hm, wh, reg, image_shapes)


def centernet_resnet18(**kwargs):
    """CenterNet, ResNet-18 with three up-convolution stages (256, 128, 64) at output stride 4, 80 classes."""
    return CenterNet(**kwargs)


register(
    "centernet_resnet18", centernet_resnet18,
    small_config=dict(num_classes=5, backbone_width=8, deconv_channels=(32, 16, 16), head_conv=16, top_k=30),
    example_input=square_images_input(64),
    # the up-convolutions are ConvTranspose2d (family TC), not claimed: tests/test_models_conv.py runs every TC
    # model as a classifier
    families=("BNR",),
    figures={
        "ap": Figure(42.1, "K l.1825 (CenterNet, Hourglass-104, 512 px, COCO AP 42.10 %)",
                     note=NOT_REPRODUCIBLE + " (and the Hourglass-104 backbone is not modelled)"),
    },
)
