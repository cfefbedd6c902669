"""cvkernels: Triton and CUDA C++ kernels for the performance-critical operators of vision models.

Public API (drop-in signatures of the torch / torchvision operators they replace):

    cvkernels.batch_norm_relu(input, running_mean, running_var, weight, bias, training,
                              momentum, eps, residual=None)   fused BatchNorm(+add)+ReLU
    cvkernels.conv2d(input, weight, bias, stride, padding, dilation, groups)   depthwise /
                                      grouped / dilated conv on cvkernels kernels, else torch
    cvkernels.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    cvkernels.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                           enable_gqa)   flash attention with SDPA's signature
    cvkernels.flash_attn_func(q, k, v, dropout_p, softmax_scale, causal)   flash-attn's, (B, N, H, D)
    cvkernels.shifted_window_attention(qkv, relative_position_bias_table, num_heads, window_size,
                                       shift_size)   fused Swin (S)W-MSA on the (B, H, W, 3C) qkv map
    cvkernels.window_attention(qkv, relative_position_bias_table, num_heads, window_size, mask)
                                      timm's WindowAttention on (B*nW, N, 3C) windows
    cvkernels.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, *, pool_mode)
    cvkernels.roi_pool(input, boxes, output_size, spatial_scale)
    cvkernels.nms / batched_nms / box_iou (torchvision's signatures), nms_padded (sync-free)
    cvkernels.patch_torchvision()   route torchvision.ops RoI/NMS to cvkernels while active
    cvkernels.volume_render(sigmas, features, t_starts, t_ends, *, offsets / counts / ray_indices,
                            background, transmittance_threshold)   NeRF compositing, packed or dense
    cvkernels.positional_encoding / stratified_samples / sample_pdf   NeRF's encoding and samplers
    cvkernels.ddpm_step / ddim_step / euler_ancestral_step / dpmpp_step   fused sampler steps
    cvkernels.diffusion.{DDPM,DDIM,EulerAncestralDiscrete,DPMSolverMultistep}Scheduler
                                      diffusers-compatible schedulers on the fused step kernels
    cvkernels.nn.BatchNormReLU2d, cvkernels.nn.SyncBatchNormReLU, cvkernels.nn.Conv2d,
    cvkernels.nn.ConvTranspose2d, cvkernels.nn.MultiheadAttention, cvkernels.nn.WindowAttention,
    cvkernels.nn.RoIAlign, cvkernels.nn.RoIPool, cvkernels.nn.MultiScaleRoIAlign, cvkernels.nn.VolumeRenderer
    cvkernels.convert(model)          swap supported modules / patterns in an existing model
    cvkernels.has_ops()               whether the compiled C++/CUDA library is loaded
"""
from ._extension import has_cuda_ops, has_ops, load_error
from .ops.batch_norm import batch_norm_add_relu, batch_norm_relu
from .ops.conv import conv2d, conv_transpose2d
from .ops.attention import flash_attn_func, scaled_dot_product_attention
from .ops.window_attention import shifted_window_attention, window_attention
from .ops.roi import patch_torchvision, roi_align, roi_pool
from .ops.nms import batched_nms, box_iou, nms, nms_padded
from .ops.volume_render import (VolumeRenderOutput, positional_encoding, sample_pdf, stratified_samples,
                                volume_render)
from .ops.diffusion import ddim_step, ddpm_step, dpmpp_step, euler_ancestral_step
from . import diffusion  # noqa: E402
from . import nn  # noqa: E402
from .convert import convert  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "batch_norm_relu", "batch_norm_add_relu", "conv2d", "conv_transpose2d", "scaled_dot_product_attention", "flash_attn_func",
    "shifted_window_attention", "window_attention", "diffusion", "ddpm_step", "ddim_step",
    "euler_ancestral_step", "dpmpp_step", "roi_align", "roi_pool", "nms", "batched_nms", "nms_padded", "box_iou",
    "patch_torchvision", "volume_render", "VolumeRenderOutput", "positional_encoding", "stratified_samples",
    "sample_pdf", "convert", "has_ops", "has_cuda_ops", "load_error", "nn",
]
