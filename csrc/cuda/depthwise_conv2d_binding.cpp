// Depthwise conv2d on CUDA: cvkernels::depthwise_conv2d_forward / _backward_input / _backward_weight
// (schemas in csrc/cvkernels.cpp; kernels and their launchers in csrc/cuda/depthwise_conv2d.cu,
// contract in csrc/include/cvk_depthwise_conv2d.h).
//
// This side checks the arguments (errors name the operator and the argument), picks the layout
// (the input's suggested memory format: channels_last stays channels_last, anything else runs as
// contiguous NCHW), makes every tensor dense in that layout, allocates the output in it, prepares
// the float32 weight buffer the kernels read, and launches on the current stream of the input's
// device. Empty problems return without launching.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "cvk_checks.h"
#include "cvk_depthwise_conv2d.h"

namespace cvk {
namespace {

using at::Tensor;

// The kernels' dtype (the callers have checked that t is one of the three).
dwconv::DType kernel_dtype(at::ScalarType t) {
  if (t == at::kHalf) return dwconv::DType::kFloat16;
  if (t == at::kBFloat16) return dwconv::DType::kBFloat16;
  TORCH_CHECK(t == at::kFloat, "depthwise_conv2d: unsupported dtype ", dtype_name(t));
  return dwconv::DType::kFloat32;
}

// A CUDA tensor of rank `dim` in float32, float16 or bfloat16.
void check_cuda_tensor(const char* op, const char* name, const Tensor& t, int64_t dim) {
  CVK_CHECK(t.defined(), op, name, " must be a tensor, got None");
  CVK_CHECK(t.is_cuda(), op, name, " must be a CUDA tensor, got one on ", t.device());
  const auto st = t.scalar_type();
  CVK_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op, name,
            " must be float32, float16 or bfloat16, got ", dtype_name(st));
  CVK_CHECK(t.dim() == dim, op, name, " must be ", dim, "-D, got shape ", t.sizes());
}

void check_like(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  CVK_CHECK(t.device() == ref.device(), op, name, " is on ", t.device(), " but ", ref_name, " is on ",
            ref.device());
  CVK_CHECK(t.scalar_type() == ref.scalar_type(), op, name, " must have ", ref_name, "'s dtype ",
            dtype_name(ref.scalar_type()), ", got ", dtype_name(t.scalar_type()));
}

// stride, padding, dilation: two values each, stride/dilation >= 1, padding >= 0.
void fill_conv_params(const char* op, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      dwconv::Geometry& g) {
  CVK_CHECK(stride.size() == 2, op, "stride must have 2 values, got ", stride);
  CVK_CHECK(padding.size() == 2, op, "padding must have 2 values, got ", padding);
  CVK_CHECK(dilation.size() == 2, op, "dilation must have 2 values, got ", dilation);
  CVK_CHECK(stride[0] >= 1 && stride[1] >= 1, op, "stride must be positive, got ", stride);
  CVK_CHECK(padding[0] >= 0 && padding[1] >= 0, op, "padding must be non-negative, got ", padding);
  CVK_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, "dilation must be positive, got ", dilation);
  g.SH = stride[0];
  g.SW = stride[1];
  g.PH = padding[0];
  g.PW = padding[1];
  g.DH = dilation[0];
  g.DW = dilation[1];
}

