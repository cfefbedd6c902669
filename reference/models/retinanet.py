"""Reference RetinaNet: ResNet + FPN (P3-P7), classification and box subnets, focal loss.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2105-2129  Kalhor: RetinaNet, the "extreme foreground-background class imbalance" of one-stage detectors,
                 the focal loss that reduces the loss of easy examples, a ResNet + FPN backbone and two similar
                 subnets (classification and box regression); K l.1823: ResNet-101-FPN, 400 px, AP 31.9, 12 FPS.
  A l.394        design-patterns report: RetinaNet, a one-stage FPN detector with the focal loss.
Paper: Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection", ICCV 2017, arXiv:1708.02002:
  Sec. 3 (FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t, alpha 0.25, gamma 2), Sec. 4 (P3-P7, P6 a 3x3/2 conv,
  P7 = 3x3/2 conv of ReLU(P6); anchors of areas 32^2..512^2, three scales 2^0, 2^(1/3), 2^(2/3) and three
  ratios: A = 9 per location; IoU >= 0.5 foreground, < 0.4 background; subnets of four 3x3 convs of 256 + ReLU,
  a 3x3 conv to KA (sigmoid) / 4A outputs; the classification bias -log((1 - pi) / pi), pi = 0.01; the loss
  summed over anchors and normalized by the foreground count; inference: top 1000 per level above 0.05, NMS 0.5).
The standard configuration is torchvision's retinanet_resnet50_fpn (v1: P6 from P5, L1 box loss, 300 detections,
torchvision's module names); the same deviations as reference/models/faster_rcnn.py (no resize / normalize
transform, ordinary trainable BN, at least one object per image in training). NMS runs only through the
BatchedNMS attribute. Nothing here imports cvkernels, torchvision or timm.
"""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from ._detection import (NOT_REPRODUCIBLE, AnchorGenerator, BatchedNMS, BoxCoder, Matcher, box_iou, clip_boxes_to_image,
                         detector_input, nms_detections, sigmoid_focal_loss)
from .faster_rcnn import LastLevelP6P7, square_images_input, flatten_level, resnet_fpn_backbone

__all__ = ["RetinaNetHead", "RetinaNet", "retinanet_resnet50_fpn"]


