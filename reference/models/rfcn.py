"""Reference R-FCN (Region-based Fully Convolutional Network): position-sensitive score maps and pooling.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  K l.2002-2019  Kalhor: R-FCN, a ResNet-101 backbone; the conv4 output feeds a Region Proposal Network, the
                 final output goes through a conv layer to the classifier and regressor; the classification layer
                 combines the position-sensitive maps with the RoI proposals; cross-entropy + box regression loss;
                 K l.1816: ResNet-101, 600 px, COCO AP 31.5, ~3 FPS.
Paper: Dai, Li, He, Sun, "R-FCN: Object Detection via Region-based Fully Convolutional Networks", NIPS 2016,
  arXiv:1605.06409: Sec. 2 (ResNet-101 with conv5's stride reduced to 16 and its convs dilated, a 1x1 conv
  2048 -> 1024, k^2 (C + 1) position-sensitive score maps and k^2 4 class-agnostic box maps, k = 7;
  position-sensitive RoI pooling, eq. 1: bin (i, j) averages the pixels of the (i, j)-th map over the bin;
  voting by averaging the k^2 bins; softmax; Fast R-CNN's loss, positives IoU >= 0.5), Sec. 3 (the RPN of
  Faster R-CNN on conv4, shared features).
Configuration: ResNet-101 (reference.models.resnet, layer4 dilated: output stride 16), RPN on layer3 (C4) with
Faster R-CNN's 3 scales x 3 ratios (128 / 256 / 512 px) = 9 anchors, k = 7, 81 classes (COCO + background), the
RoI sampling, post-processing and NMS of reference/models/faster_rcnn.py's RoIHeads (torchvision constants).
Deviations: no OHEM, no 4-step alternating training (one joint loss), images taken as given, ordinary trainable
BN. The position-sensitive pooling is written here in plain torch (no cvkernels kernel serves it); NMS runs only
through the RPN's and the heads' BatchedNMS attributes. Nothing here imports cvkernels, torchvision or timm.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Figure, register
from . import resnet as _resnet
from ._detection import NOT_REPRODUCIBLE, AnchorGenerator, pixel_bins, prepare_rois
from .faster_rcnn import FasterRCNN, RegionProposalNetwork, ResNetBody, RoIHeads, RPNHead, square_images_input

__all__ = ["ps_roi_pool", "PSRoIPool", "RFCNHeads", "RFCN", "rfcn_resnet101"]


def ps_roi_pool(input: Tensor, rois, output_size: int, spatial_scale: float) -> Tensor:
    """Position-sensitive RoI average pooling: input (N, C k^2, H, W) with map (c, i, j) at channel
    (c k + i) k + j -> (K, C, k, k); bin (i, j) (Fast R-CNN's integer bins) averages map (c, i, j); empty bins 0."""
    k = output_size
    N, Ck2, H, W = input.shape
    rois, _, empty = prepare_rois(input, rois, k)
    if empty is not None:
        return empty.new_zeros((0, Ck2 // (k * k), k, k))
    K = rois.shape[0]
    in_h, in_w = pixel_bins(rois, spatial_scale, (k, k), (H, W), input.dtype)
    in_h, in_w = in_h.to(input.dtype), in_w.to(input.dtype)
    maps = input[rois[:, 0].long()].view(K, Ck2 // (k * k), k, k, H, W)
    sums = torch.einsum("kcijhw,kih,kjw->kcij", maps, in_h, in_w)
    area = in_h.sum(-1)[:, :, None] * in_w.sum(-1)[:, None, :]                 # (K, k, k)
    return sums / area.clamp(min=1)[:, None]


class PSRoIPool(nn.Module):
    """ps_roi_pool as a module: forward(input (N, C k^2, H, W), rois) -> (K, C, k, k)."""

    def __init__(self, output_size: int, spatial_scale: float):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)


class RFCNHeads(RoIHeads):
    """RoIHeads whose box logits come from position-sensitive score maps on the ``feature`` map: 1x1 conv to
    ``mid_channels`` + ReLU, 1x1 convs to k^2 (C + 1) class maps and k^2 4 box maps, PS RoI pooling, average
    voting -> (class logits (K, C + 1), class-agnostic deltas (K, 4))."""

    def __init__(self, in_channels, num_classes, mid_channels=1024, k=7, spatial_scale=1 / 16, feature="c5",
                 **kwargs):
        super().__init__(None, None, None, **kwargs)
        self.feature = feature
        self.conv_new = nn.Conv2d(in_channels, mid_channels, 1)
        self.rfcn_cls = nn.Conv2d(mid_channels, k * k * num_classes, 1)
        self.rfcn_bbox = nn.Conv2d(mid_channels, k * k * 4, 1)
        self.ps_roi_pool = PSRoIPool(k, spatial_scale)
        for m in (self.conv_new, self.rfcn_cls, self.rfcn_bbox):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def box_logits(self, features, proposals, image_shapes):
        x = F.relu(self.conv_new(features[self.feature]))
        class_logits = self.ps_roi_pool(self.rfcn_cls(x), proposals).mean((2, 3))
        box_regression = self.ps_roi_pool(self.rfcn_bbox(x), proposals).mean((2, 3))
        return class_logits, box_regression


class RFCN(FasterRCNN):
    """R-FCN: backbone {c4, c5} -> RPN on c4 -> RFCNHeads on c5 (formats as FasterRCNN's)."""

    def rpn_features(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {"0": features["c4"]}


def rfcn_resnet101(num_classes=81, backbone="resnet101", backbone_width=64, k=7, mid_channels=1024,
                   anchor_sizes=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), rpn_pre_nms_top_n=(6000, 6000),
                   rpn_post_nms_top_n=(300, 300), rpn_batch_size_per_image=256, box_batch_size_per_image=128,
                   box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100):
    """R-FCN, ResNet-101 (conv5 dilated, stride 16), RPN of 9 anchors on conv4, k = 7 position-sensitive maps for
    81 classes, 300 proposals (the paper's test setting) and 128 sampled RoIs per image."""
    resnet = getattr(_resnet, backbone)(width=backbone_width, replace_stride_with_dilation=[False, False, True])
    expansion = resnet.layer1[0].expansion
    body = ResNetBody(resnet, {"layer3": "c4", "layer4": "c5"})
    c4, c5 = backbone_width * 4 * expansion, backbone_width * 8 * expansion
    anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
    rpn = RegionProposalNetwork(anchors, RPNHead(c4, anchors.num_anchors_per_location()[0]),
                                batch_size_per_image=rpn_batch_size_per_image, pre_nms_top_n=rpn_pre_nms_top_n,
                                post_nms_top_n=rpn_post_nms_top_n)
    heads = RFCNHeads(c5, num_classes, mid_channels, k, batch_size_per_image=box_batch_size_per_image,
                      score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
                      detections_per_img=box_detections_per_img)
    return RFCN(body, rpn, heads)


register(
    "rfcn_resnet101", rfcn_resnet101,
    # an 8-wide ResNet-18 (C4 32, C5 64 channels at stride 16: 4x4 maps of 64x64 images), k = 3
    small_config=dict(num_classes=5, backbone="resnet18", backbone_width=8, k=3, mid_channels=32,
                      anchor_sizes=(16, 32, 64), rpn_pre_nms_top_n=(60, 60), rpn_post_nms_top_n=(30, 30),
                      rpn_batch_size_per_image=32, box_batch_size_per_image=32, box_detections_per_img=20),
    example_input=square_images_input(64),
    families=("NMS", "BNR"),
    figures={
        "ap": Figure(31.5, "K l.1816 (R-FCN, ResNet-101, 600 px, COCO AP 31.50 %)",
                     note=NOT_REPRODUCIBLE),
    },
)
