"""The reference NeRF converted with cvkernels.convert (its VolumeRenderer modules composite on the
volume-rendering kernel): one full training step (coarse + fine sampling, rendering, photometric
loss, backward) gives the reference's loss and gradients, and a short training run on the
synthetic sphere scene drives the loss down."""
import copy

import pytest
import torch

import cvkernels
from cvkernels import _extension
from reference import models, nerf_scene
from reference.models import nerf

pytestmark = pytest.mark.skipif(not _extension.has_op("volume_render_forward"),
                                reason=f"cvkernels volume-render ops not built: {_extension.load_error()}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def scene():
    return nerf_scene.make_dataset(2, 12, 12, seed=0)


def _step(model, data, idx, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    out = model(data["rays_o"][idx].to(DEVICE), data["rays_d"][idx].to(DEVICE), data["near"], data["far"],
                generator=gen)
    loss = nerf.photometric_loss(out, data["target_rgb"][idx].to(DEVICE))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.detach(), out, grads


@pytest.mark.parametrize("perturb", [False, True])
def test_converted_training_step_matches_reference(scene, perturb):
    torch.manual_seed(0)
    model = models.create("nerf", **{**models.get("nerf").small_config, "perturb": perturb}).to(DEVICE).train()
    converted = cvkernels.convert(copy.deepcopy(model))
    routed = [n for n, m in converted.named_modules() if m.__dict__.get("_cvkernels_kernel") == "volume_render"]
    assert routed == ["renderer_coarse", "renderer_fine"], routed
    assert type(converted.renderer_fine).__name__ == "VolumeRenderer"
    idx = torch.arange(0, 96)
    loss_ref, out_ref, g_ref = _step(model, scene, idx, seed=3)
    loss_cvk, out_cvk, g_cvk = _step(converted, scene, idx, seed=3)
    torch.testing.assert_close(loss_cvk, loss_ref, rtol=1e-5, atol=1e-7)
    for key in ("rgb_coarse", "rgb_fine", "opacity_fine"):
        torch.testing.assert_close(out_cvk[key], out_ref[key], rtol=1e-5, atol=1e-6)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_cvk[name], g, rtol=1e-3, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_converted_model_deepcopies_and_pickles():
    import pickle
    model = cvkernels.convert(models.create("nerf", **models.get("nerf").small_config))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.renderer_coarse.__dict__.get("_cvkernels_kernel") == "volume_render"
        rays = models.example_input("nerf", batch=8)
        torch.testing.assert_close(clone(rays)["rgb_fine"], model(rays)["rgb_fine"])


def test_converted_nerf_learns_the_synthetic_scene():
    data = nerf_scene.make_dataset(4, 16, 16, seed=0)
    torch.manual_seed(0)
    model = models.create("nerf", **{**models.get("nerf").small_config, "perturb": True})
    model = cvkernels.convert(model)
    losses = nerf_scene.train(model, data)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