def _subnet(channels, depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Classification subnet (depth x (3x3 conv + ReLU) -> 3x3 conv to A * num_classes logits) and box subnet
    (-> 4A deltas), shared over the levels; forward(features) -> (logits (B, sum HWA, K), deltas (B, sum HWA, 4))."""

    def __init__(self, in_channels, num_anchors, num_classes, depth=4, prior_probability=0.01):
        super().__init__()
        self.num_classes = num_classes
        self.cls_conv = _subnet(in_channels, depth)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_conv = _subnet(in_channels, depth)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: List[Tensor]):
        logits = [flatten_level(self.cls_logits(self.cls_conv(f)), self.num_classes) for f in features]
        deltas = [flatten_level(self.bbox_reg(self.bbox_conv(f)), 4) for f in features]
        return torch.cat(logits, 1), torch.cat(deltas, 1)


class RetinaNet(nn.Module):
    """forward(images, targets=None): training -> {classification, bbox_regression}; eval -> a list of
    {boxes, scores, labels} per image (see reference/models/faster_rcnn.py FasterRCNN for the formats)."""

    def __init__(self, backbone, num_classes, anchor_generator, fg_iou_thresh=0.5, bg_iou_thresh=0.4,
                 score_thresh=0.05, nms_thresh=0.5, detections_per_img=300, topk_candidates=1000, head_depth=4):
        super().__init__()
        self.backbone, self.anchor_generator = backbone, anchor_generator
        self.head = RetinaNetHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0],
                                  num_classes, head_depth)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.nms = BatchedNMS(nms_thresh)
        self.score_thresh, self.detections_per_img, self.topk_candidates = score_thresh, detections_per_img, \
            topk_candidates

    def compute_loss(self, targets, logits, deltas, anchors):
        """Focal loss over the anchors that are not ignored and L1 on the foreground deltas, both divided by
        the number of foreground anchors (at least 1), averaged over the images."""
        cls_losses, box_losses = [], []
        for target, logit, delta in zip(targets, logits, deltas):
            matched = self.proposal_matcher(box_iou(target["boxes"], anchors))
            fg = matched >= 0
            num_fg = max(int(fg.sum()), 1)
            gt_classes = torch.zeros_like(logit)
            gt_classes[fg, target["labels"][matched[fg]]] = 1.0
            valid = matched != Matcher.BETWEEN_THRESHOLDS
            cls_losses.append(sigmoid_focal_loss(logit[valid], gt_classes[valid], reduction="sum") / num_fg)
            regression_targets = self.box_coder.encode(target["boxes"][matched[fg]], anchors[fg])
            box_losses.append(F.l1_loss(delta[fg], regression_targets, reduction="sum") / num_fg)
        return {"classification": sum(cls_losses) / len(targets), "bbox_regression": sum(box_losses) / len(targets)}

    def postprocess_detections(self, logits, deltas, anchors, num_per_level, image_shapes):
        """Per image and level: sigmoid scores above score_thresh, the topk_candidates best decoded and clipped;
        then NMS per class over the levels and the detections_per_img best."""
        num_classes = logits.shape[-1]
        results = []
        for logit, delta, shape in zip(logits, deltas, image_shapes):
            boxes_all, scores_all, labels_all = [], [], []
            for lg, dl, an in zip(logit.split(num_per_level), delta.split(num_per_level), anchors.split(num_per_level)):
                scores = torch.sigmoid(lg).flatten()
                keep = torch.where(scores > self.score_thresh)[0]
                scores, idx = scores[keep].topk(min(self.topk_candidates, keep.numel()))
                idx = keep[idx]
                anchor_idx, labels = idx // num_classes, idx % num_classes
                boxes = self.box_coder.decode(dl[anchor_idx], an[anchor_idx])[:, 0]
                boxes_all.append(clip_boxes_to_image(boxes, shape))
                scores_all.append(scores)
                labels_all.append(labels)
            results.append(nms_detections(self.nms, torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all),
                                          self.detections_per_img))
        return results

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        features = list(self.backbone(images).values())
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(image_shapes[0], features)
        if self.training:
            return self.compute_loss(targets, logits, deltas, anchors)
        num_per_level = [f.shape[-2] * f.shape[-1] * a for f, a in
                         zip(features, self.anchor_generator.num_anchors_per_location())]
        return self.postprocess_detections(logits, deltas, anchors, num_per_level, image_shapes)


def retinanet_resnet50_fpn(num_classes=91, backbone="resnet50", backbone_width=64, fpn_channels=256,
                           anchor_base_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), head_depth=4,
                           score_thresh=0.05, nms_thresh=0.5, detections_per_img=300, topk_candidates=1000):
    """RetinaNet, ResNet-50 + FPN P3-P7, 9 anchors per location, 4-conv subnets of 256: 34,068,119 parameters
    (torchvision's 34,014,999 + the BN affine of the ResNet-50 body)."""
    # P6 from P5 when the FPN width equals C5's (torchvision v1: LastLevelP6P7(256, 256), always P5)
    body = resnet_fpn_backbone(backbone, backbone_width, (2, 3, 4), fpn_channels,
                               LastLevelP6P7(fpn_channels, fpn_channels))
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in anchor_base_sizes)
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    return RetinaNet(body, num_classes, anchors, score_thresh=score_thresh, nms_thresh=nms_thresh,
                     detections_per_img=detections_per_img, topk_candidates=topk_candidates, head_depth=head_depth)


register(
    "retinanet_resnet50_fpn", retinanet_resnet50_fpn,
    # 8-wide ResNet-18, 16-channel FPN and subnets (two convs each) on 64x64 images, anchors from 8 px
    small_config=dict(num_classes=5, backbone="resnet18", backbone_width=8, fpn_channels=16,
                      anchor_base_sizes=(8, 16, 32, 64, 128), head_depth=2, topk_candidates=50,
                      detections_per_img=30),
    example_input=square_images_input(64),
    families=("NMS", "BNR"),
    figures={
        "params": Figure(34_014_999, "torchvision model card (retinanet_resnet50_fpn: 34,014,999)", 0.002,
                         note="all parameters incl. the ResNet-50 body's BN affine (53,120, buffers in "
                              "torchvision): 34,068,119"),
        "ap": Figure(31.9, "K l.1823 (RetinaNet, ResNet-101-FPN, 400 px, COCO AP 31.90 %)",
                     note=NOT_REPRODUCIBLE),
    },
)
