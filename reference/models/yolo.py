"""Reference YOLO detectors: YOLO v1 (S x S grid, B boxes, C classes) and the YOLOX decoupled, anchor-free head.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2055-2072  Kalhor: YOLO v1, detection as regression: an S x S grid, the cell holding an object's centre is
                 responsible for it, each prediction = (x, y, w, h, confidence), a multi-task loss; K l.1820:
                 448 px, VOC AP50 57.9, 45 FPS.
  R l.914-924    Rossi: grid, B boxes per cell, C class scores, one forward pass.
  O l.523-530    lecture notes: the S x S x (B * 5 + C) output tensor.
  K l.2179-2209  Kalhor: YOLOX, anchor-free, decoupled head (per FPN level a 1x1 conv to 256 channels, then two
                 parallel branches of two 3x3 convs for classification and regression, the IoU (objectness)
                 branch on the regression branch), SimOTA label assignment; the YOLOX-Darknet53 roadmap table.
Papers:
  Redmon, Divvala, Girshick, Farhadi, "You Only Look Once", CVPR 2016, arXiv:1506.02640: Fig. 3 (24 conv
  layers, 1x1 reductions, leaky ReLU 0.1, two fc layers 4096 and 7 x 7 x 30), Sec. 2.2 (dropout 0.5 after the
  first fc; the sum-squared loss, eq. 3, with lambda_coord 5, lambda_noobj 0.5, square roots of w and h, the
  predictor with the highest current IoU responsible, confidence target = that IoU; x, y relative to the cell,
  w, h to the image), class-specific confidence = Pr(class | object) x confidence at test time.
  Ge, Liu, Wang, Li, Sun, "YOLOX: Exceeding YOLO Series in 2021", arXiv:2107.08430: Sec. 2.1 and Fig. 2 (the
  decoupled head with BN + SiLU, 1x1 conv outputs cls (C), reg (4), obj (1) per level; anchor-free: xy =
  (offset + grid) x stride, wh = exp(.) x stride; SimOTA: centre prior of radius 2.5 strides, cost = cls cost
  + 3 x IoU cost, dynamic k = sum of the 10 best IoUs; IoU loss, BCE objectness and classification losses, reg
  weight 5) and the released code (prior-probability bias 0.01, BN eps 1e-3).
Deviations: YOLOX's backbone and neck here are a small strided-conv net with a top-down FPN (BaseConv = conv +
BN + SiLU) ending in YOLOX-L's head widths (256 / 512 / 1024 channels at strides 8 / 16 / 32): the CSPDarknet /
Darknet-53 + PAFPN of the paper are not modelled, so the roadmap table's 63.72M is not reproduced (recorded in
the figure note); no L1 loss of the last 15 epochs, no Mosaic / MixUp. YOLO v1's class labels and YOLOX's are 0-based
(no background class). The images are taken as given (no resize / normalize). NMS runs only through the
BatchedNMS attribute. Nothing here imports cvkernels, torchvision or timm.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from ._detection import NOT_REPRODUCIBLE, BatchedNMS, box_iou, clip_boxes_to_image, detector_input, nms_detections
from .faster_rcnn import square_images_input

__all__ = ["YOLOv1", "yolo_v1", "BaseConv", "YOLOXBackbone", "YOLOXHead", "YOLOX", "yolox"]

# YOLO v1's 24 convolutions (Redmon et al. 2016, Fig. 3): (kernel, channels, stride) and "M" (2x2/2 max-pool)
YOLO_V1_LAYERS = ([(7, 64, 2), "M", (3, 192, 1), "M", (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M"]
                  + [(1, 256, 1), (3, 512, 1)] * 4 + [(1, 512, 1), (3, 1024, 1), "M"]
                  + [(1, 512, 1), (3, 1024, 1)] * 2 + [(3, 1024, 1), (3, 1024, 2), (3, 1024, 1), (3, 1024, 1)])
# CPU-sized: 112x112 images down to the same 7x7 grid (stride 16)
YOLO_V1_TINY = [(3, 8, 2), "M", (3, 16, 1), "M", (1, 8, 1), (3, 16, 1), "M", (3, 32, 1), (3, 32, 1)]


def _to_xyxy(cxcywh: Tensor) -> Tensor:
    return torch.cat([cxcywh[..., :2] - cxcywh[..., 2:] / 2, cxcywh[..., :2] + cxcywh[..., 2:] / 2], -1)


def _signed_sqrt(v: Tensor) -> Tensor:
    return torch.sign(v) * torch.sqrt(v.abs() + 1e-6)


class YOLOv1(nn.Module):
    """YOLO v1: conv layers (leaky ReLU 0.1) -> fc hidden -> dropout -> fc to S x S x (B * 5 + C).

    head(images) -> (N, S, S, B * 5 + C): per cell B x (x, y, w, h, confidence), then C class probabilities.
    forward(images, targets=None): training -> {loss_box, loss_object, loss_noobject, loss_class} (sums over the
    grid, averaged over the images; targets: boxes (L, 4) x1y1x2y2 pixels, labels (L,) in [0, C)); eval -> a list
    of {boxes, scores, labels} per image.
    """

    def __init__(self, layers=YOLO_V1_LAYERS, image_size=448, grid_size=7, num_boxes=2, num_classes=20,
                 hidden=4096, dropout=0.5, lambda_coord=5.0, lambda_noobj=0.5, score_thresh=0.1, nms_thresh=0.5,
                 detections_per_img=100):
        super().__init__()
        convs, cin, stride = [], 3, 1
        for layer in layers:
            if layer == "M":
                convs.append(nn.MaxPool2d(2, 2))
                stride *= 2
                continue
            k, cout, s = layer
            convs += [nn.Conv2d(cin, cout, k, s, k // 2), nn.LeakyReLU(0.1, inplace=True)]
            cin, stride = cout, stride * s
        if image_size // stride != grid_size:
            raise ValueError(f"YOLOv1: {image_size}px images at stride {stride} give a {image_size // stride} grid, "
                             f"not S = {grid_size}")
        self.features = nn.Sequential(*convs)
        self.S, self.B, self.C = grid_size, num_boxes, num_classes
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * grid_size * grid_size, hidden),
                                        nn.LeakyReLU(0.1, inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, grid_size * grid_size * (num_boxes * 5 + num_classes)))
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.score_thresh, self.detections_per_img = score_thresh, detections_per_img
        self.nms = BatchedNMS(nms_thresh)

    def head(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images)).view(-1, self.S, self.S, self.B * 5 + self.C)

    def _boxes(self, out: Tensor, image_size) -> Tensor:
        """(N, S, S, B, 4) predicted boxes, x1y1x2y2 in pixels."""
        h, w = image_size
        p = out[..., :self.B * 5].reshape(*out.shape[:3], self.B, 5)
        cells = torch.arange(self.S, device=out.device, dtype=out.dtype)
        cx = (p[..., 0] + cells.view(1, 1, -1, 1)) / self.S * w
        cy = (p[..., 1] + cells.view(1, -1, 1, 1)) / self.S * h
        return _to_xyxy(torch.stack([cx, cy, p[..., 2] * w, p[..., 3] * h], -1))

    def compute_loss(self, out: Tensor, targets, image_size) -> Dict[str, Tensor]:
        h, w = image_size
        S, B = self.S, self.B
        p = out[..., :B * 5].reshape(*out.shape[:3], B, 5)
        pred_boxes = self._boxes(out, image_size).detach()
        responsible = torch.zeros(p.shape[:4], dtype=torch.bool, device=out.device)      # (N, S, S, B)
        has_object = torch.zeros(out.shape[:3], dtype=torch.bool, device=out.device)      # (N, S, S)
        box_target = out.new_zeros(p.shape[:4] + (4,))
        conf_target = out.new_zeros(p.shape[:4])
        class_target = out.new_zeros(out.shape[:3] + (self.C,))
        for n, target in enumerate(targets):
            for box, label in zip(target["boxes"], target["labels"]):   # a later object in the same cell wins
                cx, cy, bw, bh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
                i, j = min(int(cy / h * S), S - 1), min(int(cx / w * S), S - 1)
                ious = box_iou(pred_boxes[n, i, j], box[None])[:, 0]
                best = int(ious.argmax())
                responsible[n, i, j] = False
                responsible[n, i, j, best] = True
                has_object[n, i, j] = True
                box_target[n, i, j, best] = torch.stack([cx / w * S - j, cy / h * S - i, bw / w, bh / h])
                conf_target[n, i, j, best] = ious[best]
                class_target[n, i, j] = F.one_hot(label, self.C).to(out.dtype)
        r = responsible
        xy = (p[..., :2][r] - box_target[..., :2][r]).square().sum()
        wh = (_signed_sqrt(p[..., 2:4][r]) - box_target[..., 2:4][r].sqrt()).square().sum()
        conf = p[..., 4]
        n = out.shape[0]
        return {"loss_box": self.lambda_coord * (xy + wh) / n,
                "loss_object": (conf[r] - conf_target[r]).square().sum() / n,
                "loss_noobject": self.lambda_noobj * conf[~r].square().sum() / n,
                "loss_class": (out[..., B * 5:][has_object] - class_target[has_object]).square().sum() / n}

    def postprocess(self, out: Tensor, image_shapes):
        """Class-specific confidences Pr(class) x confidence per box above score_thresh, NMS per class."""
        boxes = clip_boxes_to_image(self._boxes(out, image_shapes[0]), image_shapes[0])
        conf = out[..., :self.B * 5].reshape(*out.shape[:3], self.B, 5)[..., 4]
        scores = out[..., None, self.B * 5:] * conf[..., None]                          # (N, S, S, B, C)
        results = []
        for b, s in zip(boxes.reshape(out.shape[0], -1, 4), scores.reshape(out.shape[0], -1, self.C)):
            keep = torch.where(s > self.score_thresh)
            results.append(nms_detections(self.nms, b[keep[0]], s[keep], keep[1], self.detections_per_img))
        return results

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        out = self.head(images)
        if self.training:
            return self.compute_loss(out, targets, image_shapes[0])
        return self.postprocess(out, image_shapes)


def yolo_v1(tiny=False, **kwargs):
    """YOLO v1, the paper's 24-conv network at 448x448, S=7, B=2, C=20 (output 7 x 7 x 30); ``tiny``: a 5-conv
    net on 112x112 images with the same 7x7 grid."""
    if tiny:
        kwargs.setdefault("layers", YOLO_V1_TINY)
        kwargs.setdefault("image_size", 112)
    return YOLOv1(**kwargs)


# ----------------------------------------------------------------------------- YOLOX

class BaseConv(nn.Sequential):
    """YOLOX's BaseConv: conv (no bias, 'same' padding) -> BatchNorm2d (eps 1e-3, momentum 0.03) -> SiLU."""

    def __init__(self, cin, cout, kernel, stride=1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03), nn.SiLU(inplace=True))


