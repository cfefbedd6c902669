"""Reference SSD300 (Single Shot MultiBox Detector) on VGG-16.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2076-2092  Kalhor: SSD, a one-stage detector built on VGG-16 with auxiliary convolution layers of
                 decreasing size at the end; K l.1821: VGG-16, 300 px, AP 23.2, AP50 41.2, 46 FPS.
  O l.531-539    lecture notes: default boxes of several scales and aspect ratios at every location of several
                 feature maps; 3x3 convolutional predictors of class scores and box offsets per default box.
  A l.387        design-patterns report: SSD, detection from several levels of a VGG-16.
Paper: Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, arXiv:1512.02325: Sec. 2.1-2.2 and Fig. 2
  (conv4_3 (L2-normalized, learned scale 20), fc6 as a 3x3 conv of dilation 6 and fc7 as 1x1 (1024), the
  extra layers conv8_2..conv11_2; 4/6/6/6/4/4 default boxes at 38/19/10/5/3/1: 8732; scales s_k, s'_k =
  sqrt(s_k s_k+1), ratios {2, 3}; matching: each ground truth's best default box plus every IoU > 0.5; loss
  (L_conf + L_loc) / N, smooth L1, hard negative mining at 3:1 negatives:positives).
The configuration, the names and the constants are torchvision's ssd300_vgg16 (scales 0.07..1.05, steps
8..300, box coder weights 10/10/5/5, score threshold 0.01, 400 candidates per class, NMS 0.45, 200 detections);
the images are taken as given (no resize / normalize transform, the default boxes are laid out for the image
size at hand). NMS runs only through the BatchedNMS attribute. Nothing here imports cvkernels, torchvision or
timm.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from ._detection import (NOT_REPRODUCIBLE, BatchedNMS, BoxCoder, Matcher, box_iou, clip_boxes_to_image, detector_input,
                         nms_detections)
from .faster_rcnn import square_images_input, flatten_level

__all__ = ["DefaultBoxGenerator", "SSDMatcher", "VGGBackbone", "SSDHead", "SSD", "ssd300_vgg16"]


class DefaultBoxGenerator(nn.Module):
    """SSD default boxes (torchvision's DefaultBoxGenerator): per level k, (s_k, s_k), (s'_k, s'_k) and
    (s_k sqrt(r), s_k / sqrt(r)), (s_k / sqrt(r), s_k sqrt(r)) for each ratio r, clamped to [0, 1], centred at
    ((j + 0.5) / f_k, (i + 0.5) / f_k) with f_k = image size / step; forward -> (sum HWA, 4) x1y1x2y2 pixels."""

    def __init__(self, aspect_ratios, scales, steps=None, clip=True):
        super().__init__()
        self.aspect_ratios, self.scales, self.steps, self.clip = aspect_ratios, scales, steps, clip
        self.wh_pairs = []
        for k, ratios in enumerate(aspect_ratios):
            s_k, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
            pairs = [[s_k, s_k], [s_prime, s_prime]]
            for r in ratios:
                w, h = s_k * math.sqrt(r), s_k / math.sqrt(r)
                pairs += [[w, h], [h, w]]
            self.wh_pairs.append(torch.tensor(pairs))

    def num_anchors_per_location(self) -> List[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def forward(self, image_size, feature_maps: List[Tensor]) -> Tensor:
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        boxes = []
        for k, fmap in enumerate(feature_maps):
            fh, fw = fmap.shape[-2:]
            if self.steps is not None:
                fy, fx = image_size[0] / self.steps[k], image_size[1] / self.steps[k]
            else:
                fy, fx = fh, fw
            cy = (torch.arange(fh, device=device, dtype=dtype) + 0.5) / fy
            cx = (torch.arange(fw, device=device, dtype=dtype) + 0.5) / fx
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            wh = self.wh_pairs[k].to(device=device, dtype=dtype)
            wh = wh.clamp(0, 1) if self.clip else wh
            centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), -1)[:, None].expand(-1, wh.shape[0], 2)
            boxes.append(torch.cat([centres.reshape(-1, 2), wh.repeat(fh * fw, 1)], 1))
        boxes = torch.cat(boxes)
        xyxy = torch.cat([boxes[:, :2] - 0.5 * boxes[:, 2:], boxes[:, :2] + 0.5 * boxes[:, 2:]], -1)
        scale = torch.tensor([image_size[1], image_size[0]] * 2, dtype=dtype, device=device)
        return xyxy * scale


class SSDMatcher(Matcher):
    """IoU >= threshold matches, and each ground truth additionally takes its best default box."""

    def __init__(self, threshold):
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __call__(self, quality):
        matches = super().__call__(quality)
        best = quality.max(dim=1).indices
        matches[best] = torch.arange(best.shape[0], dtype=torch.int64, device=best.device)
        return matches


class L2Norm(nn.Module):
    """Channel-wise L2 normalization with a learned per-channel scale (ParseNet; SSD's conv4_3, init 20)."""

    def __init__(self, channels, scale=20.0):
        super().__init__()
        self.scale_weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x):
        return self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)


