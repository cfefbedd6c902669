"""Reference NMS: greedy suppression over scores sorted in descending order, written plainly.

IoU = inter / (area_a + area_b - inter) with inter = max(0, overlap_w) * max(0, overlap_h) and
area = (x2 - x1) * (y2 - y1) (degenerate boxes use the same formula, as torchvision). Ties in
score keep the lower index first (stable sort). Computed in float64 on the given values.
"""
import torch


def box_iou(boxes1, boxes2):
    a, b = boxes1.double(), boxes2.double()
    area1 = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area2 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes, scores, iou_threshold, idxs=None):
    """Indices kept (int64), in descending score order. idxs: boxes of different categories never
    suppress each other."""
    b = boxes.detach().double().cpu().tolist()
    s = scores.detach().double().cpu()
    cls = idxs.detach().cpu().tolist() if idxs is not None else [0] * len(b)
    order = torch.sort(s, descending=True, stable=True).indices.tolist()
    removed = [False] * len(b)
    keep = []
    for oi, i in enumerate(order):
        if removed[i]:
            continue
        keep.append(i)
        x1, y1, x2, y2 = b[i]
        ai = (x2 - x1) * (y2 - y1)
        for j in order[oi + 1:]:
            if removed[j] or cls[j] != cls[i]:
                continue
            u1, v1, u2, v2 = b[j]
            w = max(0.0, min(x2, u2) - max(x1, u1))
            h = max(0.0, min(y2, v2) - max(y1, v1))
            inter = w * h
            aj = (u2 - u1) * (v2 - v1)
            denom = ai + aj - inter
            iou = inter / denom if denom != 0 else (float("nan") if inter == 0 else float("inf"))
            if iou > iou_threshold:
                removed[j] = True
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    return nms(boxes, scores, iou_threshold, idxs=idxs)