class YOLOXBackbone(nn.Module):
    """A small stand-in backbone + neck: stride-2 3x3 BaseConvs to strides 8 / 16 / 32 with ``channels`` (C3, C4,
    C5) there, then a top-down FPN (1x1 BaseConv lateral of the coarser map, nearest 2x upsampling, add, 3x3
    BaseConv); forward(x) -> [P3, P4, P5] with ``channels``."""

    def __init__(self, channels=(256, 512, 1024)):
        super().__init__()
        c3, c4, c5 = channels
        self.stem = nn.Sequential(BaseConv(3, c3 // 8, 3, 2), BaseConv(c3 // 8, c3 // 4, 3, 2),
                                  BaseConv(c3 // 4, c3, 3, 2))
        self.dark4 = BaseConv(c3, c4, 3, 2)
        self.dark5 = BaseConv(c4, c5, 3, 2)
        self.lateral5, self.smooth4 = BaseConv(c5, c4, 1), BaseConv(c4, c4, 3)
        self.lateral4, self.smooth3 = BaseConv(c4, c3, 1), BaseConv(c3, c3, 3)

    def forward(self, x) -> List[Tensor]:
        x3 = self.stem(x)
        x4 = self.dark4(x3)
        x5 = self.dark5(x4)
        p4 = self.smooth4(x4 + F.interpolate(self.lateral5(x5), size=x4.shape[-2:], mode="nearest"))
        p3 = self.smooth3(x3 + F.interpolate(self.lateral4(p4), size=x3.shape[-2:], mode="nearest"))
        return [p3, p4, x5]


class YOLOXHead(nn.Module):
    """The decoupled head: per level stem (1x1 BaseConv to ``width``), cls branch (two 3x3 BaseConvs -> 1x1 conv to
    num_classes) and reg branch (two 3x3 BaseConvs -> 1x1 convs to 4 box and 1 objectness outputs);
    forward(features) -> list of (N, H * W, 4 + 1 + num_classes) raw outputs (reg, obj, cls) per level."""

    def __init__(self, num_classes, in_channels=(256, 512, 1024), width=256, prior_prob=0.01):
        super().__init__()
        self.num_classes = num_classes
        self.stems = nn.ModuleList(BaseConv(c, width, 1) for c in in_channels)
        branch = lambda: nn.Sequential(BaseConv(width, width, 3), BaseConv(width, width, 3))  # noqa: E731
        self.cls_convs = nn.ModuleList(branch() for _ in in_channels)
        self.reg_convs = nn.ModuleList(branch() for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in in_channels)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in list(self.cls_preds) + list(self.obj_preds):
            nn.init.constant_(conv.bias, bias)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        outputs = []
        for i, f in enumerate(features):
            x = self.stems[i](f)
            cls = self.cls_preds[i](self.cls_convs[i](x))
            reg_feat = self.reg_convs[i](x)
            out = torch.cat([self.reg_preds[i](reg_feat), self.obj_preds[i](reg_feat), cls], 1)
            outputs.append(out.flatten(2).transpose(1, 2))
        return outputs


class YOLOX(nn.Module):
    """forward(images, targets=None): training -> {loss_iou (x reg_weight), loss_obj, loss_cls}, summed over the
    anchor points and divided by the SimOTA foreground count (labels 0-based); eval -> a list of
    {boxes, scores, labels} per image (score = objectness x best class probability, NMS per class)."""

    def __init__(self, num_classes=80, channels=(256, 512, 1024), width=256, strides=(8, 16, 32), score_thresh=0.01,
                 nms_thresh=0.65, detections_per_img=100, reg_weight=5.0, center_radius=2.5):
        super().__init__()
        self.backbone = YOLOXBackbone(channels)
        self.head = YOLOXHead(num_classes, channels, width)
        self.strides, self.num_classes = tuple(strides), num_classes
        self.score_thresh, self.detections_per_img = score_thresh, detections_per_img
        self.reg_weight, self.center_radius = reg_weight, center_radius
        self.nms = BatchedNMS(nms_thresh)

    def decode(self, outputs: List[Tensor], features: List[Tensor]):
        """(raw (N, A, 5 + C), boxes (N, A, 4) x1y1x2y2, anchor-point centres (A, 2), strides (A,))."""
        raw = torch.cat(outputs, 1)
        grids, strides = [], []
        for f, s in zip(features, self.strides):
            yv, xv = torch.meshgrid(torch.arange(f.shape[-2], device=raw.device, dtype=raw.dtype),
                                    torch.arange(f.shape[-1], device=raw.device, dtype=raw.dtype), indexing="ij")
            grids.append(torch.stack((xv, yv), -1).reshape(-1, 2))
            strides.append(torch.full((grids[-1].shape[0],), float(s), device=raw.device, dtype=raw.dtype))
        grid, stride = torch.cat(grids), torch.cat(strides)
        xy = (raw[..., :2] + grid) * stride[:, None]
        wh = torch.exp(raw[..., 2:4]) * stride[:, None]
        return raw, _to_xyxy(torch.cat([xy, wh], -1)), (grid + 0.5) * stride[:, None], stride

    @torch.no_grad()
    def simota(self, gt_boxes, gt_labels, boxes, cls_logits, obj_logits, centres, stride):
        """SimOTA: (foreground mask (A,), matched gt index per foreground anchor, its IoU)."""
        in_box = ((centres[None] > gt_boxes[:, None, :2]) & (centres[None] < gt_boxes[:, None, 2:])).all(-1)
        gt_centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        radius = self.center_radius * stride[None, :, None]
        in_centre = ((centres[None] - gt_centre[:, None]).abs() < radius).all(-1)         # (G, A)
        fg = (in_box | in_centre).any(0)
        both = (in_box & in_centre)[:, fg]
        ious = box_iou(gt_boxes, boxes[fg])                                                # (G, F)
        probs = (cls_logits[fg].sigmoid() * obj_logits[fg].sigmoid()).sqrt()
        onehot = F.one_hot(gt_labels, self.num_classes).to(probs.dtype)
        cls_cost = F.binary_cross_entropy(probs[None].expand(len(gt_boxes), -1, -1),
                                          onehot[:, None].expand(-1, probs.shape[0], -1), reduction="none").sum(-1)
        cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both)
        dynamic_k = ious.topk(min(10, ious.shape[1]), dim=1).values.sum(1).int().clamp(min=1)
        matching = torch.zeros_like(cost, dtype=torch.bool)
        for g in range(cost.shape[0]):
            matching[g, cost[g].topk(min(int(dynamic_k[g]), cost.shape[1]), largest=False).indices] = True
        multiple = matching.sum(0) > 1
        if multiple.any():   # an anchor matched to several ground truths keeps the cheapest
            matching[:, multiple] = False
            matching[cost[:, multiple].argmin(0), torch.where(multiple)[0]] = True
        matched_anchor = matching.any(0)
        fg_idx = torch.where(fg)[0]
        fg_final = torch.zeros_like(fg)
        fg_final[fg_idx[matched_anchor]] = True
        gt_idx = matching[:, matched_anchor].int().argmax(0)
        return fg_final, gt_idx, ious[gt_idx, torch.where(matched_anchor)[0]]

    def compute_loss(self, raw, boxes, centres, stride, targets):
        C = self.num_classes
        iou_losses, obj_losses, cls_losses, num_fg = [], [], [], 0
        for n, target in enumerate(targets):
            gt, labels = target["boxes"].to(raw.dtype), target["labels"]
            fg, gt_idx, pred_iou = self.simota(gt, labels, boxes[n], raw[n, :, 5:], raw[n, :, 4:5], centres, stride)
            num_fg += int(fg.sum())
            ious = torch.diagonal(box_iou(boxes[n][fg], gt[gt_idx])) if fg.any() else raw.new_zeros(0)
            iou_losses.append((1 - ious.square()).sum())
            obj_losses.append(F.binary_cross_entropy_with_logits(raw[n, :, 4], fg.to(raw.dtype), reduction="sum"))
            cls_target = F.one_hot(labels[gt_idx], C).to(raw.dtype) * pred_iou[:, None]
            cls_losses.append(F.binary_cross_entropy_with_logits(raw[n, fg, 5:], cls_target, reduction="sum"))
        num_fg = max(num_fg, 1)
        return {"loss_iou": self.reg_weight * sum(iou_losses) / num_fg, "loss_obj": sum(obj_losses) / num_fg,
                "loss_cls": sum(cls_losses) / num_fg}

    def postprocess(self, raw, boxes, image_shapes):
        results = []
        for r, b, shape in zip(raw, boxes, image_shapes):
            class_prob, labels = r[:, 5:].sigmoid().max(-1)
            scores = r[:, 4].sigmoid() * class_prob
            keep = torch.where(scores > self.score_thresh)[0]
            results.append(nms_detections(self.nms, clip_boxes_to_image(b[keep], shape), scores[keep], labels[keep],
                                          self.detections_per_img))
        return results

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        features = self.backbone(images)
        raw, boxes, centres, stride = self.decode(self.head(features), features)
        if self.training:
            return self.compute_loss(raw, boxes, centres, stride, targets)
        return self.postprocess(raw, boxes, image_shapes)


def yolox(**kwargs):
    """YOLOX decoupled head (width 256) on YOLOX-L's level widths 256 / 512 / 1024 (strides 8 / 16 / 32) of a small
    stand-in backbone + FPN, 80 classes."""
    return YOLOX(**kwargs)


def _yolo_v1_input(batch, config):
    size = config.get("image_size", 112 if config.get("tiny") else 448)
    return torch.randn(batch, 3, size, size)


register(
    "yolo_v1", yolo_v1,
    small_config=dict(tiny=True, hidden=64, dropout=0.0, score_thresh=0.01, detections_per_img=30),
    example_input=_yolo_v1_input,
    families=("NMS",),
    figures={
        "ap50": Figure(57.9, "K l.1820 (YOLO, 448 px, VOC 2012 AP50 57.90 %)", note=NOT_REPRODUCIBLE),
        "fps": Figure(45.0, "K l.1820 (45 FPS)", note=NOT_REPRODUCIBLE),
    },
)
register(
    "yolox", yolox,
    # levels of 16 / 32 / 64 channels and a 16-wide head on 64x64 images (8x8, 4x4 and 2x2 anchor points)
    small_config=dict(num_classes=5, channels=(16, 32, 64), width=16, score_thresh=0.001, detections_per_img=30),
    example_input=square_images_input(64),
    families=("NMS", "BNR"),
    figures={
        "darknet53_params": Figure(63.72e6, "K l.2204-2206 (YOLOX-Darknet53, anchor-free + SimOTA: 63.72 M)",
                                   note="not reproduced: the Darknet-53 backbone and YOLOv3-SPP neck are not "
                                        "modelled here (a small stand-in backbone carries the head); the head "
                                        "itself is counted by hand in the tests"),
        "ap": Figure(47.3, "K l.2206 (YOLOX-Darknet53 + SimOTA, COCO val AP 47.3)", note=NOT_REPRODUCIBLE),
    },
)
