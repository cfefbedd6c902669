"""Reference two-stage detectors: Faster R-CNN with a Region Proposal Network on a ResNet + FPN backbone, and
Mask R-CNN; the RPN, the FPN and the RoI heads are shared with R-FCN (reference/models/rfcn.py).

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.1951-1979  Kalhor: Faster R-CNN = Fast R-CNN + an RPN; anchor boxes of several aspect ratios regressed
                 at every sliding-window position, objectness score per anchor; RoI pooling, classifier and box
                 regressor; 5 fps (K l.1972).
  R l.894-912    Rossi: the RPN, k anchors per location with predefined scales and aspect ratios, 2k objectness
                 scores and 4k box corrections; the head's L class scores (background included) and 4L - 4 box
                 corrections; the four-part multi-task loss.
  O l.515-521    lecture notes: the RPN slides over the backbone feature map.
  K l.1981-2000, A l.350-397, R l.946   FPN: bottom-up ResNet, top-down pathway, lateral 1x1 connections.
  K l.2021-2035, R l.938-944, O l.564-573   Mask R-CNN: a mask branch parallel to the box head, RoI Align,
                 a mask per class, the mask loss added to Faster R-CNN's.
Papers (what the documents leave out):
  Ren, He, Girshick, Sun, "Faster R-CNN", NIPS 2015, arXiv:1506.01497: Sec. 3.1 (3x3 conv + 1x1 cls / reg,
  3 scales x 3 ratios = 9 anchors, NMS 0.7 on proposals, IoU 0.7 / 0.3 anchor labels, 256 sampled anchors
  at 1:1, smooth L1).
  Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, arXiv:1612.03144: Sec. 3-4 (lateral
  1x1 to d = 256, nearest 2x upsampling + add, 3x3 smoothing, P2-P5 + P6 by subsampling P5 for the RPN, one
  anchor scale per level {32, 64, 128, 256, 512} x 3 ratios, RoIs assigned to P_k by eq. 1, 7x7 RoI features
  into two 1024-d fc layers).
  He, Gkioxari, Dollar, Girshick, "Mask R-CNN", ICCV 2017, arXiv:1703.06870: Sec. 3 and Fig. 4 (RoI Align
  14x14, four 3x3 convs of 256, a 2x2 stride-2 deconv, a 28x28 mask per class, sigmoid BCE on the mask of
  the RoI's ground-truth class only).
The standard configurations are torchvision's fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn (v1), and so are
the names of the modules (backbone.body / backbone.fpn.inner_blocks / layer_blocks, rpn.head, roi_heads.box_head
fc6 / fc7, box_predictor, mask_head, mask_predictor) and every constant (RPN pre/post-NMS top-n 2000/2000 train,
1000/1000 test, box head 512 RoIs at 25 % positives, score threshold 0.05, NMS 0.5, 100 detections).

Deviations: the images are taken as given (a (B, 3, H, W) batch or a list of equal-sized images): torchvision's
GeneralizedRCNNTransform (resizing, normalization, padding) is not part of the model, and the eval masks are the
28x28 per-detection probabilities (N, 1, 28, 28), not pasted into the image. The ResNet is
reference.models.resnet's with ordinary BatchNorm2d (torchvision freezes them: FrozenBatchNorm2d, affine as
buffers) and every layer trains (torchvision freezes conv1 and layer1): the parameter count is torchvision's plus
the 53,120 BN affine parameters of the ResNet-50 body. Training needs at least one object per image. NMS and RoI
operators run only through the BatchedNMS / MultiScaleRoIAlign / RoIAlign module attributes
(reference/models/_detection.py), so cvkernels.convert can route them. Nothing here imports cvkernels,
torchvision or timm.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from . import resnet as _resnet
from ._detection import (NOT_REPRODUCIBLE, AnchorGenerator, BalancedPositiveNegativeSampler, BatchedNMS, BoxCoder,
                         Matcher, MultiScaleRoIAlign, RoIAlign, box_iou, clip_boxes_to_image, detector_input,
                         nms_detections, remove_small_boxes)

__all__ = ["ResNetBody", "LastLevelMaxPool", "LastLevelP6P7", "FeaturePyramidNetwork", "BackboneWithFPN",
           "resnet_fpn_backbone", "RPNHead", "RegionProposalNetwork", "TwoMLPHead", "FastRCNNPredictor",
           "MaskRCNNHeads", "MaskRCNNPredictor", "RoIHeads", "FasterRCNN", "fasterrcnn_resnet50_fpn",
           "maskrcnn_resnet50_fpn", "fastrcnn_loss"]


# ----------------------------------------------------------------------------- backbone

class ResNetBody(nn.Module):
    """A reference ResNet without its pooling and fc: forward(x (B, 3, H, W)) -> OrderedDict {key: feature}
    of the stages named in ``return_layers`` ({"layer1": "0", ...}; layer1..4 have strides 4, 8, 16, 32)."""

    def __init__(self, resnet: _resnet.ResNet, return_layers: Dict[str, str]):
        super().__init__()
        last = max(int(name[-1]) for name in return_layers)
        for name in ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i}" for i in range(1, last + 1)]:
            self.add_module(name, getattr(resnet, name))
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out = OrderedDict()
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class LastLevelMaxPool(nn.Module):
    """FPN's P6 for the RPN: max_pool2d(P5, 1, stride 2) (Lin et al. 2017, Sec. 4.1)."""

    def forward(self, results: List[Tensor], c: List[Tensor], names: List[str]):
        return results + [F.max_pool2d(results[-1], 1, 2, 0)], names + ["pool"]


