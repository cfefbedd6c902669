"""A synthetic NeRF scene with an analytic radiance field: coloured soft spheres, pinhole cameras,
a dense float64 ground-truth rendering and a seeded multi-view dataset of rays and target pixels.

Used to train the reference NeRF (reference/models/nerf.py) for a few steps in tests, and as an
end-to-end workload for the volume-rendering kernels. It lives outside ``reference/models/``
because the model registry imports every module there.

Camera convention as NeRF's official code (github.com/bmild/nerf ``get_rays``, the Blender
scenes): camera-to-world matrices c2w [3 or 4, 4], the camera looks along its -z axis with +y up,
ray directions (x / f, -y / f, -1) rotated by c2w (not normalized: their z component in the
camera frame is -1), origins at c2w[:3, 3]. One difference, stated: rays go through pixel
centres (i + 0.5, j + 0.5), the official code uses the pixel corners (i, j).

Ground truth: the volume-rendering integral of the analytic field by the midpoint rule on
``n_samples`` equal intervals of [near, far] (distances in world units, z |d|), in float64,
through reference.models.nerf.VolumeRenderer (checked against the plain-loop oracle of
reference/ops/volume_render.py). Nothing here imports cvkernels.
"""
import math

import torch
import torch.nn.functional as F

from reference.models.nerf import VolumeRenderer

__all__ = ["SphereScene", "train", "camera_rays", "look_at", "render_ground_truth", "make_dataset"]


class SphereScene:
    """Soft spheres: sigma(x) = sum_k sigma_max sigmoid((r_k - |x - c_k|) / softness), and the colour
    at x the sigma-weighted mean of the sphere colours.

    centers [K, 3], radii [K], colors [K, 3] in [0, 1] (sequences or tensors); defaults: three
    spheres (red, green, blue) inside the unit-ish ball around the origin.
    """

    def __init__(self, centers=((0.0, 0.0, 0.0), (0.9, 0.3, 0.2), (-0.6, -0.5, 0.5)), radii=(0.7, 0.4, 0.45),
                 colors=((0.9, 0.2, 0.1), (0.1, 0.8, 0.2), (0.2, 0.3, 0.9)), sigma_max=40.0, softness=0.05):
        f64 = torch.float64
        self.centers = torch.as_tensor(centers, dtype=f64).reshape(-1, 3)
        self.radii = torch.as_tensor(radii, dtype=f64).reshape(-1)
        self.colors = torch.as_tensor(colors, dtype=f64).reshape(-1, 3)
        if not len(self.centers) == len(self.radii) == len(self.colors):
            raise ValueError("centers, radii and colors must describe the same number of spheres")
        self.sigma_max, self.softness = float(sigma_max), float(softness)

    def field(self, points):
        """points [..., 3] -> sigma [...], rgb [..., 3] (in the dtype of points)."""
        centers, radii, colors = (t.to(points) for t in (self.centers, self.radii, self.colors))
        dist = (points[..., None, :] - centers).norm(dim=-1)                      # [..., K]
        per_sphere = self.sigma_max * torch.sigmoid((radii - dist) / self.softness)
        sigma = per_sphere.sum(-1)
        rgb = (per_sphere[..., None] * colors).sum(-2) / sigma.clamp_min(1e-300)[..., None]
        return sigma, rgb


