"""NMS / batched NMS / box_iou (C++ CPU kernel natively, CUDA kernels on a GPU) against the plain
greedy reference (reference/ops/nms.py) and, where installed, torchvision."""
import importlib.util

import pytest
import torch

import cvkernels  # noqa: F401
from cvkernels import _extension
from cvkernels.ops.nms import batched_nms, box_iou, nms, nms_padded
from helpers import opcheck
from reference.ops import nms as ref

pytestmark = pytest.mark.skipif(not _extension.has_op("nms_padded"),
                                reason=f"cvkernels NMS op not built: {_extension.load_error()}")
HAS_TV = importlib.util.find_spec("torchvision") is not None
HAS_CUDA = torch.cuda.is_available() and _extension.has_cuda_ops("nms_padded")


def random_boxes(n, kind="random", dtype=torch.float32, size=200.0):
    if kind == "random":
        xy = torch.rand(n, 2, dtype=torch.float64) * size
        wh = torch.rand(n, 2, dtype=torch.float64) * size * 0.3 + 1
    elif kind == "clustered":  # a few objects, many jittered detections of each
        centers = torch.rand(max(n // 25, 1), 2, dtype=torch.float64) * size
        pick = torch.randint(0, centers.shape[0], (n,))
        base = torch.rand(centers.shape[0], 2, dtype=torch.float64) * 40 + 10
        xy = centers[pick] + torch.randn(n, 2, dtype=torch.float64) * 3
        wh = base[pick] * (1 + 0.15 * torch.randn(n, 2, dtype=torch.float64)).clamp(min=0.3)
    elif kind == "identical":
        xy = torch.full((n, 2), 10.0, dtype=torch.float64)
        wh = torch.full((n, 2), 30.0, dtype=torch.float64)
    else:
        raise ValueError(kind)
    return torch.cat([xy, xy + wh], 1).to(dtype)


def _lowp_oracle(boxes, scores, thr, idxs=None):
    """Greedy NMS with torchvision's CUDA IoU arithmetic for float16/bfloat16 boxes (widths/heights
    rounded to the dtype, areas and IoU in float32, compared with float32(thr))."""
    dt = boxes.dtype
    f = boxes.float()
    lt = torch.max(f[:, None, :2], f[None, :, :2])
    rb = torch.min(f[:, None, 2:], f[None, :, 2:])
    wh = (rb - lt).to(dt).float().clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (f[:, 2] - f[:, 0]) * (f[:, 3] - f[:, 1]).to(dt).float()
    iou = inter / (area[:, None] + area[None, :] - inter)
    over = (iou > torch.tensor(thr, dtype=torch.float32)).tolist()
    cls = idxs.tolist() if idxs is not None else [0] * boxes.shape[0]
    order = torch.sort(scores.double(), descending=True, stable=True).indices.tolist()
    removed, keep = set(), []
    for oi, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[oi + 1:]:
            if cls[j] == cls[i] and over[i][j]:
                removed.add(j)
    return torch.tensor(keep, dtype=torch.int64)


def _oracle(boxes, scores, thr, idxs=None):
    if boxes.dtype in (torch.float16, torch.bfloat16):
        return _lowp_oracle(boxes, scores, thr, idxs)
    return ref.nms(boxes, scores, thr, idxs=idxs)


@pytest.mark.parametrize("n,kind,thr", [(n, k, t) for n, k in [(10, "random"), (200, "random"), (500, "clustered"),
                                                                 (1000, "clustered"), (64, "identical"),
                                                                 (65, "identical")] for t in (0.3, 0.7)]
                         + [(2000, "random", 0.3), (2000, "clustered", 0.5)])
def test_nms_vs_reference(n, kind, thr):
    boxes = random_boxes(n, kind)
    scores = torch.rand(n)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    torch.testing.assert_close(keep, ref.nms(boxes, scores, thr), rtol=0, atol=0)
    if kind == "identical":
        assert keep.tolist() == [int(scores.argmax())]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_nms_dtypes(dtype, kind):
    boxes = random_boxes(400, kind, dtype)
    scores = torch.rand(400, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(nms(boxes, scores, 0.5), _oracle(boxes, scores, 0.5), rtol=0, atol=0)


def test_score_ties_stable():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 10, 10], [21, 21, 30, 30.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]  # ties: lower index first, suppressing its copies
    same = random_boxes(70, "identical")
    assert nms(same, torch.ones(70), 0.5).tolist() == [0]
    disjoint = torch.stack([torch.tensor([i * 10.0, 0, i * 10 + 5, 5]) for i in range(70)])
    assert nms(disjoint, torch.ones(70), 0.5).tolist() == list(range(70))


def test_degenerate_boxes():
    boxes = torch.tensor([[0, 0, 0, 10], [0, 0, 0, 10], [5, 5, 5, 5], [5, 5, 5, 5], [10, 10, 4, 4],
                          [10, 10, 4, 4], [0, 0, 10, 10], [9, 9, 1, 1]], dtype=torch.float32)
    scores = torch.rand(8)
    for thr in (0.0, 0.5, 1.0):
        torch.testing.assert_close(nms(boxes, scores, thr), ref.nms(boxes, scores, thr), rtol=0, atol=0)
    # zero-area copies: IoU 0/0 is NaN, never > threshold, so both stay (as torchvision)
    assert set(nms(boxes[:2], scores[:2], 0.5).tolist()) == {0, 1}


def test_empty():
    for dtype in (torch.float32, torch.float16):
        keep = nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64
        keep = batched_nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype),
                           torch.zeros(0, dtype=torch.int64), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64


@pytest.mark.parametrize("n", [300, 1500])  # coordinate-trick path (<= 4000 values) and per-category kernel
def test_batched_nms_80_classes(n):
    boxes = random_boxes(n, "clustered")
    scores = torch.rand(n)
    idxs = torch.randint(0, 80, (n,))
    keep = batched_nms(boxes, scores, idxs, 0.5)
    torch.testing.assert_close(keep, ref.batched_nms(boxes, scores, idxs, 0.5), rtol=0, atol=0)
    # boxes of other categories never suppress each other
    assert keep.numel() >= nms(boxes, scores, 0.5).numel()


def test_score_threshold_and_max_output():
    boxes = random_boxes(300, "clustered")
    scores = torch.rand(300)
    full = nms(boxes, scores, 0.5)
    assert torch.equal(nms(boxes, scores, 0.5, max_output=5), full[:5])
    assert nms(boxes, scores, 0.5, max_output=0).numel() == 0
    sel = torch.where(scores > 0.4)[0]
    expected = sel[ref.nms(boxes[sel], scores[sel], 0.5)]
    torch.testing.assert_close(nms(boxes, scores, 0.5, score_threshold=0.4), expected, rtol=0, atol=0)
    keep, num = nms_padded(boxes, scores, 0.5, max_output=7)
    assert keep.shape == (300,) and num.shape == () and int(num) == 7
    assert torch.equal(keep[:7], full[:7]) and bool((keep[7:] == -1).all())


def test_box_iou():
    a, b = random_boxes(13), random_boxes(7)
    torch.testing.assert_close(box_iou(a, b).double(), ref.box_iou(a, b), rtol=1e-5, atol=1e-6)
    h = box_iou(a.half(), b.half())
    assert h.dtype == torch.float32  # upcast as torchvision


def test_errors():
    b, s = random_boxes(5), torch.rand(5)
    with pytest.raises(ValueError, match="boxes must have shape"):
        nms(torch.rand(5, 5), s, 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        nms(b, torch.rand(4), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        nms(b, s.double(), 0.5)
    with pytest.raises(TypeError, match="floating"):
        nms(b.long(), s.long(), 0.5)
    with pytest.raises(ValueError, match="is on"):
        nms(b, s.to("meta"), 0.5)
    with pytest.raises(TypeError, match="integer"):
        batched_nms(b, s, torch.rand(5), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(b, s, torch.zeros(4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="max_output"):
        nms(b, s, 0.5, max_output=-3)
    with pytest.raises(ValueError, match="boxes must have shape"):
        torch.ops.cvkernels.nms_padded(torch.rand(5, 3), s, None, 0.5, None, -1)


def test_opcheck():
    b, s = random_boxes(40, "clustered"), torch.rand(40)
    opcheck(torch.ops.cvkernels.nms_padded, (b, s, None, 0.5, None, -1))
    opcheck(torch.ops.cvkernels.nms_padded, (b, s, torch.randint(0, 3, (40,)), 0.5, 0.2, 10))


@pytest.mark.skipif(not HAS_TV, reason="torchvision not installed")
@pytest.mark.parametrize("n", [50, 1000, 1500])
def test_matches_torchvision(n):
    import torchvision
    boxes = random_boxes(n, "clustered")
    scores = torch.rand(n)
    idxs = torch.randint(0, 80, (n,))
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
    torch.testing.assert_close(box_iou(boxes, boxes[:9]), torchvision.ops.box_iou(boxes, boxes[:9]))


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and the cvkernels CUDA build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 20000])
def test_cuda_matches_cpu(dtype, n):
    boxes = random_boxes(n, "clustered", dtype, size=2000.0)
    scores = torch.rand(n, dtype=torch.float64).to(dtype)
    idxs = torch.randint(0, 80, (n,))
    oracle = _oracle(boxes, scores, 0.5) if n <= 1000 else nms(boxes, scores, 0.5)
    # (CUDA compares the IoU with float32(threshold) as torchvision's CUDA kernel does; 0.5 is exact)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), oracle)
    keep, num = torch.ops.cvkernels.nms_padded(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5, None, -1)
    k_cpu, n_cpu = torch.ops.cvkernels.nms_padded(boxes, scores, idxs, 0.5, None, -1)
    assert int(num) == int(n_cpu) and torch.equal(keep.cpu(), k_cpu)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA and the cvkernels CUDA build")
def test_cuda_nms_padded_no_sync():
    boxes = random_boxes(5000, "clustered").cuda()
    scores = torch.rand(5000, device="cuda")
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keep, num = nms_padded(boxes, scores, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    assert torch.equal(keep[:int(num)].cpu(), nms(boxes.cpu(), scores.cpu(), 0.5))