class LastLevelP6P7(nn.Module):
    """RetinaNet's P6 = 3x3/2 conv (of P5 when the channels agree, else of C5), P7 = 3x3/2 conv of ReLU(P6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_P5 = in_channels == out_channels

    def forward(self, results: List[Tensor], c: List[Tensor], names: List[str]):
        p6 = self.p6(results[-1] if self.use_P5 else c[-1])
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7], names + ["p6", "p7"]


class FeaturePyramidNetwork(nn.Module):
    """FPN top-down pathway: lateral 1x1 convs to out_channels, nearest upsampling to the finer map + add, 3x3
    smoothing convs; forward(OrderedDict of C_i, coarsest last) -> OrderedDict of P_i (+ the extra block's)."""

    def __init__(self, in_channels_list: List[int], out_channels: int, extra_blocks: Optional[nn.Module] = None):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
                                          for _ in in_channels_list)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self.extra_blocks = extra_blocks

    def forward(self, x: Dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
        names, feats = list(x.keys()), list(x.values())
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[i](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """body (ResNetBody) + fpn; ``out_channels`` is the FPN width."""

    def __init__(self, body: nn.Module, in_channels_list: List[int], out_channels: int, extra_blocks: nn.Module):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))


def resnet_fpn_backbone(backbone="resnet50", backbone_width=64, returned_layers=(1, 2, 3, 4), fpn_channels=256,
                        extra_blocks=None):
    """A reference ResNet ("resnet18" ... "resnet152") of stage-1 width ``backbone_width`` with an FPN over the
    returned stages (torchvision's resnet_fpn_backbone); extra_blocks default: LastLevelMaxPool (P6)."""
    resnet = getattr(_resnet, backbone)(width=backbone_width)
    expansion = resnet.layer1[0].expansion
    body = ResNetBody(resnet, {f"layer{i}": str(k) for k, i in enumerate(returned_layers)})
    in_channels = [backbone_width * 2 ** (i - 1) * expansion for i in returned_layers]
    return BackboneWithFPN(body, in_channels, fpn_channels,
                           LastLevelMaxPool() if extra_blocks is None else extra_blocks)


# ----------------------------------------------------------------------------- RPN