// Sizes: input (N, C_in, H, W), weight (C_out, 1, KH, KW) with C_out a positive multiple of C_in.
void fill_sizes(const char* op, const char* input_name, at::IntArrayRef input_size, const char* weight_name,
                at::IntArrayRef weight_size, dwconv::Geometry& g) {
  CVK_CHECK(input_size[1] >= 1 && input_size[2] >= 1 && input_size[3] >= 1, op, input_name,
            " must have positive channels, height and width, got shape ", input_size);
  CVK_CHECK(input_size[0] >= 0, op, input_name, " has a negative batch size: ", input_size);
  CVK_CHECK(weight_size[1] == 1, op, weight_name, " must have shape (C_out, 1, KH, KW) for a depthwise convolution, got ",
            weight_size);
  CVK_CHECK(weight_size[2] >= 1 && weight_size[3] >= 1, op, weight_name, " must have a positive kernel size, got shape ",
            weight_size);
  CVK_CHECK(weight_size[0] >= 1 && weight_size[0] % input_size[1] == 0, op, weight_name,
            ".size(0) (output channels) must be a positive multiple of the ", input_name, "'s ", input_size[1],
            " channels, got ", weight_size[0]);
  g.N = input_size[0];
  g.C_in = input_size[1];
  g.M = weight_size[0] / input_size[1];
  g.H = input_size[2];
  g.W = input_size[3];
  g.KH = weight_size[2];
  g.KW = weight_size[3];
  g.OH = dwconv::conv_output_size(g.H, g.KH, g.SH, g.PH, g.DH);
  g.OW = dwconv::conv_output_size(g.W, g.KW, g.SW, g.PW, g.DW);
  CVK_CHECK(g.OH >= 1 && g.OW >= 1, op, "the padded ", input_name, " (", g.H, " + 2*", g.PH, ", ", g.W, " + 2*", g.PW,
            ") is smaller than the dilated kernel (", g.DH * (g.KH - 1) + 1, ", ", g.DW * (g.KW - 1) + 1, ")");
}

void check_geometry(const char* op, const dwconv::Geometry& g) {
  CVK_CHECK(dwconv::geometry_ok(g), op, "sizes out of the kernels' range (each size, channel count, padded extent "
            "and per-image output must fit 32-bit indices): input (", g.N, ", ", g.C_in, ", ", g.H, ", ", g.W,
            "), kernel (", g.KH, ", ", g.KW, ")");
}

// The layout every tensor of the call runs in: channels_last when `t` suggests it, else NCHW.
at::MemoryFormat layout_of(const Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous;
}

// The float32 weight buffer: [KH][KW][C_out] for channels_last, [C_out][KH][KW] otherwise.
Tensor weight_buffer(const Tensor& weight, bool channels_last) {
  const int64_t C_out = weight.size(0), taps = weight.size(2) * weight.size(3);
  Tensor w = weight.to(at::kFloat).contiguous().view({C_out, taps});
  return channels_last ? w.t().contiguous() : w;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

Tensor dw_forward_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias_opt,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t activation) {
  constexpr const char* op = "depthwise_conv2d_forward";
  check_cuda_tensor(op, "input", input, 4);
  check_cuda_tensor(op, "weight", weight, 4);
  check_like(op, "weight", weight, "input", input);
  CVK_CHECK(activation >= 0 && activation <= 3, op,
            "activation must be 0 (none), 1 (relu), 2 (relu6) or 3 (silu), got ", activation);
  dwconv::Geometry g;
  fill_conv_params(op, stride, padding, dilation, g);
  fill_sizes(op, "input", input.sizes(), "weight", weight.sizes(), g);
  Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias = *bias_opt;
    check_like(op, "bias", bias, "input", input);
    CVK_CHECK(bias.dim() == 1 && bias.size(0) == g.C_out(), op, "bias must have shape (", g.C_out(),
              ",) (one value per output channel), got ", bias.sizes());
  }
  check_geometry(op, g);

  c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = layout_of(input);
  g.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  Tensor output = at::empty({g.N, g.C_out(), g.OH, g.OW}, input.options().memory_format(fmt));
  if (output.numel() == 0) return output;

  const Tensor x = input.contiguous(fmt);
  const Tensor w = weight_buffer(weight, g.channels_last);
  const Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : Tensor();
  C10_CUDA_CHECK(dwconv::forward(kernel_dtype(input.scalar_type()), g, x.const_data_ptr(), w.const_data_ptr<float>(),
                                 b.defined() ? b.const_data_ptr<float>() : nullptr, static_cast<int>(activation),
                                 output.mutable_data_ptr(), current_stream()));
  return output;
}

