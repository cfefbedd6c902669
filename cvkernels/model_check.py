"""Model-level parity sweep (`python -m cvkernels check --models [names]`, tests/test_models_sweep.py).

For a registered reference model (reference.models) at its small configuration: the model, a
``cvkernels.convert``-ed deep copy and a float64 deep copy run forward and backward on the same
input, in train and in eval mode; for every floating output, the input gradients and every
parameter gradient, the converted model's relative L2 distance to the float64 model,
||cvk - f64|| / ||f64||, must be at most 2x the unconverted float32 model's own relative distance
plus MODEL_FLOOR (float32 rounding compounded over the layers). A relative norm rather than a
max-abs error because a deep ReLU network's gradients move by whole elements wherever a
pre-activation within an ulp of 0 rounds to the other side (a fused kernel rounds differently
from torch's two ops): that is a correct result, and it moves the norm little. The report lists which cvkernels kernels the conversion put in and
the backend each runs on this device; a model that uses none says so (its parity is then the
identity, still checked).

Inputs and outputs may be tensors, tuples / lists (called as ``model(*x)``), dicts of tensors, or
nested mixtures (detectors return lists of dicts); the backward pass uses a fixed random
projection of every floating output that requires grad. Each forward is preceded by the same
torch.manual_seed, so models that draw noise in train mode (VAE, StyleGAN noise) draw the same
numbers in all three runs (up to the dtype of the draw).
"""
import collections
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import _dispatch

MODEL_FLOOR = 2e-3
FP64_BOUND = 1e-6        # converted float64 model vs the float64 model (relative L2)
ZERO_SCALE = 1e-4        # see _compare: the scale of analytically-zero quantities
ILL_CONDITIONED = 1e-2   # relative movement of a float32 quantity under one ulp of input: unresolvable

# cvkernels module class name -> kernel family it runs (modules routed in place carry
# ``_cvkernels_kernel`` instead)
_MODULE_FAMILIES = {
    "BatchNormReLU": "batch_norm_relu", "BatchNormReLU1d": "batch_norm_relu", "BatchNormReLU2d": "batch_norm_relu",
    "SyncBatchNormReLU": "batch_norm_relu", "ConvTranspose2d": "conv_transpose2d",
    "MultiheadAttention": "flash_attention", "RoIAlign": "roi_align", "RoIPool": "roi_pool",
    "MultiScaleRoIAlign": "roi_align", "VolumeRenderer": "volume_render", "WindowAttention": "window_attention",
}


@dataclass
class ModelResult:
    name: str
    ok: bool
    kernels: Dict[str, int] = field(default_factory=dict)   # "family[backend]" -> modules
    worst: Tuple[str, float, float] = ("", 0.0, 0.0)         # quantity, error, bound
    seconds: float = 0.0
    error: Optional[str] = None
    quantities: int = 0
    worst64: Tuple[str, float, float] = ("", 0.0, 0.0)
    ill_conditioned: int = 0   # float32 misses on quantities float32 itself cannot resolve

    @property
    def kernel_summary(self) -> str:
        if not self.kernels:
            return "none (no module the conversion handles)"
        return ", ".join(f"{k} x{n}" for k, n in sorted(self.kernels.items()))


def _family_of(module) -> Optional[str]:
    kernel = module.__dict__.get("_cvkernels_kernel")
    if kernel is not None:
        return kernel
    if not type(module).__module__.startswith("cvkernels."):
        return None
    name = type(module).__name__
    if name == "Conv2d":
        groups, cin = module.groups, module.in_channels
        return "depthwise_conv2d" if groups == cin and groups > 1 else "conv2d"
    return _MODULE_FAMILIES.get(name)


def kernels_used(model: nn.Module, device_type: str) -> Dict[str, int]:
    """{"family[backend]": count} of the modules of ``model`` that run cvkernels kernels, with the
    backend the dispatcher picks for ``device_type`` (automatic choice)."""
    counts = collections.Counter()
    for m in model.modules():
        family = _family_of(m)
        if family is None:
            continue
        backend = getattr(m, "backend", None) or m.__dict__.get("_cvk_backend")
        if backend is None and family in _dispatch.FAMILIES:
            backend = _dispatch.choose(family, device_type)
        counts[f"{family}[{backend}]"] += 1
    return dict(counts)


