"""Reference DDPM epsilon-prediction U-Net, its L_simple training loss and sampling loops.

Paper: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
arXiv:2006.11239, Appendix B: a PixelCNN++-style U-Net backbone (Wide ResNet residual blocks,
group normalization instead of weight normalization), two residual blocks per resolution,
self-attention at the 16x16 resolution, the diffusion time t given to every residual block as a
Transformer sinusoidal position embedding (through a two-layer MLP, added after the first
convolution), dropout; CIFAR-10 configuration ch=128, ch_mult (1, 2, 2, 2), 35.7M parameters.
L_simple (eq. 14): E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 with t
uniform in {1..T}. Sampling: Algorithm 2 (ancestral, T steps) and DDIM (Song et al. 2021) on a
sub-sequence of timesteps, both from reference.ops.diffusion in float64.

Layout (the authors' TensorFlow code, diffusion_tf/models/unet.py): conv_in 3x3 -> per level
num_res_blocks ResBlocks (+ attention where the resolution is in attn_resolutions) and a 3x3/2
downsampling conv except at the last level -> middle ResBlock, attention, ResBlock -> per level
(reversed) num_res_blocks + 1 ResBlocks on the concatenation with the stored skips (+ attention)
and a nearest 2x upsampling + 3x3 conv except at the last level -> GroupNorm, SiLU, conv_out 3x3.
``upsample="transposed"`` uses a 4x4/2 transposed convolution instead of nearest + conv.
Nothing here imports cvkernels, torchvision, timm or diffusers.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Figure, register

__all__ = ["timestep_embedding", "ResBlock", "AttnBlock", "DDPMUNet", "ddpm_unet", "l_simple",
           "ddpm_sample", "ddim_sample"]


def timestep_embedding(t, dim):
    """Sinusoidal embedding of the timesteps t (B,) -> (B, dim) (Vaswani et al.; the DDPM code's
    get_timestep_embedding: sin of the first half, cos of the second, frequencies 10000^(-i/(h-1)))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> + Linear(temb) -> GroupNorm -> SiLU -> dropout -> conv3x3, plus
    the (1x1-projected where channels change) input."""

    def __init__(self, cin, cout, temb_dim, groups=32, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with a GroupNorm in front, residual."""

    def __init__(self, ch, groups=32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(C), dim=-1)
        h = torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W)
        return x + self.proj(h)


class DDPMUNet(nn.Module):
    def __init__(self, in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                 resolution=32, dropout=0.1, groups=32, upsample="nearest", out_channels=None):
        super().__init__()
        self.ch = ch
        temb_dim = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        chans = [ch]
        cur, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(cur, ch * mult, temb_dim, groups, dropout)])
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cur, groups))
                self.down.append(blocks)
                chans.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                chans.append(cur)
                res //= 2
        self.mid1 = ResBlock(cur, cur, temb_dim, groups, dropout)
        self.mid_attn = AttnBlock(cur, groups)
        self.mid2 = ResBlock(cur, cur, temb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(cur + chans.pop(), ch * mult, temb_dim, groups, dropout)])
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cur, groups))
                self.up.append(blocks)
            if level != 0:
                if upsample == "transposed":
                    self.up.append(nn.ModuleList([nn.ConvTranspose2d(cur, cur, 4, stride=2, padding=1)]))
                else:
                    self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                                  nn.Conv2d(cur, cur, 3, padding=1)]))
                res *= 2
        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = nn.Conv2d(cur, out_channels or in_channels, 3, padding=1)

    @staticmethod
    def _run(blocks, h, temb):
        for m in blocks:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
        return h

    def forward(self, x, t):
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((x.shape[0],), int(t), device=x.device)
        temb = self.temb(timestep_embedding(t, self.ch).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, temb)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(blocks, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def ddpm_unet(**kwargs):
    """DDPM's CIFAR-10 eps-U-Net (35.7M parameters at the defaults)."""
    return DDPMUNet(**kwargs)


def l_simple(model, x0, alphas_cumprod, t=None, noise=None):
    """Ho et al. eq. 14; t uniform over the training timesteps unless given."""
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, len(alphas_cumprod), (B,), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    a = alphas_cumprod.to(x0.device, x0.dtype)[t].reshape(B, *([1] * (x0.dim() - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return F.mse_loss(model(x_t, t), noise)


def ddpm_sample(model, x_T, alphas_cumprod, timesteps, noises, **step_kwargs):
    """Algorithm 2 on `timesteps` (descending), float64 steps; noises[i] is the z of step i."""
    from reference.ops import diffusion as ref
    x = x_T.double()
    acp = alphas_cumprod.double()
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = model(x.to(x_T.dtype), t).double()
        x, _ = ref.ddpm_step(eps, x, acp[t], acp[prev] if prev >= 0 else 1.0, noises[i], add_noise=t > 0,
                             **step_kwargs)
    return x


def ddim_sample(model, x_T, alphas_cumprod, timesteps, final_alpha=1.0, eta=0.0, noises=None, **step_kwargs):
    """DDIM (Song et al. eq. 12) on `timesteps` (descending, uniformly spaced as diffusers' DDIM:
    the previous timestep is t - T // n), float64 steps."""
    from reference.ops import diffusion as ref
    x = x_T.double()
    acp = alphas_cumprod.double()
    ts = [int(t) for t in timesteps]
    ratio = len(acp) // len(ts)
    for i, t in enumerate(ts):
        prev = t - ratio
        eps = model(x.to(x_T.dtype), t).double()
        x, _ = ref.ddim_step(eps, x, acp[t], acp[prev] if prev >= 0 else final_alpha,
                             None if noises is None else noises[i], eta=eta, **step_kwargs)
    return x


def _input(batch, config):
    r = config.get("resolution", 32)
    return torch.randn(batch, config.get("in_channels", 3), r, r), torch.randint(0, 1000, (batch,))


register(
    "ddpm_unet", ddpm_unet,
    small_config=dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32, dropout=0.0,
                      groups=8),
    example_input=_input,
    families=("DS",),
    figures={
        "params": Figure(35.7e6, "paper: Ho et al. 2020, Appendix B (CIFAR-10 model: 35.7 million parameters)", 0.01,
                         config=dict(), note="ch=128, ch_mult (1,2,2,2), 2 res blocks, attention at 16x16"),
    },
)
