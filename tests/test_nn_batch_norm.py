"""BatchNormReLU modules, convert(), and SyncBatchNormReLU against their torch counterparts."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import cvkernels
from cvkernels.nn import BatchNormReLU, BatchNormReLU1d, BatchNormReLU2d, SyncBatchNormReLU
from helpers import leaf, make_input
from reference.ops import batch_norm as ref
from tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton"  # the kernel under test; runs interpreted on CPU


class EagerBNReLU(nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x, residual=None):
        y = self.bn(x)
        return torch.relu(y if residual is None else y + residual)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_module_matches_batchnorm2d_over_steps(momentum, track_running_stats, affine):
    kw = dict(momentum=momentum, track_running_stats=track_running_stats, affine=affine)
    ours = BatchNormReLU2d(5, backend=BACKEND, **kw).to(DEVICE)
    theirs = EagerBNReLU(nn.BatchNorm2d(5, **kw).to(DEVICE))
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.normal_()
    theirs.bn.load_state_dict(ours.state_dict())
    for step in range(3):
        x = make_input((3, 5, 4, 3), torch.float32, DEVICE, requires_grad=True, shift=step)
        xr = leaf(x)
        y, yr = ours(x), theirs(xr)
        assert_close(y, yr, torch.float32)
        g = torch.randn_like(y)
        y.backward(g)
        yr.backward(g)
        assert_close(x.grad, xr.grad, torch.float32, atol=1e-4)
        if affine:
            assert_close(ours.weight.grad, theirs.bn.weight.grad, torch.float32, atol=1e-4)
            assert_close(ours.bias.grad, theirs.bn.bias.grad, torch.float32, atol=1e-4)
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), theirs.bn.state_dict().items()):
        assert k == k2
        assert_close(v.double(), v2.double(), torch.float32)
    ours.eval(), theirs.eval()
    x = make_input((2, 5, 3, 3), torch.float32, DEVICE)
    assert_close(ours(x), theirs(x), torch.float32)


def test_state_dict_interchange_and_modules():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.normal_()
    m = BatchNormReLU2d(4)
    m.load_state_dict(bn.state_dict())
    assert set(m.state_dict()) == set(bn.state_dict())
    bn2 = nn.BatchNorm2d(4)
    bn2.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="expected 4-D input"):
        m(torch.randn(2, 4))
    with pytest.raises(ValueError, match="expected 2-D or 3-D input"):
        BatchNormReLU1d(4)(torch.randn(2, 4, 3, 3))
    # the generic module takes any rank >= 2
    y = BatchNormReLU(4, backend="torch")(torch.randn(3, 4))
    assert y.shape == (3, 4) and (y >= 0).all()


def test_from_batch_norm_shares_parameters():
    bn = nn.BatchNorm2d(4).eval()
    fused = BatchNormReLU2d.from_batch_norm(bn)
    assert fused.weight is bn.weight and fused.running_var is bn.running_var
    assert not fused.training
    assert fused.momentum == bn.momentum and fused.eps == bn.eps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_half_precision(dtype):
    """model.half(): parameters, buffers and input all in low precision."""
    m = BatchNormReLU2d(3, backend=BACKEND).to(DEVICE, dtype)
    x = make_input((4, 3, 5, 5), dtype, DEVICE, "channels_last")
    y = m(x)
    assert y.dtype == dtype and m.running_var.dtype == dtype
    expected = ref.batch_norm_relu(x.double(), None, None, m.weight.double(), m.bias.double(), True)
    assert_close(y, expected, dtype)


# ----------------------------------------------------------------------------- convert


class Block(nn.Module):
    """A residual block written as users write them: separate BN and ReLU modules, `+=`."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Untraceable(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.inner = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this forward
            x = x * 2
        return torch.relu(self.bn(self.inner(x)))