class RPNHead(nn.Module):
    """3x3 conv + ReLU shared over the levels, then 1x1 convs to A objectness logits and 4A box deltas."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                                nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, features: List[Tensor]):
        logits, deltas = [], []
        for f in features:
            t = self.conv(f)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_level(layer: Tensor, per_anchor: int) -> Tensor:
    """(N, A * per_anchor, H, W) head output -> (N, H * W * A, per_anchor), the anchors' order."""
    n, _, h, w = layer.shape
    return layer.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class RegionProposalNetwork(nn.Module):
    """torchvision's RegionProposalNetwork. forward(image_size, features (OrderedDict), targets) ->
    (proposals: list of (P_i, 4), losses {loss_objectness, loss_rpn_box_reg} in training, else {})."""

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                 batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n=(2000, 1000),
                 post_nms_top_n=(2000, 1000), nms_thresh=0.7, score_thresh=0.0, min_size=1e-3):
        super().__init__()
        self.anchor_generator, self.head = anchor_generator, head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n, self._post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms = BatchedNMS(nms_thresh)
        self.score_thresh, self.min_size = score_thresh, min_size

    def pre_nms_top_n(self):
        return self._pre_nms_top_n[0 if self.training else 1]

    def post_nms_top_n(self):
        return self._post_nms_top_n[0 if self.training else 1]

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_size, num_per_level: List[int]):
        """Top pre_nms_top_n per level, clipped, small boxes removed, NMS per level, top post_nms_top_n."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_per_level)])
        top, offset = [], 0
        for n in num_per_level:
            top.append(objectness[:, offset:offset + n].topk(min(self.pre_nms_top_n(), n), dim=1).indices + offset)
            offset += n
        top = torch.cat(top, 1)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels, proposals = objectness[rows, top], levels[top], proposals[rows, top]
        probs = torch.sigmoid(objectness)
        final = []
        for boxes, scores, lvl in zip(proposals, probs, levels):
            boxes = clip_boxes_to_image(boxes, image_size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = self.nms(boxes, scores, lvl)[:self.post_nms_top_n()]
            final.append(boxes[keep])
        return final

    def assign_targets_to_anchors(self, anchors: Tensor, targets: List[Dict[str, Tensor]]):
        labels, matched = [], []
        for target in targets:
            gt = target["boxes"]
            idx = self.proposal_matcher(box_iou(gt, anchors))
            matched.append(gt[idx.clamp(min=0)])
            lab = (idx >= 0).to(anchors.dtype)
            lab[idx == Matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
        return labels, matched

    def compute_loss(self, objectness, deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos, neg = torch.where(torch.cat(pos))[0], torch.where(torch.cat(neg))[0]
        sampled = torch.cat([pos, neg])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(deltas[pos], regression_targets[pos], beta=1 / 9, reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss

    def forward(self, image_size: Tuple[int, int], features: Dict[str, Tensor], targets=None):
        feats = list(features.values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(image_size, feats)
        num_images = feats[0].shape[0]
        num_per_level = [o[0].numel() for o in logits]
        objectness = torch.cat([flatten_level(o, 1) for o in logits], 1).reshape(-1, 1)
        deltas = torch.cat([flatten_level(d, 4) for d in deltas], 1).reshape(-1, 4)
        proposals = self.box_coder.decode(deltas.detach(), anchors.repeat(num_images, 1)).view(num_images, -1, 4)
        boxes = self.filter_proposals(proposals, objectness, image_size, num_per_level)
        losses = {}
        if self.training:
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = [self.box_coder.encode(m, anchors) for m in matched]
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses


# ----------------------------------------------------------------------------- RoI heads

class TwoMLPHead(nn.Module):
    """FPN's box head: flatten (K, C, 7, 7) -> fc6 -> ReLU -> fc7 -> ReLU, (K, representation_size)."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class FastRCNNPredictor(nn.Module):
    """(K, D) -> class logits (K, num_classes) and per-class box deltas (K, 4 num_classes)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor):
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """Mask R-CNN's FCN mask head: 3x3 convs (+ ReLU) of the given widths on the 14x14 RoI features."""

    def __init__(self, in_channels: int, layers=(256, 256, 256, 256), dilation=1):
        blocks = []
        for width in layers:
            blocks.append(nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation),
                                        nn.ReLU(inplace=True)))
            in_channels = width
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """2x2 stride-2 ConvTranspose2d + ReLU, then a 1x1 conv to one mask logit map per class: 14x14 -> 28x28."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
                                      ("relu", nn.ReLU(inplace=True)),
                                      ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1))]))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """Fast R-CNN's loss: cross-entropy over the sampled RoIs, smooth L1 (beta 1/9) of the positives' deltas of
    their ground-truth class (class-agnostic regression (K, 4) is used as it is), normalized by the RoI count."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    box_regression = box_regression.reshape(n, -1, 4)
    cls = labels[pos] if box_regression.shape[1] > 1 else torch.zeros_like(labels[pos])
    box_loss = F.smooth_l1_loss(box_regression[pos, cls], regression_targets[pos], beta=1 / 9,
                                reduction="sum") / labels.numel()
    return classification_loss, box_loss


