"""`python -m cvkernels check`: every kernel against its float64 reference on the current device.

Each family registers a generator of cases; a case runs one backend on one input
configuration and yields (quantity, max error, allowed error). The allowed error is the
tolerance table's rule of cvkernels.testing: 2x the error of the plain torch op in the same
precision (plus a floor) for low precision, TOL for float32.
"""
import argparse
import sys
import time

import torch

from . import _dispatch, _extension
from .testing import TOL, bound_2x, max_err


def _backends_here(family, device):
    impls = _dispatch.FAMILIES[family]
    names = []
    for name in (impls["gpu"] if device == "cuda" else impls["cpu"]):
        if _dispatch._usable(name, device, family):
            names.append(name)
    return names


def _allowed(reference, torch_result, dtype):
    if dtype in (torch.float32, torch.float64):
        tol = TOL[dtype]
        return tol["atol"] + tol["rtol"] * reference.detach().abs().max().item() if reference.numel() else 0.0
    return bound_2x(reference, torch_result, dtype)


# ----------------------------------------------------------------------------- batch_norm_relu

def _batch_norm_relu_cases(device):
    import torch.nn.functional as F

    from reference.ops import batch_norm as ref

    from .ops.batch_norm import batch_norm_relu

    shapes = {"NCHW": ((4, 6, 9, 7), None), "channels_last": ((4, 6, 9, 7), torch.channels_last),
              "(N,C)": ((33, 6), None)}
    for backend in _backends_here("batch_norm_relu", device):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for layout, (shape, fmt) in shapes.items():
                for residual in (False, True):
                    for training in (True, False):
                        kernel = "bn_add_relu" if residual else "bn_relu"
                        label = f"{layout} {'train' if training else 'eval'} {tuple(shape)}"

                        def run(shape=shape, fmt=fmt, residual=residual, training=training, dtype=dtype,
                                backend=backend):
                            gen = torch.Generator().manual_seed(0)
                            C = shape[1]
                            x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
                            r64 = torch.randn(shape, generator=gen, dtype=torch.float64)
                            w64 = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
                            b64 = torch.randn(C, generator=gen, dtype=torch.float64)
                            g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
                            rm64 = torch.randn(C, generator=gen, dtype=torch.float64)
                            rv64 = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
                            # the oracle sees the same dtype-rounded inputs as the kernel
                            x64, r64, w64, b64, g64 = (t.to(dtype).double() for t in (x64, r64, w64, b64, g64))
                            outs = {}
                            for who in ("kernel", "torch", "ref"):
                                dt = torch.float64 if who == "ref" else dtype
                                dev = "cpu" if who == "ref" else device
                                x = x64.to(dev, dt)
                                if fmt is not None:
                                    x = x.contiguous(memory_format=fmt)
                                x.requires_grad_()
                                w = w64.to(dev, dt).requires_grad_()
                                b = b64.to(dev, dt).requires_grad_()
                                r = r64.to(dev, dt) if residual else None
                                stat_dt = {"ref": torch.float64, "kernel": torch.float32}.get(who, torch.float32)
                                if who == "torch" and dev == "cpu":  # CPU torch wants stats in x's dtype
                                    stat_dt = dtype
                                rm = rm64.to(dev, stat_dt)
                                rv = rv64.to(dev, rm.dtype)
                                if who == "kernel":
                                    y = batch_norm_relu(x, rm, rv, w, b, training, 0.1, 1e-5, residual=r,
                                                        backend=backend)
                                elif who == "ref":
                                    y = ref.batch_norm_relu(x, rm, rv, w, b, training, 0.1, 1e-5, residual=r)
                                else:
                                    y = torch.relu(F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
                                                   + (r if r is not None else 0))
                                grads = torch.autograd.grad(y, (x, w, b), g64.to(dev, y.dtype))
                                outs[who] = (y,) + grads + (rm, rv)
                            names = ("output", "grad_input", "grad_weight", "grad_bias", "running_mean",
                                     "running_var")
                            for i, name in enumerate(names):
                                if name.startswith("running") and not training:
                                    continue
                                k, t, o = (outs[w][i].cpu() for w in ("kernel", "torch", "ref"))
                                yield name, max_err(k, o), _allowed(o, t, k.dtype)

                        yield kernel, backend, label, dtype, run


# ----------------------------------------------------------------------------- conv