class Unsafe(nn.Module):
    """BN outputs that are also used elsewhere must not be fused."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.bn_shared = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.bn(x)
        z = torch.relu(y) + y  # y used twice
        w = torch.relu(self.bn_shared(z))
        return w + self.bn_shared(x)  # bn_shared called twice


def _parity(model, x, train):
    torch.manual_seed(0)
    ref_model = model
    import copy
    converted = cvkernels.convert(copy.deepcopy(model), backend=BACKEND)
    ref_model.train(train), converted.train(train)
    xr, xc = leaf(x), leaf(x)
    yr, yc = ref_model(xr), converted(xc)
    assert_close(yc, yr, torch.float32, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yr)
    yr.backward(g)
    yc.backward(g)
    assert_close(xc.grad, xr.grad, torch.float32, atol=1e-4, rtol=1e-4)
    for (n, p), (n2, p2) in zip(ref_model.named_parameters(), converted.named_parameters()):
        assert n == n2
        assert_close(p2.grad, p.grad, torch.float32, atol=1e-4, rtol=1e-4)
    assert list(ref_model.state_dict()) == list(converted.state_dict())
    for (k, v), (k2, v2) in zip(ref_model.state_dict().items(), converted.state_dict().items()):
        assert_close(v2.double(), v.double(), torch.float32, atol=1e-5)
    return converted


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("train", [True, False])
def test_convert_fuses_block_patterns(train):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), Block(4), Block(4)).to(DEVICE)
    x = make_input((2, 3, 8, 8), torch.float32, DEVICE)
    converted = _parity(model, x, train)
    assert _count(converted, BatchNormReLU) == 5  # stem + 2 per block (bn1->relu, bn2->add->relu)
    assert _count(converted, nn.BatchNorm2d) == 0


def test_convert_leaves_what_it_cannot_fuse_correct():
    model = nn.Sequential(Untraceable(3), Unsafe(3)).to(DEVICE)
    x = make_input((2, 3, 5, 5), torch.float32, DEVICE, shift=1.0)
    converted = _parity(model, x, True)
    # the Sequential inside Untraceable is fused; its own BN (in untraceable code) and Unsafe are not
    assert _count(converted, BatchNormReLU) == 1
    assert type(converted[1].bn) is nn.BatchNorm2d and type(converted[1].bn_shared) is nn.BatchNorm2d


def test_convert_keeps_optimizer_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    params = list(model.parameters())
    converted = cvkernels.convert(model)
    assert [id(p) for p in converted.parameters()] == [id(p) for p in params]
    with pytest.raises(TypeError, match="must be an nn.Module"):
        cvkernels.convert(lambda x: x)


# ----------------------------------------------------------------------------- distributed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank, world, port, x_all, r_all, g_all, state, results):
    import torch.distributed as dist
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = SyncBatchNormReLU(x_all.shape[1])
        m.load_state_dict(state)
        m = cvkernels.convert(m)
        x = x_all.chunk(world)[rank].clone().requires_grad_()
        r = r_all.chunk(world)[rank].clone().requires_grad_()
        y = m(x, r)
        y.backward(g_all.chunk(world)[rank])
        results[rank] = dict(y=y.detach(), dx=x.grad, dr=r.grad, dw=m.weight.grad, db=m.bias.grad,
                             rm=m.running_mean.clone(), rv=m.running_var.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sync_batch_norm_relu_gloo_two_processes():
    world, C = 2, 3
    x_all = torch.randn(4, C, 3, 5) * 2 + 1
    r_all = torch.randn(4, C, 3, 5)
    g_all = torch.randn(4, C, 3, 5)
    state = SyncBatchNormReLU(C).state_dict()
    state["weight"].uniform_(0.5, 1.5)
    state["bias"].normal_()
    results = mp.Manager().dict()
    mp.spawn(_sync_worker, args=(world, _free_port(), x_all, r_all, g_all, state, results), nprocs=world)
    # oracle: one process normalizing the whole global batch in float64
    x, r = x_all.double().requires_grad_(), r_all.double().requires_grad_()
    w = state["weight"].double().requires_grad_()
    b = state["bias"].double().requires_grad_()
    rm, rv = state["running_mean"].double(), state["running_var"].double()
    y = ref.batch_norm_relu(x, rm, rv, w, b, True, 0.1, 1e-5, residual=r)
    y.backward(g_all.double())
    for rank in range(world):
        out = results[rank]
        assert_close(out["y"], y.chunk(world)[rank], torch.float32)
        assert_close(out["dx"], x.grad.chunk(world)[rank], torch.float32, atol=1e-4)
        assert_close(out["dr"], r.grad.chunk(world)[rank], torch.float32)
        assert_close(out["rm"], rm, torch.float32)
        assert_close(out["rv"], rv, torch.float32)
    # parameter gradients stay local (DDP averages them): their sum over ranks is the global one
    assert_close(results[0]["dw"] + results[1]["dw"], w.grad, torch.float32, atol=1e-4)
    assert_close(results[0]["db"] + results[1]["db"], b.grad, torch.float32, atol=1e-4)


def test_convert_keeps_class_and_survives_copy_and_pickle():
    import copy
    import pickle
    model = nn.Sequential(Block(3), Block(3)).to(DEVICE)
    x = make_input((2, 3, 5, 5), torch.float32, DEVICE)
    expected = model(x)
    converted = cvkernels.convert(model, backend=BACKEND)
    assert isinstance(converted[0], Block) and type(converted[0]).__name__ == "Block"
    assert isinstance(converted[0].bn2, BatchNormReLU)
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        assert isinstance(clone[1].bn2, BatchNormReLU) and clone[1].bn2.weight is not converted[1].bn2.weight
        assert_close(clone(x), expected, torch.float32)
    assert_close(converted(x), expected, torch.float32)


def test_convert_maps_sync_batch_norm():
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.ReLU())
    converted = cvkernels.convert(model)
    assert type(converted[0]) is SyncBatchNormReLU and type(converted[1]) is nn.Identity
    assert type(converted[0].to_batch_norm()) is nn.SyncBatchNorm