class RoIHeads(nn.Module):
    """torchvision's RoIHeads (box branch + optional mask branch). forward(features, proposals, image_shapes,
    targets) -> (detections: list of {boxes, scores, labels[, masks]}, losses)."""

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                 batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
                 score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, mask_roi_pool=None, mask_head=None,
                 mask_predictor=None):
        super().__init__()
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_roi_pool, self.box_head, self.box_predictor = box_roi_pool, box_head, box_predictor
        self.score_thresh, self.detections_per_img = score_thresh, detections_per_img
        self.nms = BatchedNMS(nms_thresh)
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        if mask_predictor is not None:
            # ground-truth masks cropped to the proposals (torchvision's project_masks_on_boxes: roi_align of the
            # masks, sampling ratio adaptive); its output size is set from the mask logits at each call
            self.mask_target_align = RoIAlign(28, 1.0, -1)

    def has_mask(self):
        return self.mask_predictor is not None

    def select_training_samples(self, proposals, targets):
        """Adds the ground truth to the proposals, labels them (IoU >= 0.5 foreground, < 0.5 background), samples
        512 per image at 25 % foreground; returns (proposals, matched gt indices, labels, regression targets)."""
        out = ([], [], [], [])
        for props, target in zip(proposals, targets):
            gt, gt_labels = target["boxes"].to(props.dtype), target["labels"]
            props = torch.cat([props, gt])
            idx = self.proposal_matcher(box_iou(gt, props))
            clamped = idx.clamp(min=0)
            labels = gt_labels[clamped].to(torch.int64)
            labels[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
            labels[idx == Matcher.BETWEEN_THRESHOLDS] = -1
            pos, neg = self.fg_bg_sampler([labels])
            keep = torch.where(pos[0] | neg[0])[0]
            props, clamped, labels = props[keep], clamped[keep], labels[keep]
            for lst, value in zip(out, (props, clamped, labels, self.box_coder.encode(gt[clamped], props))):
                lst.append(value)
        return out

    def box_logits(self, features, proposals, image_shapes):
        """(class logits (K, num_classes), box deltas (K, 4 num_classes)) of the proposals (K in all)."""
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        return self.box_predictor(x)

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Per image: decoded per-class boxes, clipped; background dropped; score > score_thresh; sides >= 0.01;
        NMS per class; the detections_per_img best."""
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, torch.cat(proposals))
        if pred_boxes.shape[1] == 1:  # class-agnostic regression (R-FCN)
            pred_boxes = pred_boxes.expand(-1, num_classes, 4)
        pred_scores = F.softmax(class_logits, -1)
        results = []
        for boxes, scores, shape in zip(pred_boxes.split(counts), pred_scores.split(counts), image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            results.append(nms_detections(self.nms, boxes, scores, labels, self.detections_per_img))
        return results

    def mask_loss(self, mask_logits, proposals, targets, matched_idxs, labels):
        """BCE of the mask logits of each positive RoI's ground-truth class against its ground-truth mask
        RoI-aligned onto the RoI (M x M, M the logits' size)."""
        size = mask_logits.shape[-1]
        self.mask_target_align.output_size = size
        gt_labels = torch.cat([lab[pos] for lab, pos in zip(labels, matched_idxs)])
        mask_targets = []
        for target, props, idx in zip(targets, proposals, matched_idxs):
            masks = target["masks"][:, None].to(props.dtype)
            rois = torch.cat([idx[:, None].to(props.dtype), props], 1)
            mask_targets.append(self.mask_target_align(masks, rois)[:, 0])
        mask_targets = torch.cat(mask_targets)
        chosen = mask_logits[torch.arange(gt_labels.shape[0], device=gt_labels.device), gt_labels]
        return F.binary_cross_entropy_with_logits(chosen, mask_targets)

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_logits(features, proposals, image_shapes)
        result, losses = [], {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        else:
            result = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if self.has_mask():
            if self.training:
                positive = [torch.where(lab > 0)[0] for lab in labels]
                mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
                pos_matched = [m[pos] for m, pos in zip(matched_idxs, positive)]
                pos_labels = [lab[pos] for lab, pos in zip(labels, positive)]
            else:
                mask_proposals = [r["boxes"] for r in result]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals,
                                                                                 image_shapes)))
            if self.training:
                gt_idx = [torch.arange(p.shape[0], device=p.device) for p in pos_matched]
                losses["loss_mask"] = self.mask_loss(mask_logits, mask_proposals, [
                    {"masks": t["masks"][m]} for t, m in zip(targets, pos_matched)], gt_idx, pos_labels)
            else:
                labels = torch.cat([r["labels"] for r in result])
                probs = mask_logits.sigmoid()[torch.arange(labels.shape[0], device=labels.device), labels][:, None]
                for r, p in zip(result, probs.split([len(r["boxes"]) for r in result])):
                    r["masks"] = p
        return result, losses


