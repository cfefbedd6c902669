// Shared helpers for the cvkernels C++ operators: argument checks whose messages name the
// operator and the argument, ceil_div, and the (N, C, S) view used by per-channel operators.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>

// CVK_CHECK*(cond, op, message parts...) -> "<op>: <message>".
// CVK_CHECK raises RuntimeError, CVK_CHECK_VALUE ValueError, CVK_CHECK_TYPE TypeError.
#define CVK_CHECK(cond, op, ...) TORCH_CHECK((cond), op, ": ", __VA_ARGS__)
#define CVK_CHECK_VALUE(cond, op, ...) TORCH_CHECK_VALUE((cond), op, ": ", __VA_ARGS__)
#define CVK_CHECK_TYPE(cond, op, ...) TORCH_CHECK_TYPE((cond), op, ": ", __VA_ARGS__)

namespace cvk {

template <typename T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

// The kernels' floating dtypes: float32, float64, float16, bfloat16.
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_kernel_float(const char* op, const char* name, const at::Tensor& t) {
  CVK_CHECK_TYPE(is_kernel_float(t.scalar_type()), op, name,
                 " must be float32, float64, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  CVK_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, name, " must have ", ref_name, "'s dtype ",
                 dtype_name(ref.scalar_type()), ", got ", dtype_name(t.scalar_type()));
}

inline void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  CVK_CHECK_VALUE(t.device().is_cpu(), op, name, " must be a CPU tensor, got one on ", t.device());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  CVK_CHECK_VALUE(t.device() == ref.device(), op, name, " is on ", t.device(), " but ", ref_name, " is on ",
                  ref.device());
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  CVK_CHECK_VALUE(t.sizes() == ref.sizes(), op, name, " must have ", ref_name, "'s shape ", ref.sizes(),
                  ", got ", t.sizes());
}

// A 1-D tensor with one value per channel (C = dim 1 of `ref`), on ref's device, floating point.
inline void check_per_channel(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  const int64_t C = ref.size(1);
  CVK_CHECK_VALUE(t.dim() == 1, op, name, " must be 1-D with ", C, " elements (one per channel of ", ref_name,
                  "), got shape ", t.sizes());
  CVK_CHECK_VALUE(t.size(0) == C, op, name, " must have ", C, " elements (one per channel of ", ref_name,
                  "), got ", t.size(0));
  check_same_device(op, name, t, ref_name, ref);
  CVK_CHECK_TYPE(t.is_floating_point(), op, name, " must be floating point, got ", dtype_name(t.scalar_type()));
}

// ----------------------------------------------------------------------------- (N, C, S) views
// Per-channel operators see an (N, C, *spatial) tensor as (N, C, S), S = prod(spatial) (1 for
// an (N, C) tensor). Contiguous NCHW and channels_last tensors both flatten without a copy.

inline int64_t spatial_numel(const at::Tensor& t) {
  int64_t S = 1;
  for (int64_t d = 2; d < t.dim(); ++d) S *= t.size(d);
  return S;
}

// The (N, C, S) view of t when its spatial dims flatten into one strided dim (dims of size 1
// do not constrain the strides), nullopt otherwise.
inline std::optional<at::Tensor> try_view_ncs(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.dim() >= 2);
  int64_t inner_stride = 1;
  int64_t next_stride = -1;  // the stride the next outer non-trivial spatial dim must have
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    const int64_t size = t.size(d);
    if (size == 1) continue;
    if (next_stride < 0) {
      inner_stride = t.stride(d);
    } else if (t.stride(d) != next_stride) {
      return std::nullopt;
    }
    next_stride = t.stride(d) * size;
  }
  return t.as_strided({t.size(0), t.size(1), spatial_numel(t)}, {t.stride(0), t.stride(1), inner_stride});
}

// The (N, C, S) view of t, or of a contiguous copy when its spatial dims do not flatten.
inline at::Tensor view_ncs(const at::Tensor& t) {
  if (auto v = try_view_ncs(t)) return *v;
  return t.contiguous().view({t.size(0), t.size(1), spatial_numel(t)});
}

// Same sizes and the same strides on every dim of size > 1 (the only strides that address memory).
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace cvk