def _tensors(obj, out, path="out"):
    """Floating tensors of a nested output, in a fixed order, with their paths."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            out.append((path, obj))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _tensors(obj[k], out, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, out, f"{path}[{i}]")
    return out


def _map_floats(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _map_floats(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_map_floats(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_map_floats(v, fn) for v in obj]
    return obj


def _call(model, x):
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _perturb_norms(model, seed=0):
    """Non-trivial BatchNorm affine parameters and running statistics (init values hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _rel_l2(actual, reference, floor_rms=0.0):
    """||actual - reference|| / max(||reference||, floor_rms sqrt(numel)) over the whole tensor
    (0 / 0 = 0; float64). floor_rms keeps quantities that are analytically zero (a conv bias in front
    of a train-mode BatchNorm has gradient 0, computed as rounding noise) from dividing by noise."""
    a, r = actual.detach().double().cpu(), reference.detach().double().cpu()
    diff = (a - r).norm().item()
    scale = max(r.norm().item(), floor_rms * max(r.numel(), 1) ** 0.5)
    if diff != diff:
        return float("nan")
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _rms(t):
    t = t.detach().double()
    return (t.norm() / max(t.numel(), 1) ** 0.5).item() if t.numel() else 0.0


def _run(model, x, train, seed):
    model.train(train)
    # inputs require grad, targets (dicts: boxes, masks, ...) do not: torchvision's RoI ops give box
    # coordinates no gradient, a pure-torch RoI Align does
    if isinstance(x, (tuple, list)):
        x = type(x)(_map_floats(v, lambda t: t.detach().clone().requires_grad_(True))
                    if isinstance(v, torch.Tensor) else v for v in x)
    else:
        x = _map_floats(x, lambda t: t.detach().clone().requires_grad_(True))
    torch.manual_seed(seed)
    out = _call(model, x)
    outs = _tensors(out, [])
    loss = None
    for i, (_, t) in enumerate(outs):
        if not t.requires_grad:
            continue
        g = torch.randn(t.shape, generator=torch.Generator().manual_seed(1000 + i), dtype=torch.float64)
        term = (t * g.to(t.device, t.dtype)).sum()
        loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    # a gradient autograd never reached counts as zeros (a fused op may hand a branch explicit zeros)
    def grad(t):
        return torch.zeros_like(t) if t.grad is None else t.grad

    quantities = [(p, t.detach()) for p, t in outs] + [(f"grad_{p}", grad(t)) for p, t in _tensors(x, [], "input")]
    quantities += [(f"grad_{n}", grad(p)) for n, p in model.named_parameters()]
    model.zero_grad(set_to_none=True)
    return quantities


def _ulp_perturbed(x):
    """The input with every float moved by one unit in the last place, up or down at random (fixed
    seed): how far the float32 model itself moves under one rounding's difference."""
    gen = torch.Generator().manual_seed(99)

    def move(t):
        step = torch.where(torch.rand(t.shape, generator=gen) < 0.5, -1.0, 1.0).to(t.device, t.dtype)
        return torch.nextafter(t, t + step * torch.finfo(t.dtype).max) if t.dtype != torch.float64 else t

    if isinstance(x, (tuple, list)):  # targets (dicts) stay as they are
        return type(x)(move(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in x)
    return _map_floats(x, move)


def _needs_targets(model, x):
    """Whether the model's train-mode forward asks for targets (the detectors: torchvision's API)."""
    import inspect
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "targets" in params and not isinstance(x, (tuple, list))


def _train_input(name, spec, x):
    """Train-mode input of a detector (its forward wants targets then): (images, random targets)."""
    from reference.models import _detection
    images = x[0] if isinstance(x, (tuple, list)) else x
    gen = torch.Generator().manual_seed(7)
    targets = _detection.random_targets(images.shape[0], tuple(images.shape[-2:]),
                                        spec.small_config.get("num_classes", 5), masks=True, generator=gen)
    targets = [{k: v.to(images.device) for k, v in t.items()} for t in targets]
    return (images, targets)


def _compare(runs, mode, exact):
    """Compares the 'cvk' run with the 'oracle' run (float64) quantity by quantity.

    exact: both runs in float64, bound FP64_BOUND. Otherwise the 2x rule against the 'torch' run
    (float32 unconverted); where the float64 run's outputs have another structure (a detector
    keeping other boxes near a threshold), the float32 runs are compared with each other instead
    (bound MODEL_FLOOR). Returns (worst, failures, count); worst = (quantity, err, bound) with the
    largest err / bound, failures = [(quantity, err, bound, torch's own err)].
    """
    names = {k: [q for q, _ in r] for k, r in runs.items()}
    sens = {q: p for q, p in runs.get("perturbed", [])}
    ref, bound_of = runs["oracle"], None
    if not exact and names["oracle"] != names["torch"]:
        ref = runs["torch"]
        bound_of = lambda t, o, floor: MODEL_FLOOR  # noqa: E731
    if names["cvk"] != [q for q, _ in ref]:
        raise AssertionError(f"{mode}: the converted model's outputs/gradients differ in structure "
                             f"({sorted(set(names['cvk']) ^ set(q for q, _ in ref))[:4]})")
    if bound_of is None:
        bound_of = (lambda t, o, floor: FP64_BOUND) if exact else (
            lambda t, o, floor: 2.0 * max(_rel_l2(t, o, floor), _rel_l2(sens.get(current[0], t), t, floor))
            + MODEL_FLOOR)
    worst, failures = ("", 0.0, 1.0), []
    base = runs.get("torch", ref)
    # quantities below ZERO_SCALE x the run's largest RMS are compared at that scale
    floor = ZERO_SCALE * max((_rms(o) for _, o in ref), default=0.0)
    current = [""]
    for (q, a), (_, o), (_, t) in zip(runs["cvk"], ref, base):
        current[0] = q
        if a.shape != o.shape:
            raise AssertionError(f"{mode} {q}: shape {tuple(a.shape)} vs {tuple(o.shape)}")
        err, bound = _rel_l2(a, o, floor), bound_of(t, o, floor)
        if not err <= bound:
            own = 0.0 if exact else max(_rel_l2(t, o, floor), _rel_l2(sens.get(q, t), t, floor))
            failures.append((f"{mode} {q}", err, bound, own))
        if not err <= worst[1] / worst[2] * bound:
            worst = (f"{mode} {q}", err, bound)
    return worst, failures, len(runs["cvk"])


def default_batch(spec) -> int:
    """Batch of a model's parity run: 8 where the model has BatchNorm (its deepest feature maps are
    1x1 at the CPU-sized inputs, so a train-mode BatchNorm sees `batch` values per channel: with 2
    its outputs are +-1 whatever the input and its gradients are rounding noise), else 2."""
    return 8 if "BNR" in spec.families else 2


def check_model(name: str, device=None, convert_kwargs=None, modes=("train", "eval"), batch=None) -> ModelResult:
    """Converted-vs-unconverted parity of reference model ``name`` at its small configuration:
    float64 (the converted model in float64 against the float64 model: the same function up to
    FP64_BOUND) and float32 (the 2x rule, against the larger of the unconverted float32 model's
    distance to float64 and its own movement when its input moves by one ulp). A float32 quantity
    the unconverted float32 model itself moves by ILL_CONDITIONED or more (deep networks with
    train-mode BatchNorm over a handful of values per channel, at the CPU-sized configurations) is
    reported (``ill_conditioned``), not failed: float32 cannot tell two correct kernels apart there,
    and the float64 parity is what shows the converted model computes the same function."""
    from reference import models

    from .convert import convert

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.time()
    try:
        spec = models.get(name)
        torch.manual_seed(0)
        model, x = models.create_small(name, batch=batch or default_batch(spec))
        _perturb_norms(model)
        model = model.to(device)
        x = _map_floats(x, lambda t: t.to(device))
        converted = convert(copy.deepcopy(model), **(convert_kwargs or {}))
        kernels = kernels_used(converted, device.type)
        oracle = copy.deepcopy(model).double()
        converted64 = convert(copy.deepcopy(model).double(), **(convert_kwargs or {}))
        worst32, worst64, n, fail32, fail64 = ("", 0.0, 1.0), ("", 0.0, 1.0), 0, [], []
        for mode in modes:
            train = mode == "train"
            xi = x
            if train and _needs_targets(model, x):
                xi = _train_input(name, spec, x)
            x64 = _map_floats(xi, lambda t: t.double())
            r32 = {"torch": _run(model, xi, train, 0), "cvk": _run(converted, xi, train, 0),
                   "oracle": _run(oracle, x64, train, 0), "perturbed": _run(model, _ulp_perturbed(xi), train, 0)}
            w, f, k = _compare(r32, mode, exact=False)
            fail32 += f
            worst32 = w if w[1] / w[2] > worst32[1] / worst32[2] else worst32
            r64 = {"cvk": _run(converted64, x64, train, 0), "oracle": r32["oracle"]}
            w, f, k64 = _compare(r64, mode, exact=True)
            fail64 += f
            worst64 = w if w[1] / w[2] > worst64[1] / worst64[2] else worst64
            n += k + k64
        # float32 misses on quantities float32 cannot resolve (the unconverted float32 model moves them
        # by >= ILL_CONDITIONED under one ulp, or is that far from float64): reported, not failures
        hard = [f for f in fail32 if f[3] < ILL_CONDITIONED]
        result = ModelResult(name, not fail64 and not hard, kernels, worst32, time.time() - start, quantities=n)
        result.worst64, result.ill_conditioned = worst64, len(fail32) - len(hard)
        return result
    except Exception as exc:  # noqa: BLE001  (a crash is a failure with its message)
        return ModelResult(name, False, {}, ("", float("nan"), 0.0), time.time() - start,
                           error=f"{type(exc).__name__}: {exc}")


def check_models(names=None, device=None, verbose=True) -> List[ModelResult]:
    import sys

    from reference import models
    names = list(names or models.list_models())
    results = []
    for i, name in enumerate(names):
        if verbose:
            print(f"\r[models {i + 1}/{len(names)}] {name}".ljust(60), end="", file=sys.stderr, flush=True)
        results.append(check_model(name, device))
    if verbose:
        print(file=sys.stderr)
    return results


def format_results(results: List[ModelResult]) -> str:
    lines = [f"{'model':<26} {'result':<10} {'s':>6}  {'fp32 worst: quantity err/bound':<46} {'fp64 err':>8}  kernels used"]
    lines.append("-" * 150)
    for r in results:
        if r.error:
            worst, e64 = r.error[:46], ""
        else:
            q, e, b = r.worst
            worst, e64 = f"{q[:28]} {e:.1e}/{b:.1e}", f"{r.worst64[1]:.1e}"
        verdict = "FAIL" if not r.ok else (f"PASS~{r.ill_conditioned}" if r.ill_conditioned else "PASS")
        lines.append(f"{r.name:<26} {verdict:<10} {r.seconds:>6.1f}  {worst:<46} {e64:>8}  {r.kernel_summary}")
    n_ok = sum(r.ok for r in results)
    lines.append(f"\n{n_ok} passed, {len(results) - n_ok} failed; "
                 f"{sum(1 for r in results if not r.kernels and not r.error)} models use no cvkernels kernel; "
                 f"PASS~k: float64 parity holds, k float32 quantities beyond the 2x rule are ill-conditioned "
                 f"(one ulp of input moves the unconverted float32 model by >= {ILL_CONDITIONED})")
    return "\n".join(lines)
