// Volume-rendering quadrature (NeRF, Mildenhall et al. 2020, eq. 3; Max 1995), shared by the CPU
// and CUDA kernels (csrc/cpu/volume_render.cpp, csrc/cuda/volume_render.cu). Plain C++ usable from
// host and device code.
//
// Per ray, samples i = 0 .. n-1 in order along the ray:
//   delta_i = t_end_i - t_start_i,  tau_i = sigma_i delta_i,  alpha_i = 1 - exp(-tau_i),
//   T_i = exp(-sum_{j<i} tau_j) (transmittance before sample i),  w_i = T_i alpha_i,
//   t_i = (t_start_i + t_end_i) / 2,
//   opacity O = sum w_i,  depth D = sum w_i t_i,  color C = sum w_i c_i + (1 - O) background,
//   expected depth E = D / O (0 where O = 0).
// Early termination: sample i is kept while T_i >= threshold. T never increases for sigma >= 0, so
// the kept samples are a prefix of the ray; num_kept is its length (threshold 0 keeps every sample).
// Gradients are exact for the kept samples; dropped ones get zero.
//
// Backward. With upstream gradients gC (per feature), gO, gD, gE and gw_i, the gradient reaching w_i is
//   v_i = gC . (c_i - background) + gO + gD t_i + (gE / O) (t_i - E) + gw_i
// and, since w_i = T_i - T_{i+1},
//   dL/dtau_j = v_j T_{j+1} - sum_{i>j} v_i w_i = T_{j+1} (v_j - Q_{j+1}),
//   Q_k = sum_{i>=k} v_i alpha_i prod_{k<=m<i} (1 - alpha_m),  i.e.  Q_k = v_k alpha_k + (1 - alpha_k) Q_{k+1}
// with Q = 0 past the last kept sample. Q is a reverse recurrence over per-sample values only: the
// backward saves no per-sample prefix and has no total-minus-prefix cancellation (which the 1e10
// interval NeRF gives the last sample of a ray would amplify into garbage).
//   dL/dsigma_j = delta_j dL/dtau_j,  dL/dc_j = w_j gC,
//   dL/dt_start_j = -sigma_j dL/dtau_j + w_j (gD + gE/O) / 2,  dL/dt_end_j = sigma_j dL/dtau_j + w_j (gD + gE/O) / 2.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CVK_VR_HD __host__ __device__ __forceinline__
#else
#define CVK_VR_HD inline
#endif

namespace cvk {
namespace vr {

CVK_VR_HD float exp_(float x) { return expf(x); }
CVK_VR_HD double exp_(double x) { return ::exp(x); }
CVK_VR_HD float expm1_(float x) { return expm1f(x); }
CVK_VR_HD double expm1_(double x) { return ::expm1(x); }

// alpha = 1 - exp(-tau), accurate for small tau
template <typename A>
CVK_VR_HD A alpha_of(A tau) {
  return -expm1_(-tau);
}

// Samples [*begin, *end) of ray r: offsets[r] .. offsets[r + 1] (packed) or r * samples_per_ray ..
// (dense, offsets == nullptr). Clamped into [0, n] with end >= begin, so malformed offsets never
// index outside the sample arrays.
CVK_VR_HD void ray_range(const int64_t* offsets, int64_t samples_per_ray, int64_t r, int64_t n, int64_t* begin,
                         int64_t* end) {
  int64_t b, e;
  if (offsets != nullptr) {
    b = offsets[r];
    e = offsets[r + 1];
  } else {
    b = r * samples_per_ray;
    e = b + samples_per_ray;
  }
  b = b < 0 ? 0 : (b > n ? n : b);
  e = e < b ? b : (e > n ? n : e);
  *begin = b;
  *end = e;
}

// The per-ray part of v_i that does not depend on the sample: gO - (gE / O) E, and the factor of
// t_i: gD + gE / O (zero expected-depth terms where O = 0, where E is defined as 0).
template <typename A>
struct RayGrad {
  A base;      // gO - gE_over_O * E
  A t_factor;  // gD + gE_over_O
};

template <typename A>
CVK_VR_HD RayGrad<A> ray_grad(A g_opacity, A g_depth, A g_expected_depth, A opacity, A depth) {
  const A ge = opacity > A(0) ? g_expected_depth / opacity : A(0);
  const A e = opacity > A(0) ? depth / opacity : A(0);
  return {g_opacity - ge * e, g_depth + ge};
}

}  // namespace vr
}  // namespace cvk
