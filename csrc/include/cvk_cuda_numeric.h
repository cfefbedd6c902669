// Device-side conversions between the kernels' storage dtypes (float, double, __half,
// __nv_bfloat16) and their accumulation type A (float, double for double): load<T, A>(p) and
// store<T, A>(v) (round to nearest even). CUDA sources only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cvk {
namespace cuda_numeric {

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename A>
__device__ __forceinline__ A load(const T* p) {
  return static_cast<A>(to_float(*p));
}
template <>
__device__ __forceinline__ double load<double, double>(const double* p) {
  return *p;
}

template <typename T, typename A>
__device__ __forceinline__ T store(A v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half store<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace cuda_numeric
}  // namespace cvk