def _vgg_block(cin, cout, convs, pool=None):
    layers = [] if pool is None else [pool]
    for _ in range(convs):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    return layers


class VGGBackbone(nn.Module):
    """SSD's VGG-16: ``features`` = conv1_1..conv4_3 (+ ReLU; the third pool with ceil_mode), L2-normalized;
    extra.0 = pool4, conv5_1..5_3, pool5 3x3/1, fc6 (3x3, dilation 6, 1024), fc7 (1x1, 1024); extra.1..4 =
    conv8..conv11 (1x1 then 3x3, stride 2 / 2 / 1 unpadded / 1 unpadded). Widths scale with ``width`` / 64.
    forward(x) -> the six feature maps (38, 19, 10, 5, 3, 1 at 300x300)."""

    def __init__(self, width=64):
        super().__init__()
        c = lambda n: n * width // 64  # noqa: E731
        pool = lambda ceil=False: nn.MaxPool2d(2, 2, ceil_mode=ceil)  # noqa: E731
        self.features = nn.Sequential(*(_vgg_block(3, c(64), 2) + _vgg_block(c(64), c(128), 2, pool())
                                        + _vgg_block(c(128), c(256), 3, pool())
                                        + _vgg_block(c(256), c(512), 3, pool(True))))
        self.scale_weight_norm = L2Norm(c(512))
        fc = [nn.MaxPool2d(3, 1, 1), nn.Conv2d(c(512), c(1024), 3, padding=6, dilation=6), nn.ReLU(inplace=True),
              nn.Conv2d(c(1024), c(1024), 1), nn.ReLU(inplace=True)]
        extra = [nn.Sequential(*(_vgg_block(c(512), c(512), 3, pool()) + fc))]
        for cin, mid, cout, stride, pad in ((1024, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 1, 0),
                                            (256, 128, 256, 1, 0)):
            extra.append(nn.Sequential(nn.Conv2d(c(cin), c(mid), 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(c(mid), c(cout), 3, stride=stride, padding=pad),
                                       nn.ReLU(inplace=True)))
        self.extra = nn.ModuleList(extra)
        self.out_channels = [c(512), c(1024), c(512), c(256), c(256), c(256)]
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, x) -> List[Tensor]:
        x = self.features(x)
        outputs = [self.scale_weight_norm(x)]
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return outputs


class SSDHead(nn.Module):
    """One 3x3 conv per level for the class logits (A * num_classes) and one for the box deltas (4A);
    forward(features) -> (logits (B, sum HWA, num_classes), deltas (B, sum HWA, 4))."""

    def __init__(self, in_channels, num_anchors, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.classification_head = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1)
                                                 for c, a in zip(in_channels, num_anchors))
        self.regression_head = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1)
                                             for c, a in zip(in_channels, num_anchors))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, features: List[Tensor]):
        logits = [flatten_level(h(f), self.num_classes) for h, f in zip(self.classification_head, features)]
        deltas = [flatten_level(h(f), 4) for h, f in zip(self.regression_head, features)]
        return torch.cat(logits, 1), torch.cat(deltas, 1)