# label, transposed, (N, C_in, H, W), C_out, groups, kernel, stride, padding, dilation, output_padding, layout
_CONV_CONFIGS = (
    ("depthwise 3x3", False, (2, 8, 9, 7), 8, 8, 3, 1, 1, 1, 0, None),
    ("depthwise 5x5/2 x2", False, (2, 6, 11, 11), 12, 6, 5, 2, 2, 1, 0, torch.channels_last),
    ("grouped g=4", False, (2, 8, 7, 9), 12, 4, 3, 2, 1, 1, 0, torch.channels_last),
    ("dilated d=2", False, (2, 6, 13, 13), 8, 1, 3, 1, 2, 2, 0, None),
    ("transposed 4x4/2", True, (2, 8, 5, 5), 6, 1, 4, 2, 1, 1, 0, None),
    ("transposed g=2 op=1", True, (2, 6, 4, 5), 4, 2, 3, 2, 1, 1, 1, torch.channels_last),
)


def _conv_cases(device):
    import torch.nn.functional as F

    from reference.ops import conv as ref

    from .ops.conv import conv2d, conv_transpose2d

    for cfg in _CONV_CONFIGS:
        label, transposed, shape, c_out, groups, k, stride, padding, dilation, out_pad, fmt = cfg
        family = "conv_transpose2d" if transposed else ("depthwise_conv2d" if groups == shape[1] else "conv2d")
        for backend in _backends_here(family, device):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                def run(shape=shape, c_out=c_out, groups=groups, k=k, stride=stride, padding=padding,
                        dilation=dilation, out_pad=out_pad, fmt=fmt, transposed=transposed, dtype=dtype,
                        backend=backend):
                    gen = torch.Generator().manual_seed(0)
                    C = shape[1]
                    w_shape = (C, c_out // groups, k, k) if transposed else (c_out, C // groups, k, k)
                    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
                    w64 = torch.randn(w_shape, generator=gen, dtype=torch.float64) / (w_shape[1] * k * k) ** 0.5
                    b64 = torch.randn(c_out, generator=gen, dtype=torch.float64)
                    x64, w64, b64 = (t.to(dtype).double() for t in (x64, w64, b64))
                    outs = {}
                    for who in ("kernel", "torch", "ref"):
                        dt = torch.float64 if who == "ref" else dtype
                        dev = "cpu" if who == "ref" else device
                        x = x64.to(dev, dt)
                        if fmt is not None:
                            x = x.contiguous(memory_format=fmt)
                        x.requires_grad_()
                        w, b = w64.to(dev, dt).requires_grad_(), b64.to(dev, dt).requires_grad_()
                        if transposed:
                            fn = {"kernel": lambda *a: conv_transpose2d(*a, backend=backend),
                                  "torch": F.conv_transpose2d, "ref": ref.conv_transpose2d}[who]
                            y = fn(x, w, b, stride, padding, out_pad, groups, dilation)
                        else:
                            fn = {"kernel": lambda *a: conv2d(*a, backend=backend),
                                  "torch": F.conv2d, "ref": ref.conv2d}[who]
                            y = fn(x, w, b, stride, padding, dilation, groups)
                        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                        outs[who] = (y,) + torch.autograd.grad(y, (x, w, b), g.to(dtype).to(dev, y.dtype))
                    for i, name in enumerate(("output", "grad_input", "grad_weight", "grad_bias")):
                        kk, t, o = (outs[who][i].cpu() for who in ("kernel", "torch", "ref"))
                        # convolutions: the 2x rule in every dtype (fp32 GPU convs may run in TF32, like cuDNN's)
                        yield name, max_err(kk, o), bound_2x(o, t, kk.dtype)

                yield family, backend, label, dtype, run


# ----------------------------------------------------------------------------- attention

# B, H, Hkv, Nq, Nk, D, causal, mask ("bool" / "float" / None)
_ATTENTION_CONFIGS = (
    (2, 2, 2, 197, 197, 64, False, None),      # ViT-B/16 tokens
    (1, 4, 2, 77, 130, 80, True, None),        # GQA, cross, causal, head dim 80
    (2, 2, 2, 49, 49, 32, False, "float"),     # Swin-sized window with an additive bias
    (1, 2, 1, 33, 65, 128, False, "bool"),     # MQA, key padding
)


def _attention_cases(device):
    from reference.ops import attention as ref

    from .ops.attention import scaled_dot_product_attention as sdpa
    import torch.nn.functional as F

    for backend in _backends_here("flash_attention", device):
        for config in _ATTENTION_CONFIGS:
            B, H, Hkv, Nq, Nk, D, causal, mask_kind = config
            label = f"{B}x{H}/{Hkv}x{Nq}x{Nk}x{D}" + (" causal" if causal else "") + (f" {mask_kind}" if mask_kind else "")
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                def run(B=B, H=H, Hkv=Hkv, Nq=Nq, Nk=Nk, D=D, causal=causal, mask_kind=mask_kind, dtype=dtype,
                        backend=backend):
                    gen = torch.Generator().manual_seed(0)
                    q64, k64, v64 = (torch.randn(B, h, n, D, generator=gen, dtype=torch.float64)
                                     for h, n in ((H, Nq), (Hkv, Nk), (Hkv, Nk)))
                    mask = None
                    if mask_kind == "bool":
                        mask = torch.rand(B, 1, 1, Nk, generator=gen) > 0.3
                        mask[..., 0] = True
                    elif mask_kind == "float":
                        mask = torch.randn(1, H, Nq, Nk, generator=gen, dtype=torch.float64)
                    outs = {}
                    for who in ("kernel", "torch", "ref"):
                        dt, dev = (torch.float64, "cpu") if who == "ref" else (dtype, device)
                        # the oracle sees the dtype-rounded inputs
                        q, k, v = (t.to(dtype).to(dt).to(dev).requires_grad_() for t in (q64, k64, v64))
                        m = None if mask is None else mask.to(dev) if mask.dtype == torch.bool else mask.to(dtype).to(dt).to(dev)
                        kw = dict(attn_mask=m, is_causal=causal, enable_gqa=H != Hkv)
                        if who == "kernel":
                            y = sdpa(q, k, v, backend=backend, **kw)
                        elif who == "torch":
                            y = F.scaled_dot_product_attention(q, k, v, **kw)
                        else:
                            y = ref.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
                        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                        outs[who] = (y,) + torch.autograd.grad(y, (q, k, v), g.to(dtype).to(dev, y.dtype))
                    for i, name in enumerate(("output", "grad_q", "grad_k", "grad_v")):
                        kk, t, o = (outs[who][i].cpu() for who in ("kernel", "torch", "ref"))
                        yield name, max_err(kk, o), bound_2x(o, t, kk.dtype)

                yield "flash_attention", backend, label, dtype, run


_WINDOW_CONFIGS = (("W-MSA 14x14 w7", 1, (14, 14), 2, 32, 7, 0), ("SW-MSA 14x14 w7 s3", 1, (14, 14), 2, 32, 7, 3),
                   ("SW-MSA 12x16 w(6,8) s(3,2) d24", 1, (12, 16), 2, 24, (6, 8), (3, 2)))


def _window_attention_cases(device):
    from reference.ops import window_attention as ref

    from .ops.window_attention import shifted_window_attention

    for backend in _backends_here("window_attention", device):
        for label, B, (H, W), heads, D, window, shift in _WINDOW_CONFIGS:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                def run(B=B, H=H, W=W, heads=heads, D=D, window=window, shift=shift, dtype=dtype, backend=backend):
                    gen = torch.Generator().manual_seed(0)
                    mh, mw = (window, window) if isinstance(window, int) else window
                    qkv64 = torch.randn(B, H, W, 3 * heads * D, generator=gen, dtype=torch.float64)
                    t64 = torch.randn((2 * mh - 1) * (2 * mw - 1), heads, generator=gen, dtype=torch.float64)
                    outs = {}
                    for who in ("kernel", "torch", "ref"):
                        dt, dev = (torch.float64, "cpu") if who == "ref" else (dtype, device)
                        qkv, table = (t.to(dtype).to(dt).to(dev).requires_grad_() for t in (qkv64, t64))
                        if who == "ref":
                            y = ref.shifted_window_attention(qkv, table, heads, window, shift)
                        else:
                            y = shifted_window_attention(qkv, table, heads, window, shift,
                                                         backend=backend if who == "kernel" else "torch")
                        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                        outs[who] = (y,) + torch.autograd.grad(y, (qkv, table), g.to(dtype).to(dev, y.dtype))
                    for i, name in enumerate(("output", "grad_qkv", "grad_table")):
                        kk, t, o = (outs[who][i].cpu() for who in ("kernel", "torch", "ref"))
                        yield name, max_err(kk, o), bound_2x(o, t, kk.dtype)

                yield "window_attention", backend, label, dtype, run


# ----------------------------------------------------------------------------- diffusion

_DIFFUSION_CONFIGS = (("SD latents 2x4x32x32", (2, 4, 32, 32)), ("pixels 1x3x64x64", (1, 3, 64, 64)))


def _diffusion_cases(device):
    from reference.ops import diffusion as ref

    from .ops import diffusion as D

    a_t, a_prev = torch.tensor([0.05, 0.6]), torch.tensor([0.08, 0.7])
    samplers = {
        "ddpm": (lambda m, x, z, b: D.ddpm_step(m, x, a_t[:x.shape[0]], a_prev[:x.shape[0]], noise=z, backend=b),
                 lambda m, x, z: ref.ddpm_step(m, x, a_t[:x.shape[0]].double(), a_prev[:x.shape[0]].double(), z)),
        "ddim": (lambda m, x, z, b: D.ddim_step(m, x, a_t[:x.shape[0]], a_prev[:x.shape[0]], eta=0.5, noise=z,
                                                 thresholding=True, backend=b),
                 lambda m, x, z: ref.ddim_step(m, x, a_t[:x.shape[0]].double(), a_prev[:x.shape[0]].double(), z,
                                               eta=0.5, thresholding=True)),
        "euler_a": (lambda m, x, z, b: D.euler_ancestral_step(m, x, 3.0, 1.5, noise=z, backend=b),
                    lambda m, x, z: ref.euler_ancestral_step(m, x, 3.0, 1.5, z)),
        "dpmpp_2m": (lambda m, x, z, b: D.dpmpp_step(m, x, 2.0, 1.0, sigma_s1=4.0, prev_pred_original_sample=z,
                                                      backend=b),
                     lambda m, x, z: ref.dpmpp_step(m, x, 2.0, 1.0, 4.0, z)),
    }
    for backend in _backends_here("diffusion", device):
        for label, shape in _DIFFUSION_CONFIGS:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for name, (kernel, oracle) in samplers.items():
                    def run(shape=shape, dtype=dtype, kernel=kernel, oracle=oracle, backend=backend):
                        gen = torch.Generator().manual_seed(0)
                        m, x, z = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
                        got = kernel(m.to(device), x.to(device), z.to(device), backend)
                        want = oracle(m, x, z)
                        for i, q in enumerate(("prev_sample", "pred_original_sample")):
                            k, o = got[i].cpu(), want[i]
                            # fp32 arithmetic, one rounding to the storage dtype at the end
                            allowed = (TOL[dtype]["atol"] + TOL[dtype]["rtol"]) * max(1.0, o.abs().max().item())
                            yield q, max_err(k, o), allowed

                    yield "diffusion", backend, f"{name} {label}", dtype, run


# ----------------------------------------------------------------------------- detection

# RoI Align configurations: label, aligned, sampling_ratio, layout (N, C, H, W = 2, 3, 9, 11; 6 RoIs;
# 3x2 bins at spatial_scale 0.4771, not a round number, so no sample lands on a pixel border where
# float32 and float64 coordinates could disagree)
_ROI_ALIGN_CONFIGS = (
    ("aligned sr=2", True, 2, None),
    ("aligned sr=-1", True, -1, None),
    ("unaligned sr=2", False, 2, None),
    ("unaligned sr=-1", False, -1, None),
    ("aligned sr=2 channels_last", True, 2, torch.channels_last),
)
_ROI_SCALE = 0.4771
# NMS configurations: label, boxes, kind, iou threshold, batched (80 classes)
_NMS_CONFIGS = (
    ("random 300 iou0.5", 300, "random", 0.5, False),
    ("clustered 1000 iou0.7", 1000, "clustered", 0.7, False),
    ("clustered 1000 iou0.5 80 classes", 1000, "clustered", 0.5, True),
)


def _roi_inputs(seed):
    """bf16-exact features (2, 3, 9, 11) and 6 RoIs on a 1/8 grid (exact in every dtype): partly
    outside the map, both images, one tiny RoI and one with x2 < x1, y2 < y1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64).to(torch.bfloat16).double()
    x = torch.where(x.abs() < 1e-2, torch.full_like(x, 0.25), x)
    K = 6
    x1 = torch.randint(-40, 170, (K,), generator=gen) / 8
    y1 = torch.randint(-40, 140, (K,), generator=gen) / 8
    bw = torch.randint(2, 100, (K,), generator=gen) / 8
    bh = torch.randint(2, 90, (K,), generator=gen) / 8
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], 1).double()
    boxes[1] = torch.tensor([5.0, 6.0, 5.125, 6.25])
    boxes[2] = torch.tensor([12.0, 10.0, 7.0, 4.0])
    rois = torch.cat([torch.tensor([0.0, 1, 0, 1, 1, 0])[:, None], boxes], 1)
    return x, rois


# Multi-level RoI Align (MultiScaleRoIAlign's one launch): the RoIs of _roi_inputs spread over three
# levels, 9 x 11 at _ROI_SCALE and 5 x 6, 3 x 3 at half and a quarter of it; level 2 gets no RoI
_ROI_ML_SHAPES = ((9, 11), (5, 6), (3, 3))
_ROI_ML_LEVELS = (0, 1, 1, 0, 1, 0)


def _roi_multilevel_inputs(seed):
    """bf16-exact levels (_ROI_ML_SHAPES, N = 2, C = 3), _roi_inputs' RoIs and their levels."""
    x, rois = _roi_inputs(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    feats = [x]
    for h, w in _ROI_ML_SHAPES[1:]:
        f = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64).to(torch.bfloat16).double()
        feats.append(torch.where(f.abs() < 1e-2, torch.full_like(f, 0.25), f))
    return feats, rois, torch.tensor(_ROI_ML_LEVELS)


def _torch_roi(name):
    """torchvision's op (the plain torch implementation of the 2x rule) or None where it is missing."""
    try:
        import torchvision.ops
    except ImportError:
        return None
    return getattr(torchvision.ops, name)


def _nms_inputs(n, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 200
        wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 + 1
    else:  # a few objects, many jittered detections of each
        centers = torch.rand(max(n // 25, 1), 2, generator=gen, dtype=torch.float64) * 200
        pick = torch.randint(0, centers.shape[0], (n,), generator=gen)
        base = torch.rand(centers.shape[0], 2, generator=gen, dtype=torch.float64) * 40 + 10
        xy = centers[pick] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 3
        wh = base[pick] * (1 + 0.15 * torch.randn(n, 2, generator=gen, dtype=torch.float64)).clamp(min=0.3)
    boxes = torch.cat([xy, xy + wh], 1).float()
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 80, (n,), generator=gen)
    return boxes, scores, idxs


def _keep_err(got, want):
    """0 when the kept indices are identical (same order), else the number of positions that differ."""
    got, want = got.cpu().tolist(), want.cpu().tolist()
    return float(sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want)))


def _detection_cases(device):
    from reference.ops import nms as ref_nms
    from reference.ops import roi as ref

    from .ops.nms import batched_nms, nms
    from .ops.roi import _roi_align_per_level, roi_align, roi_align_multilevel, roi_pool

    PH, PW = 3, 2
    for backend in _backends_here("roi_align", device):
        for ci, (label, aligned, sr, fmt) in enumerate(_ROI_ALIGN_CONFIGS):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                def run(ci=ci, aligned=aligned, sr=sr, fmt=fmt, dtype=dtype, backend=backend):
                    x64, rois64 = _roi_inputs(100 + ci)
                    g64 = torch.randn(rois64.shape[0], x64.shape[1], PH, PW, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(1)).to(dtype).double()
                    tv = _torch_roi("roi_align")
                    outs = {}
                    for who in ("kernel", "ref", "torch"):
                        dt, dev = (torch.float64, "cpu") if who == "ref" else (dtype, device)
                        if who == "torch" and tv is None:
                            # no torchvision: the float64 oracle rounded to the dtype (one rounding,
                            # the least error any implementation in that precision can have)
                            outs[who] = tuple(t.to(dtype) for t in outs["ref"])
                            continue
                        x = x64.to(dev, dt)
                        if fmt is not None:
                            x = x.contiguous(memory_format=fmt)
                        x.requires_grad_()
                        rois = rois64.to(dev, dt)
                        if who == "kernel":
                            y = roi_align(x, rois, (PH, PW), _ROI_SCALE, sr, aligned, backend=backend)
                        elif who == "torch":
                            y = tv(x, rois, (PH, PW), _ROI_SCALE, sr, aligned)
                        else:
                            y = ref.roi_align(x, rois, (PH, PW), _ROI_SCALE, sr, aligned)
                        g = g64.to(dev, y.dtype)
                        gx = torch.autograd.grad(y, x, g)[0] if y.requires_grad else torch.zeros_like(x)
                        outs[who] = (y.detach(), gx)
                        if who == "kernel" and fmt is not None and not gx.is_contiguous(memory_format=fmt):
                            raise AssertionError("grad_input lost the channels_last layout")
                    for i, name in enumerate(("output", "grad_input")):
                        kk, t, o = (outs[who][i].cpu() for who in ("kernel", "torch", "ref"))
                        yield name, max_err(kk, o), _allowed(o, t, kk.dtype)

                yield "roi_align", backend, label, dtype, run

    scales = [_ROI_SCALE / 2 ** level for level in range(len(_ROI_ML_SHAPES))]
    for backend in _backends_here("roi_align", device):
        for label, fmt in (("3 levels aligned sr=2", None), ("3 levels aligned sr=2 CL", torch.channels_last)):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                def run(fmt=fmt, dtype=dtype, backend=backend):
                    feats64, rois64, levels = _roi_multilevel_inputs(300)
                    K = rois64.shape[0]
                    g64 = torch.randn(K, 3, PH, PW, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(2)).to(dtype).double()
                    # the float64 oracle: each level's RoIs pooled from that level
                    want, want_g = torch.zeros(K, 3, PH, PW, dtype=torch.float64), []
                    for level, (f, scale) in enumerate(zip(feats64, scales)):
                        sel = (levels == level).nonzero().flatten()
                        f = f.clone().requires_grad_()
                        y = ref.roi_align(f, rois64[sel], (PH, PW), scale, 2, True)
                        want[sel] = y.detach()
                        want_g.append(torch.autograd.grad(y, f, g64[sel])[0] if y.requires_grad
                                      else torch.zeros_like(f))
                    feats = [f.to(device, dtype).contiguous(memory_format=fmt or torch.contiguous_format)
                             .requires_grad_() for f in feats64]
                    rois, lv = rois64.to(device, dtype), levels.to(device)
                    y = roi_align_multilevel(feats, rois, lv, (PH, PW), scales, 2, True, backend=backend)
                    got_g = torch.autograd.grad(y, feats, g64.to(device, dtype))
                    if fmt is not None and not all(g.is_contiguous(memory_format=fmt) for g in got_g):
                        raise AssertionError("grad_input lost the channels_last layout")
                    if _torch_roi("roi_align") is not None:  # torchvision's loop over levels
                        t = _roi_align_per_level(feats, rois, lv, (PH, PW), scales, 2, True, "avg", "torch")
                        t_g = torch.autograd.grad(t, feats, g64.to(device, dtype))
                    else:  # the float64 oracle rounded to the dtype (see the roi_align cases)
                        t, t_g = want.to(dtype), [g.to(dtype) for g in want_g]
                    yield "output", max_err(y.detach().cpu(), want), _allowed(want, t.detach().cpu(), dtype)
                    for level in range(len(feats)):
                        yield (f"grad level {level}", max_err(got_g[level].cpu(), want_g[level]),
                               _allowed(want_g[level], t_g[level].cpu(), dtype))

                yield "roi_align_levels", backend, label, dtype, run

    for backend in _backends_here("roi_pool", device):
        for label, fmt in (("roi_pool", None), ("roi_pool channels_last", torch.channels_last)):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                def run(fmt=fmt, dtype=dtype, backend=backend):
                    x64, rois64 = _roi_inputs(7)
                    tv = _torch_roi("roi_pool")
                    x = x64.to(device, dtype)
                    if fmt is not None:
                        x = x.contiguous(memory_format=fmt)
                    rois = rois64.to(device, dtype)
                    got = roi_pool(x, rois, (PH, PW), _ROI_SCALE, backend=backend).cpu()
                    want = ref.roi_pool(x64, rois64, (PH, PW), _ROI_SCALE)
                    t = tv(x, rois, (PH, PW), _ROI_SCALE).cpu() if tv is not None else want.to(dtype)
                    yield "output", max_err(got, want), _allowed(want, t, dtype)

                yield "roi_pool", backend, label, dtype, run

    for backend in _backends_here("nms", device):
        for ci, (label, n, kind, thr, batched) in enumerate(_NMS_CONFIGS):
            def run(ci=ci, n=n, kind=kind, thr=thr, batched=batched, backend=backend):
                boxes, scores, idxs = _nms_inputs(n, kind, 200 + ci)
                b, s, i = boxes.to(device), scores.to(device), idxs.to(device)
                if batched:
                    got = batched_nms(b, s, i, thr, backend=backend)
                    want = ref_nms.batched_nms(boxes, scores, idxs, thr)
                else:
                    got = nms(b, s, thr, backend=backend)
                    want = ref_nms.nms(boxes, scores, thr)
                # the kept indices must be the reference's, exactly
                yield "keep", _keep_err(got, want), 0.0

            yield "batched_nms" if batched else "nms", backend, label, torch.float32, run


# ----------------------------------------------------------------------------- volume rendering

def _volume_render_inputs(counts, seed, last_interval=True):
    """Packed float64 samples of rays with `counts` samples (intervals increasing along each ray,
    the last one NeRF's 1e10 with `last_interval`), densities in [0, 3), colours in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(counts, dtype=torch.int64)
    n = int(counts.sum())
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    sig = torch.rand(n, generator=gen, dtype=torch.float64) * 3
    rgb = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    width = torch.rand(n, generator=gen, dtype=torch.float64) * 0.2 + 0.02
    ray = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    t1 = torch.cumsum(width, 0) - torch.cumsum(width, 0)[offsets[:-1]][ray] + width[offsets[:-1]][ray] + 2.0
    t0 = t1 - width
    if last_interval:
        last = offsets[1:][counts > 0] - 1
        t1[last] = t0[last] + 1e10
    return sig, rgb, t0, t1, offsets


def _volume_render_cases(device):
    from reference.models.nerf import VolumeRenderer
    from reference.ops import volume_render as ref

    from .ops.volume_render import volume_render

    bg = (0.2, 0.5, 1.0)
    for backend in _backends_here("volume_render", device):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            # dense rays: outputs and gradients against the reference renderer in float64 (autograd)
            def dense(dtype=dtype, backend=backend):
                R, S = 6, 40
                # no 1e10 interval: the half-precision torch renderer (the 2x rule's baseline) would overflow
                sig, rgb, t0, t1, _ = _volume_render_inputs([S] * R, 10, last_interval=False)
                shaped = (sig.view(R, S), rgb.view(R, S, 3), t0.view(R, S), t1.view(R, S))
                g = torch.rand(R, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
                runs = {}
                for who in ("kernel", "ref", "torch"):
                    dt = torch.float64 if who == "ref" else dtype
                    dev = device if who == "kernel" else "cpu"
                    s = shaped[0].to(dev, dt).clone().requires_grad_()
                    c = shaped[1].to(dev, dt).clone().requires_grad_()
                    ts, te = (t.to(s.device, torch.float64 if dt == torch.float64 else torch.float32) for t in shaped[2:])
                    if who == "kernel":
                        out = volume_render(s, c, ts, te, background=torch.tensor(bg, dtype=dtype, device=device),
                                            backend=backend)
                        color, opacity, weights = out.color, out.opacity, out.weights
                    else:
                        color, opacity, _, weights = VolumeRenderer(bg)(s, c, ts.to(dt), te.to(dt))
                    color.backward(g.to(color.device, color.dtype))
                    runs[who] = {"color": color, "opacity": opacity, "weights": weights, "grad_sigmas": s.grad,
                                 "grad_rgbs": c.grad}
                for q in runs["ref"]:
                    k, o, t = (runs[w][q].detach().cpu() for w in ("kernel", "ref", "torch"))
                    yield q, max_err(k, o), _allowed(o, t, dtype)

            yield "volume_render", backend, "dense 6x40 bg", dtype, dense

            # packed rays with empty / one-sample rays and early termination: forward against the
            # per-ray float64 quadrature
            def packed(dtype=dtype, backend=backend):
                sig, rgb, t0, t1, offsets = _volume_render_inputs([0, 1, 7, 45, 3, 33], 12)
                want = ref.volume_render_packed(sig.to(dtype), rgb.to(dtype), t0.float(), t1.float(), offsets,
                                                transmittance_threshold=1e-2)
                got = volume_render(sig.to(device, dtype), rgb.to(device, dtype), t0.to(device).float(),
                                    t1.to(device).float(), offsets=offsets.to(device), transmittance_threshold=1e-2,
                                    backend=backend)
                for q in ("color", "opacity", "depth", "weights"):
                    o = want[q]
                    allowed = (TOL[dtype]["atol"] + TOL[dtype]["rtol"]) * max(1.0, o.abs().max().item())
                    yield q, max_err(getattr(got, q).cpu(), o), allowed

            yield "volume_render", backend, "packed early-stop", dtype, packed


CHECKS = {
    "batch_norm_relu": _batch_norm_relu_cases,
    "conv": _conv_cases,
    "attention": _attention_cases,
    "window_attention": _window_attention_cases,
    "diffusion": _diffusion_cases,
    "detection": _detection_cases,
    "volume_render": _volume_render_cases,
}


def run_checks(families=None, device=None, verbose=True):
    """Runs the checks; returns rows (family, kernel, backend, case, dtype, quantity, err, allowed, ok)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for family in families or CHECKS:
        if family not in CHECKS:
            raise SystemExit(f"unknown family {family!r}; known: {', '.join(CHECKS)}")
        cases = list(CHECKS[family](device))
        for i, (kernel, backend, label, dtype, run) in enumerate(cases):
            if verbose:
                print(f"\r[{family} {i + 1}/{len(cases)}] {kernel} {backend} {label} {dtype}".ljust(90),
                      end="", file=sys.stderr, flush=True)
            try:
                for quantity, err, allowed in run():
                    rows.append((family, kernel, backend, label, dtype, quantity, err, allowed, err <= allowed))
            except Exception as exc:  # a crash is a failure with its message, not an abort
                rows.append((family, kernel, backend, label, dtype, f"raised {type(exc).__name__}: {exc}",
                             float("nan"), 0.0, False))
        if verbose:
            print(file=sys.stderr)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cvkernels check")
    parser.add_argument("families", nargs="*", help=f"families to check (default: all of {', '.join(CHECKS)})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--all-rows", action="store_true", help="print every quantity, not one row per case")
    parser.add_argument("--models", nargs="*", default=None, metavar="NAME",
                        help="instead of the kernels: converted-vs-unconverted parity of these reference models "
                             "(none given: every registered model; see cvkernels/model_check.py)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.models is not None:
        from .model_check import check_models, format_results
        names = [n for arg in args.models for n in arg.split(",") if n] or None
        print(f"cvkernels check --models on {device} (torch {torch.__version__}, compiled ops: "
              f"{_extension.has_ops()}, triton interpreter: {_dispatch.triton_interpreting()})")
        results = check_models(names, device)
        print(format_results(results))
        return 0 if results and all(r.ok for r in results) else 1
    print(f"cvkernels check on {device} (torch {torch.__version__}, compiled ops: {_extension.has_ops()}, "
          f"triton interpreter: {_dispatch.triton_interpreting()})")
    start = time.time()
    rows = run_checks(args.families or None, device)
    # one line per case: its worst quantity relative to what it may have
    cases = {}
    for row in rows:
        key = row[:5]
        worst = cases.get(key)
        ratio = row[6] / row[7] if row[7] > 0 else (0.0 if row[6] == 0 else float("inf"))
        if not row[8]:
            ratio = float("inf")
        if worst is None or ratio > worst[0] or args.all_rows:
            cases[key if not args.all_rows else row] = (ratio, row)
    header = f"{'kernel':<16} {'backend':<7} {'dtype':<9} {'case':<34} {'worst quantity':<15} {'max err':>9} {'allowed':>9}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for _, row in cases.values():
        family, kernel, backend, label, dtype, quantity, err, allowed, ok = row
        failures += not ok
        print(f"{kernel:<16} {backend:<7} {str(dtype).replace('torch.', ''):<9} {label:<34} {quantity[:60]:<15} "
              f"{err:>9.2e} {allowed:>9.2e}  {'PASS' if ok else 'FAIL'}")
    print(f"\n{len(cases) - failures} passed, {failures} failed ({len(rows)} quantities, {time.time() - start:.0f} s)")
    if not rows:
        print("no kernel could run on this device")
        return 1
    return 1 if failures else 0