Tensor dw_backward_input_cuda(const Tensor& grad_output, const Tensor& weight, at::IntArrayRef input_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "depthwise_conv2d_backward_input";
  check_cuda_tensor(op, "grad_output", grad_output, 4);
  check_cuda_tensor(op, "weight", weight, 4);
  check_like(op, "weight", weight, "grad_output", grad_output);
  CVK_CHECK(input_size.size() == 4, op, "input_size must have 4 values (N, C_in, H, W), got ", input_size);
  dwconv::Geometry g;
  fill_conv_params(op, stride, padding, dilation, g);
  fill_sizes(op, "input_size", input_size, "weight", weight.sizes(), g);
  const std::vector<int64_t> expected{g.N, g.C_out(), g.OH, g.OW};
  CVK_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, "grad_output must have shape ",
            at::IntArrayRef(expected), " (the convolution's output for input_size ", input_size, "), got ",
            grad_output.sizes());
  check_geometry(op, g);

  c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat fmt = layout_of(grad_output);
  g.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (grad_input.numel() == 0) return grad_input;

  const Tensor gy = grad_output.contiguous(fmt);
  const Tensor w = weight_buffer(weight, g.channels_last);
  C10_CUDA_CHECK(dwconv::backward_input(kernel_dtype(grad_output.scalar_type()), g, gy.const_data_ptr(),
                                        w.const_data_ptr<float>(), grad_input.mutable_data_ptr(), current_stream()));
  return grad_input;
}

Tensor dw_backward_weight_cuda(const Tensor& grad_output, const Tensor& input, at::IntArrayRef weight_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "depthwise_conv2d_backward_weight";
  check_cuda_tensor(op, "grad_output", grad_output, 4);
  check_cuda_tensor(op, "input", input, 4);
  check_like(op, "grad_output", grad_output, "input", input);
  CVK_CHECK(weight_size.size() == 4, op, "weight_size must have 4 values (C_out, 1, KH, KW), got ", weight_size);
  dwconv::Geometry g;
  fill_conv_params(op, stride, padding, dilation, g);
  fill_sizes(op, "input", input.sizes(), "weight_size", weight_size, g);
  const std::vector<int64_t> expected{g.N, g.C_out(), g.OH, g.OW};
  CVK_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, "grad_output must have shape ",
            at::IntArrayRef(expected), " (the convolution's output for input ", input.sizes(), "), got ",
            grad_output.sizes());
  check_geometry(op, g);

  c10::cuda::CUDAGuard guard(input.device());
  Tensor grad_weight = at::empty(weight_size, input.options());
  if (g.N == 0) return grad_weight.zero_();

  const at::MemoryFormat fmt = layout_of(input);
  g.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const Tensor x = input.contiguous(fmt);
  const Tensor gy = grad_output.contiguous(fmt);
  int device = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t splits = dwconv::backward_weight_splits(g, num_sms);
  const size_t bytes = dwconv::backward_weight_workspace_bytes(g, splits);
  Tensor workspace = at::empty({static_cast<int64_t>(bytes / sizeof(float))}, input.options().dtype(at::kFloat));
  C10_CUDA_CHECK(dwconv::backward_weight(kernel_dtype(input.scalar_type()), g, gy.const_data_ptr(), x.const_data_ptr(),
                                         splits, workspace.mutable_data_ptr<float>(), grad_weight.mutable_data_ptr(),
                                         current_stream()));
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CUDA, m) {
  m.impl("depthwise_conv2d_forward", TORCH_FN(dw_forward_cuda));
  m.impl("depthwise_conv2d_backward_input", TORCH_FN(dw_backward_input_cuda));
  m.impl("depthwise_conv2d_backward_weight", TORCH_FN(dw_backward_weight_cuda));
}

}  // namespace cvk