class SSD(nn.Module):
    """forward(images, targets=None): training -> {bbox_regression, classification}; eval -> a list of
    {boxes, scores, labels} per image (formats as reference/models/faster_rcnn.py's FasterRCNN)."""

    def __init__(self, backbone, anchor_generator, num_classes, iou_thresh=0.5, score_thresh=0.01, nms_thresh=0.45,
                 detections_per_img=200, topk_candidates=400, neg_to_pos_ratio=3):
        super().__init__()
        self.backbone, self.anchor_generator = backbone, anchor_generator
        self.head = SSDHead(backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.proposal_matcher = SSDMatcher(iou_thresh)
        self.nms = BatchedNMS(nms_thresh)
        self.score_thresh, self.detections_per_img = score_thresh, detections_per_img
        self.topk_candidates, self.neg_to_pos_ratio = topk_candidates, neg_to_pos_ratio

    def compute_loss(self, targets, logits, deltas, anchors):
        """Smooth L1 (beta 1) on the matched boxes; cross-entropy on the positives and the hardest negatives (the
        neg_to_pos_ratio x positives count with the largest loss per image); both divided by the positives."""
        box_losses, cls_targets, num_fg = [], [], 0
        for target, delta in zip(targets, deltas):
            matched = self.proposal_matcher(box_iou(target["boxes"], anchors))
            fg = torch.where(matched >= 0)[0]
            num_fg += fg.numel()
            regression_targets = self.box_coder.encode(target["boxes"][matched[fg]], anchors[fg])
            box_losses.append(F.smooth_l1_loss(delta[fg], regression_targets, reduction="sum"))
            classes = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
            classes[fg] = target["labels"][matched[fg]]
            cls_targets.append(classes)
        cls_targets = torch.stack(cls_targets)
        cls_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), cls_targets.view(-1),
                                   reduction="none").view(cls_targets.shape)
        foreground = cls_targets > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = cls_loss.clone().detach()
        negative_loss[foreground] = -float("inf")
        order = negative_loss.sort(1, descending=True).indices
        background = order.sort(1).indices < num_negative      # rank of each anchor's loss < the negatives' count
        n = max(1, num_fg)
        return {"bbox_regression": torch.stack(box_losses).sum() / n,
                "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n}

    def postprocess_detections(self, logits, deltas, anchors, image_shapes):
        """Per image: softmax scores; per class (background excluded) those above score_thresh, the
        topk_candidates best; NMS per class; the detections_per_img best."""
        results = []
        for logit, delta, shape in zip(logits, deltas, image_shapes):
            boxes = clip_boxes_to_image(self.box_coder.decode(delta, anchors)[:, 0], shape)
            scores = F.softmax(logit, -1)
            out_boxes, out_scores, out_labels = [], [], []
            for label in range(1, scores.shape[-1]):
                score = scores[:, label]
                keep = torch.where(score > self.score_thresh)[0]
                score, idx = score[keep].topk(min(self.topk_candidates, keep.numel()))
                out_boxes.append(boxes[keep[idx]])
                out_scores.append(score)
                out_labels.append(torch.full_like(idx, label))
            results.append(nms_detections(self.nms, torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels),
                                          self.detections_per_img))
        return results

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        features = self.backbone(images)
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(image_shapes[0], features)
        if self.training:
            return self.compute_loss(targets, logits, deltas, anchors)
        return self.postprocess_detections(logits, deltas, anchors, image_shapes)


def ssd300_vgg16(num_classes=91, width=64, score_thresh=0.01, nms_thresh=0.45, detections_per_img=200,
                 topk_candidates=400):
    """SSD300, VGG-16 (fc6 dilated 6, fc7), 4/6/6/6/4/4 default boxes: 8732 at 300x300; 35,641,826 parameters
    (torchvision's count)."""
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    return SSD(VGGBackbone(width), anchors, num_classes, score_thresh=score_thresh, nms_thresh=nms_thresh,
               detections_per_img=detections_per_img, topk_candidates=topk_candidates)


register(
    "ssd300_vgg16", ssd300_vgg16,
    # a 1/16-wide VGG (4..64 channels) at the 300x300 the default boxes are laid out for (8732 of them)
    small_config=dict(num_classes=5, width=4, topk_candidates=50, detections_per_img=30),
    example_input=square_images_input(300),
    # fc6 is a dilated conv (family DIL), not claimed: tests/test_models_conv.py runs every DIL model as a
    # classifier; the detectors' conversion parity is tests/test_models_detection.py
    families=("NMS",),
    figures={
        "params": Figure(35_641_826, "torchvision model card (ssd300_vgg16: 35,641,826)", 0.0001,
                         note="all parameters: VGG-16 convs, conv4_3 L2Norm scale (512), fc6/fc7, extras, heads "
                              "for 91 classes"),
        "ap50": Figure(41.2, "K l.1821 (SSD, VGG-16, 300 px, COCO AP50 41.20 %)",
                       note=NOT_REPRODUCIBLE),
        "fps": Figure(46.0, "K l.1821 (46 FPS)", note=NOT_REPRODUCIBLE),
    },
)