# ----------------------------------------------------------------------------- the detectors

class FasterRCNN(nn.Module):
    """Two-stage detector: backbone (OrderedDict of features) -> RPN proposals -> RoI heads.

    forward(images (B, 3, H, W) or list, targets=None): in training, the losses {loss_objectness,
    loss_rpn_box_reg, loss_classifier, loss_box_reg[, loss_mask]} (targets: list of {boxes (L, 4) x1y1x2y2 in
    pixels, labels (L,) in [1, num_classes)[, masks (L, H, W)]}); in eval, a list of {boxes (D, 4), scores (D,),
    labels (D,)[, masks (D, 1, 28, 28)]} per image.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads

    def rpn_features(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The feature maps the RPN sees (all of them here)."""
        return features

    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        images, image_shapes = detector_input(self, images, targets)
        features = self.backbone(images)
        proposals, rpn_losses = self.rpn(image_shapes[0], self.rpn_features(features), targets)
        detections, head_losses = self.roi_heads(features, proposals, image_shapes, targets)
        return {**rpn_losses, **head_losses} if self.training else detections


def _faster_rcnn(mask, num_classes=91, backbone="resnet50", backbone_width=64, fpn_channels=256,
                 anchor_sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n=(2000, 1000), rpn_post_nms_top_n=(2000, 1000), rpn_nms_thresh=0.7,
                 rpn_batch_size_per_image=256, representation_size=1024, box_batch_size_per_image=512,
                 box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100, mask_layers=(256,) * 4,
                 canonical_scale=224):
    body = resnet_fpn_backbone(backbone, backbone_width, (1, 2, 3, 4), fpn_channels)
    anchors = AnchorGenerator(anchor_sizes, (tuple(aspect_ratios),) * len(anchor_sizes))
    rpn = RegionProposalNetwork(anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
                                batch_size_per_image=rpn_batch_size_per_image, pre_nms_top_n=rpn_pre_nms_top_n,
                                post_nms_top_n=rpn_post_nms_top_n, nms_thresh=rpn_nms_thresh)
    levels = ["0", "1", "2", "3"]
    box_pool = MultiScaleRoIAlign(levels, 7, 2, canonical_scale=canonical_scale)
    extra = {}
    if mask:
        extra = dict(mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2, canonical_scale=canonical_scale),
                     mask_head=MaskRCNNHeads(fpn_channels, mask_layers),
                     mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes))
    heads = RoIHeads(box_pool, TwoMLPHead(fpn_channels * 7 * 7, representation_size),
                     FastRCNNPredictor(representation_size, num_classes),
                     batch_size_per_image=box_batch_size_per_image, score_thresh=box_score_thresh,
                     nms_thresh=box_nms_thresh, detections_per_img=box_detections_per_img, **extra)
    return FasterRCNN(body, rpn, heads)


