"""Model-level parity for the detectors (ARCHITECTURES.md kernels ROI, NMS): each reference detector, converted
with cvkernels.convert (its RoIAlign / MultiScaleRoIAlign / BatchedNMS modules routed to cvkernels' RoI and NMS
kernels, BatchNorm+ReLU fused), gives the same detections in eval mode and the same training losses and parameter
gradients in train mode as the unconverted model (fp32, CPU: the RoI and NMS kernels run natively in C++ here).

Convolutions are not routed (conv=False): the detectors' dilated / transposed convs would run on the Triton
interpreter, which the conv family's own tests cover. Score thresholds are lowered so that random-weight models
detect something, and the detections are asserted non-empty.
"""
import copy
import pickle

import pytest
import torch
from torch import nn

import cvkernels
from reference import models
from reference.models import _detection

DETECTORS = ["fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "ssd300_vgg16", "yolo_v1",
             "yolox", "centernet_resnet18", "rfcn_resnet101"]
# low thresholds: random weights give low scores (RetinaNet's and YOLOX's prior probability is 0.01)
LOW_THRESHOLD = {"fasterrcnn_resnet50_fpn": dict(box_score_thresh=0.0),
                 "maskrcnn_resnet50_fpn": dict(box_score_thresh=0.0), "rfcn_resnet101": dict(box_score_thresh=0.0),
                 "retinanet_resnet50_fpn": dict(score_thresh=0.0), "ssd300_vgg16": dict(score_thresh=0.0),
                 "yolo_v1": dict(score_thresh=-1e9), "yolox": dict(score_thresh=0.0),
                 "centernet_resnet18": dict(score_thresh=0.0)}
OP_MODULES = (_detection.RoIAlign, _detection.RoIPool, _detection.MultiScaleRoIAlign, _detection.BatchedNMS)
TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-3, atol=1e-5)


def _build(name):
    torch.manual_seed(0)
    model, images = models.create_small(name, batch=2, **LOW_THRESHOLD[name])
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    targets = _detection.random_targets(2, tuple(images.shape[-2:]), 5, masks=name.startswith("mask"))
    return model, images, targets


def _losses_and_grads(model, images, targets):
    torch.manual_seed(1)  # the samplers' torch.randperm draws
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("name", DETECTORS)
def test_converted_detector_parity(name):
    model, images, targets = _build(name)
    converted = cvkernels.convert(copy.deepcopy(model), conv=False)
    expected = [n for n, m in model.named_modules() if isinstance(m, OP_MODULES)]
    routed = [n for n, m in converted.named_modules()
              if m.__dict__.get("_cvkernels_kernel") in ("roi_align", "roi_pool", "nms")]
    assert routed == expected, (routed, expected)
    if name != "centernet_resnet18":  # CenterNet's max-pool peak extraction replaces NMS: nothing to route
        assert len(routed) > 0
    for n in routed:  # class names and isinstance are kept
        m = converted.get_submodule(n)
        assert type(m).__name__ == type(model.get_submodule(n)).__name__ and isinstance(m, OP_MODULES)

    model.eval()
    converted.eval()
    with torch.no_grad():
        reference, ours = model(images), converted(images)
    for r, o in zip(reference, ours):
        assert len(r["boxes"]) > 0 and set(r) == set(o)
        assert len(o["boxes"]) == len(r["boxes"])
        assert torch.equal(o["labels"], r["labels"])
        for key in set(r) - {"labels"}:
            torch.testing.assert_close(o[key], r[key], **TOL, msg=f"{name} {key}")

    model.train()
    converted.train()
    (ref_losses, ref_grads), (losses, grads) = (_losses_and_grads(net, images, targets) for net in (model, converted))
    assert set(losses) == set(ref_losses)
    for k in ref_losses:
        assert torch.isfinite(ref_losses[k])
        torch.testing.assert_close(losses[k], ref_losses[k], **TOL, msg=f"{name} {k}")
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], **GRAD_TOL, msg=f"{name} grad {n}")


def test_converted_detector_copies_and_pickles():
    model, images, _ = _build("maskrcnn_resnet50_fpn")
    converted = cvkernels.convert(copy.deepcopy(model), conv=False).eval()
    with torch.no_grad():
        expected = converted(images)
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        kinds = {n: m.__dict__.get("_cvkernels_kernel") for n, m in clone.named_modules()}
        assert kinds["roi_heads.box_roi_pool"] == kinds["roi_heads.mask_target_align"] == "roi_align"
        assert kinds["rpn.nms"] == kinds["roi_heads.nms"] == "nms"
        assert type(clone.rpn.nms) is type(converted.rpn.nms) and type(clone.rpn.nms) is not _detection.BatchedNMS
        with torch.no_grad():
            out = clone.eval()(images)
        for a, b in zip(out, expected):
            for key in a:
                torch.testing.assert_close(a[key], b[key])
    assert model.state_dict().keys() == converted.state_dict().keys()


def test_convert_detection_matching():
    """By class name and torchvision's attributes; cvkernels' own modules and detection=False are left alone;
    the routed modules read their attributes at each call."""
    class RoIPool(nn.Module):  # a torchvision-like module from elsewhere
        def __init__(self):
            super().__init__()
            self.output_size, self.spatial_scale = (3, 2), 0.5

        def forward(self, input, rois):
            raise AssertionError("not routed")

    class BatchedNMS(nn.Module):  # no iou_threshold: not the batched_nms module
        pass

    net = nn.ModuleDict({"pool": RoIPool(), "nms": BatchedNMS(), "cvk": cvkernels.nn.RoIAlign(2, 1.0, 2),
                         "align": _detection.RoIAlign(2, 1.0, 2)})
    untouched = cvkernels.convert(copy.deepcopy(net), detection=False)
    assert not any("_cvkernels_kernel" in m.__dict__ for m in untouched.modules())
    cvkernels.convert(net)
    assert net["pool"].__dict__["_cvkernels_kernel"] == "roi_pool" and isinstance(net["pool"], RoIPool)
    assert "_cvkernels_kernel" not in net["nms"].__dict__ and "_cvkernels_kernel" not in net["cvk"].__dict__
    x = torch.randn(1, 3, 9, 11)
    rois = torch.tensor([[0.0, 1.2, 0.5, 14.0, 12.5]])
    torch.testing.assert_close(net["pool"](x, rois), _detection.roi_pool(x, rois, (3, 2), 0.5))
    net["align"].output_size, net["align"].aligned = 4, True
    torch.testing.assert_close(net["align"](x, rois), _detection.roi_align(x, rois, 4, 1.0, 2, True), **TOL)