def look_at(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """Camera-to-world [4, 4] float64 of a camera at ``position`` looking at ``target`` (-z forward, +y up)."""
    f64 = torch.float64
    position, target, up = (torch.as_tensor(v, dtype=f64) for v in (position, target, up))
    forward = F.normalize(target - position, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    true_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=f64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, position
    return c2w


def camera_rays(height, width, focal, c2w):
    """Pinhole rays through the pixel centres -> rays_o, rays_d [height * width, 3] (row-major pixels,
    index j * width + i for row j, column i), in the dtype of c2w [3 or 4, 4]; rays_d unnormalized."""
    c2w = torch.as_tensor(c2w)
    j, i = torch.meshgrid(torch.arange(height, dtype=c2w.dtype) + 0.5, torch.arange(width, dtype=c2w.dtype) + 0.5,
                          indexing="ij")
    dirs = torch.stack([(i - 0.5 * width) / focal, -(j - 0.5 * height) / focal, -torch.ones_like(i)], -1)
    rays_d = (dirs.reshape(-1, 1, 3) * c2w[:3, :3]).sum(-1)
    rays_o = c2w[:3, 3].expand(rays_d.shape)
    return rays_o, rays_d


def render_ground_truth(scene, rays_o, rays_d, near, far, n_samples=512, background=None):
    """Dense float64 rendering of ``scene`` along rays_o, rays_d [R, 3] between near and far (floats or [R]).

    Returns dict(color [R, 3], opacity [R], depth [R]) in float64 (depth in world distance).
    """
    f64 = torch.float64
    rays_o, rays_d = rays_o.to(f64), rays_d.to(f64)
    n = rays_o.shape[0]
    near = torch.as_tensor(near, dtype=f64).expand(n)
    far = torch.as_tensor(far, dtype=f64).expand(n)
    s = torch.linspace(0.0, 1.0, n_samples + 1, dtype=f64)
    edges = near[:, None] * (1.0 - s) + far[:, None] * s                        # [R, n_samples + 1]
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    sigma, rgb = scene.field(rays_o[:, None, :] + rays_d[:, None, :] * mids[..., None])
    scale = rays_d.norm(dim=-1, keepdim=True)
    color, opacity, depth, _ = VolumeRenderer(background)(sigma, rgb, edges[:, :-1] * scale, edges[:, 1:] * scale)
    return dict(color=color, opacity=opacity, depth=depth)


def make_dataset(n_views, height, width, seed, scene=None, radius=4.0, near=2.0, far=6.0, n_samples=512,
                 background=None, dtype=torch.float32):
    """n_views cameras on a sphere of ``radius`` looking at the origin (azimuth uniform, elevation in
    [-0.3, 0.9] rad, drawn from ``torch.Generator().manual_seed(seed)``), focal 1.1 width (about 49 deg).

    Returns dict(rays_o, rays_d, target_rgb [V * H * W, 3] in ``dtype``, near, far (floats), c2w
    [V, 4, 4] float64, focal, height, width); view v owns rays v*H*W .. (v+1)*H*W - 1. Deterministic
    under ``seed`` (and does not touch the global RNG).
    """
    scene = SphereScene() if scene is None else scene
    gen = torch.Generator().manual_seed(seed)
    draws = torch.rand(n_views, 2, generator=gen, dtype=torch.float64)
    focal = 1.1 * width
    poses, origins, directions = [], [], []
    for azimuth, elevation in zip((draws[:, 0] * 2 * math.pi).tolist(), (draws[:, 1] * 1.2 - 0.3).tolist()):
        position = (radius * math.cos(elevation) * math.cos(azimuth), radius * math.cos(elevation) * math.sin(azimuth),
                    radius * math.sin(elevation))
        c2w = look_at(position)
        o, d = camera_rays(height, width, focal, c2w)
        poses.append(c2w)
        origins.append(o)
        directions.append(d)
    rays_o, rays_d = torch.cat(origins), torch.cat(directions)
    target = render_ground_truth(scene, rays_o, rays_d, near, far, n_samples, background)["color"]
    return dict(rays_o=rays_o.to(dtype), rays_d=rays_d.to(dtype), target_rgb=target.to(dtype), near=float(near),
                far=float(far), c2w=torch.stack(poses), focal=focal, height=height, width=width)


def train(model, data, steps=60, rays=256, lr=5e-3, seed=1):
    """A short NeRF training run: ``steps`` Adam steps on random batches of ``rays`` rays of a
    make_dataset() dict, photometric loss (reference.models.nerf); returns the losses. Runs on one
    thread (tiny ops: more threads only add contention on a small machine) and restores the count."""
    from .models.nerf import photometric_loss
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            idx = torch.randint(0, data["rays_o"].shape[0], (rays,), generator=gen)
            out = model(data["rays_o"][idx], data["rays_d"][idx], data["near"], data["far"], generator=gen)
            loss = photometric_loss(out, data["target_rgb"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return losses