def fasterrcnn_resnet50_fpn(**kwargs):
    """Faster R-CNN, ResNet-50 + FPN (P2-P6), RPN with 3 anchors (ratios 0.5/1/2) per location and level, box head
    TwoMLPHead 1024 on MultiScaleRoIAlign 7x7; 41,808,406 parameters (torchvision's 41,755,286 + BN affine)."""
    return _faster_rcnn(False, **kwargs)


def maskrcnn_resnet50_fpn(**kwargs):
    """Mask R-CNN: Faster R-CNN + RoI Align 14x14 -> 4 x (3x3 conv 256) -> 2x2/2 ConvTranspose2d -> per-class
    28x28 masks; 44,454,513 parameters (torchvision's 44,401,393 + BN affine)."""
    return _faster_rcnn(True, **kwargs)


# ----------------------------------------------------------------------------- registry

def square_images_input(size):
    """example_input for a detector taking size x size images (size: an int, or a config key and a default)."""
    def make(batch, config):
        s = config.get(size[0], size[1]) if isinstance(size, tuple) else size
        return torch.randn(batch, 3, s, s)
    return make


# CPU-sized: an 8-wide ResNet-18 (features 8..64 channels) + a 16-channel FPN on 64x64 images, anchors of
# 8..128 px, few proposals and RoIs, canonical scale 32 so that the RoIs spread over the four levels
SMALL_TWO_STAGE = dict(num_classes=5, backbone="resnet18", backbone_width=8, fpn_channels=16,
                       anchor_sizes=((8,), (16,), (32,), (64,), (128,)), rpn_pre_nms_top_n=(60, 60),
                       rpn_post_nms_top_n=(40, 30), rpn_batch_size_per_image=32, representation_size=32,
                       box_batch_size_per_image=32, box_detections_per_img=20, canonical_scale=32)
_BN_NOTE = ("all parameters incl. the ResNet-50 body's BN affine (53,120, buffers in torchvision's "
            "FrozenBatchNorm2d) and conv1 / layer1 (frozen there but parameters)")

register(
    "fasterrcnn_resnet50_fpn", fasterrcnn_resnet50_fpn,
    small_config=SMALL_TWO_STAGE,
    example_input=square_images_input(64),
    families=("ROI", "NMS", "BNR"),
    figures={
        "params": Figure(41_755_286, "torchvision model card (fasterrcnn_resnet50_fpn: 41,755,286)", 0.002,
                         note=_BN_NOTE + ": 41,808,406"),
        "ap50_voc": Figure(67.0, "K l.1815 (Faster R-CNN, VGG-16, 600 px, VOC 2012 AP50 67.00 %)",
                           note=NOT_REPRODUCIBLE),
        "fps": Figure(5.0, "K l.1815, l.1972 (5 frames per second)", note=NOT_REPRODUCIBLE),
        "ap_fpn": Figure(36.2, "K l.1817 (FPN, ResNet-101, 800 px, COCO AP 36.20 %)", note=NOT_REPRODUCIBLE),
    },
)
register(
    "maskrcnn_resnet50_fpn", maskrcnn_resnet50_fpn,
    small_config={**SMALL_TWO_STAGE, "mask_layers": (16, 16, 16, 16)},
    example_input=square_images_input(64),
    # the mask head's ConvTranspose2d is family TC; not claimed here (tests/test_models_conv.py runs every TC
    # model as a classifier), the detectors' conversion parity is tests/test_models_detection.py
    families=("ROI", "NMS", "BNR"),
    figures={
        "params": Figure(44_401_393, "torchvision model card (maskrcnn_resnet50_fpn: 44,401,393)", 0.002,
                         note=_BN_NOTE + ": 44,454,513"),
        "ap": Figure(39.8, "K l.1818 (Mask R-CNN, ResNeXt-101-FPN, 800 px, COCO AP 39.80 %)", note=NOT_REPRODUCIBLE),
        "fps": Figure(5.0, "K l.1818 (5 FPS)", note=NOT_REPRODUCIBLE),
    },
)
