// Volume rendering on CUDA: forward and backward launchers (contract: csrc/include/cvk_volume_render_cuda.h,
// quadrature and gradients: csrc/include/cvk_volume_render.h). CUDA headers only.
//
// One warp per ray, grid-stride over rays. The samples of a ray are read 32 at a time (coalesced).
// Forward: an inclusive warp scan of tau gives each lane its exclusive prefix (plus the carry of the
// earlier chunks), hence T_i and w_i; opacity and depth accumulate per lane and are reduced once per
// ray; each feature is reduced per chunk and lane f % 32 keeps feature f's sum. Early termination
// stops the ray at the first chunk holding a dropped sample.
// Backward, two passes over the kept samples of a ray:
//   1. reverse over chunks: v_i and alpha_i per lane, a suffix scan of the affine maps
//      Q -> v_i alpha_i + (1 - alpha_i) Q gives Q_i; the workspace gets v_i - Q_{i+1};
//   2. forward over chunks: the tau scan again gives T_{i+1}, and each lane turns its workspace value
//      into dL/dtau_i = T_{i+1} (v_i - Q_{i+1}) and the gradients of sigma, features and t.
// Each lane reads and writes only its own workspace element, so the workspace may alias grad_sigmas.
#include <cuda_runtime.h>

#include <cstdint>

#include "cvk_cuda_numeric.h"
#include "cvk_volume_render.h"
#include "cvk_volume_render_cuda.h"

namespace cvk {
namespace vr_cuda {
namespace {

using cuda_numeric::load;
using cuda_numeric::store;

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 rays per block
constexpr int kGroups = static_cast<int>(kMaxFeatures / kWarp);
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
constexpr unsigned kFull = 0xffffffffu;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_inclusive_scan(A v, int lane) {
#pragma unroll
  for (int off = 1; off < kWarp; off <<= 1) {
    const A y = __shfl_up_sync(kFull, v, off);
    if (lane >= off) v += y;
  }
  return v;
}

__device__ __forceinline__ int64_t first_ray() { return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; }
__device__ __forceinline__ int64_t ray_step() { return int64_t(gridDim.x) * blockDim.x / kWarp; }

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) forward_kernel(Problem p, const T* __restrict__ sig,
                                                           const T* __restrict__ feat, const A* __restrict__ ts,
                                                           const A* __restrict__ te, const T* __restrict__ bg,
                                                           T* __restrict__ color, T* __restrict__ opacity,
                                                           A* __restrict__ depth, A* __restrict__ expected,
                                                           T* __restrict__ weights, int64_t* __restrict__ kept) {
  const int lane = threadIdx.x % kWarp;
  const int64_t F = p.F;
  const A thr = static_cast<A>(p.threshold);
  for (int64_t r = first_ray(); r < p.R; r += ray_step()) {
    int64_t b, e;
    vr::ray_range(p.offsets, p.samples_per_ray, r, p.N, &b, &e);
    A carry = 0, o = 0, d = 0;
    A acc[kGroups];
#pragma unroll
    for (int g = 0; g < kGroups; ++g) acc[g] = 0;
    int64_t n_kept = 0, base = b;
    for (; base < e; base += kWarp) {
      const int64_t i = base + lane;
      const bool in = i < e;
      A tau = 0, tmid = 0;
      if (in) {
        const A t0 = ts[i], t1 = te[i];
        tau = load<T, A>(sig + i) * (t1 - t0);
        tmid = A(0.5) * (t0 + t1);
      }
      const A incl = warp_inclusive_scan(tau, lane);
      const A trans = vr::exp_(-(carry + incl - tau));
      // kept samples form a prefix of the ray: cut at the first dropped one
      const unsigned dropped = __ballot_sync(kFull, in && !(trans >= thr));
      const int first_drop = dropped ? __ffs(dropped) - 1 : kWarp;
      const bool keep = in && lane < first_drop;
      const A w = keep ? trans * vr::alpha_of(tau) : A(0);
      if (weights != nullptr && in) weights[i] = store<T, A>(w);
      o += w;
      d += w * tmid;
      for (int64_t f = 0; f < F; ++f) {
        const A s = warp_sum(keep ? w * load<T, A>(feat + i * F + f) : A(0));
#pragma unroll
        for (int g = 0; g < kGroups; ++g)
          if (f == g * kWarp + lane) acc[g] += s;
      }
      n_kept += __popc(__ballot_sync(kFull, keep));
      carry += __shfl_sync(kFull, incl, kWarp - 1);
      if (first_drop < kWarp) {
        base += kWarp;
        break;
      }
    }
    if (weights != nullptr)
      for (int64_t i = base + lane; i < e; i += kWarp) weights[i] = store<T, A>(A(0));
    o = warp_sum(o);
    d = warp_sum(d);
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t f = g * kWarp + lane;
      if (f < F) {
        const A bgf = bg != nullptr ? load<T, A>(bg + (p.bg_per_ray ? r * F : 0) + f) : A(0);
        color[r * F + f] = store<T, A>(acc[g] + (A(1) - o) * bgf);
      }
    }
    if (lane == 0) {
      opacity[r] = store<T, A>(o);
      depth[r] = d;
      expected[r] = o > A(0) ? d / o : A(0);
      kept[r] = n_kept;
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    Problem p, const T* __restrict__ gc, const T* __restrict__ go, const A* __restrict__ gd,
    const A* __restrict__ ge, const T* __restrict__ gw, const T* __restrict__ sig, const T* __restrict__ feat,
    const A* __restrict__ ts, const A* __restrict__ te, const T* __restrict__ bg, const T* __restrict__ opacity,
    const A* __restrict__ depth, const int64_t* __restrict__ kept, A* ws, T* gs, T* __restrict__ gf,
    A* __restrict__ gts, A* __restrict__ gte) {
  const int lane = threadIdx.x % kWarp;
  const int64_t F = p.F;
  for (int64_t r = first_ray(); r < p.R; r += ray_step()) {
    int64_t b, e;
    vr::ray_range(p.offsets, p.samples_per_ray, r, p.N, &b, &e);
    int64_t k = kept[r];
    k = k < 0 ? 0 : (k > e - b ? e - b : k);
    const int64_t end = b + k;
    const vr::RayGrad<A> rg = vr::ray_grad<A>(load<T, A>(go + r), gd[r], ge[r], load<T, A>(opacity + r), depth[r]);
    A base_v = rg.base;
    if (bg != nullptr) {
      const T* bgr = bg + (p.bg_per_ray ? r * F : 0);
      A s = 0;
      for (int64_t f = lane; f < F; f += kWarp) s += load<T, A>(gc + r * F + f) * load<T, A>(bgr + f);
      base_v -= warp_sum(s);
    }
    // pass 1: Q by the reverse recurrence, chunk by chunk from the ray's end
    A q_next = 0;  // Q of the first sample after the current chunk
    for (int64_t cb = b + ((k - 1) / kWarp) * kWarp; k > 0 && cb >= b; cb -= kWarp) {
      const int64_t i = cb + lane;
      const bool in = i < end;
      A a = 0, m = 1;  // lanes past the end: the identity map
      A v = 0;
      if (in) {
        const A t0 = ts[i], t1 = te[i];
        const A alpha = vr::alpha_of(load<T, A>(sig + i) * (t1 - t0));
        v = base_v + rg.t_factor * (A(0.5) * (t0 + t1));
        for (int64_t f = 0; f < F; ++f) v += load<T, A>(gc + r * F + f) * load<T, A>(feat + i * F + f);
        if (gw != nullptr) v += load<T, A>(gw + i);
        a = v * alpha;
        m = A(1) - alpha;
      }
      // suffix composition: (a, m) of lane l becomes the map of lanes l .. 31 applied in order
#pragma unroll
      for (int off = 1; off < kWarp; off <<= 1) {
        const A a2 = __shfl_down_sync(kFull, a, off);
        const A m2 = __shfl_down_sync(kFull, m, off);
        if (lane + off < kWarp) {
          a += m * a2;
          m *= m2;
        }
      }
      const A q = a + m * q_next;
      const A q_down = __shfl_down_sync(kFull, q, 1);
      if (in) ws[i] = v - (lane + 1 < kWarp ? q_down : q_next);
      q_next = __shfl_sync(kFull, q, 0);
    }
    // pass 2: T_{i+1} from the tau scan; gradients
    A carry = 0;
    for (int64_t cb = b; cb < end; cb += kWarp) {
      const int64_t i = cb + lane;
      const bool in = i < end;
      A tau = 0, s = 0, t0 = 0, t1 = 0;
      if (in) {
        t0 = ts[i];
        t1 = te[i];
        s = load<T, A>(sig + i);
        tau = s * (t1 - t0);
      }
      const A incl = warp_inclusive_scan(tau, lane);
      if (in) {
        const A w = vr::exp_(-(carry + incl - tau)) * vr::alpha_of(tau);
        const A g_tau = vr::exp_(-(carry + incl)) * ws[i];
        gs[i] = store<T, A>((t1 - t0) * g_tau);
        for (int64_t f = 0; f < F; ++f) gf[i * F + f] = store<T, A>(w * load<T, A>(gc + r * F + f));
        if (gts != nullptr) {
          const A g_mid = A(0.5) * w * rg.t_factor;
          gts[i] = -s * g_tau + g_mid;
          gte[i] = s * g_tau + g_mid;
        }
      }
      carry += __shfl_sync(kFull, incl, kWarp - 1);
    }
    for (int64_t i = end + lane; i < e; i += kWarp) {
      gs[i] = store<T, A>(A(0));
      for (int64_t f = 0; f < F; ++f) gf[i * F + f] = store<T, A>(A(0));
      if (gts != nullptr) gts[i] = gte[i] = A(0);
    }
  }
}

int grid_for(int64_t rays) {
  const int64_t blocks = (rays * kWarp + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T, typename A>
cudaError_t run_forward(const Problem& p, const void* sigmas, const void* features, const void* t_starts,
                        const void* t_ends, const void* background, void* color, void* opacity, void* depth,
                        void* expected, void* weights, int64_t* num_kept, cudaStream_t stream) {
  forward_kernel<T, A><<<grid_for(p.R), kThreads, 0, stream>>>(
      p, static_cast<const T*>(sigmas), static_cast<const T*>(features), static_cast<const A*>(t_starts),
      static_cast<const A*>(t_ends), static_cast<const T*>(background), static_cast<T*>(color),
      static_cast<T*>(opacity), static_cast<A*>(depth), static_cast<A*>(expected), static_cast<T*>(weights),
      num_kept);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t run_backward(const Problem& p, const void* gc, const void* go, const void* gd, const void* ge,
                         const void* gw, const void* sigmas, const void* features, const void* t_starts,
                         const void* t_ends, const void* background, const void* opacity, const void* depth,
                         const int64_t* num_kept, void* workspace, void* gs, void* gf, void* gts, void* gte,
                         cudaStream_t stream) {
  backward_kernel<T, A><<<grid_for(p.R), kThreads, 0, stream>>>(
      p, static_cast<const T*>(gc), static_cast<const T*>(go), static_cast<const A*>(gd),
      static_cast<const A*>(ge), static_cast<const T*>(gw), static_cast<const T*>(sigmas),
      static_cast<const T*>(features), static_cast<const A*>(t_starts), static_cast<const A*>(t_ends),
      static_cast<const T*>(background), static_cast<const T*>(opacity), static_cast<const A*>(depth), num_kept,
      static_cast<A*>(workspace), static_cast<T*>(gs), static_cast<T*>(gf), static_cast<A*>(gts),
      static_cast<A*>(gte));
  return cudaGetLastError();
}

}  // namespace

#define CVK_VR_DISPATCH(dtype, FN, ...)                          \
  switch (dtype) {                                               \
    case DType::kFloat32: return FN<float, float>(__VA_ARGS__);  \
    case DType::kFloat64: return FN<double, double>(__VA_ARGS__); \
    case DType::kFloat16: return FN<__half, float>(__VA_ARGS__); \
    case DType::kBFloat16: return FN<__nv_bfloat16, float>(__VA_ARGS__); \
  }                                                              \
  return cudaErrorInvalidValue;

cudaError_t forward(DType dtype, const Problem& p, const void* sigmas, const void* features, const void* t_starts,
                    const void* t_ends, const void* background, void* color, void* opacity, void* depth,
                    void* expected, void* weights, int64_t* num_kept, cudaStream_t stream) {
  if (p.R <= 0) return cudaSuccess;
  if (p.F > kMaxFeatures) return cudaErrorInvalidValue;
  CVK_VR_DISPATCH(dtype, run_forward, p, sigmas, features, t_starts, t_ends, background, color, opacity, depth,
                  expected, weights, num_kept, stream)
}

cudaError_t backward(DType dtype, const Problem& p, const void* grad_color, const void* grad_opacity,
                     const void* grad_depth, const void* grad_expected, const void* grad_weights, const void* sigmas,
                     const void* features, const void* t_starts, const void* t_ends, const void* background,
                     const void* opacity, const void* depth, const int64_t* num_kept, void* workspace,
                     void* grad_sigmas, void* grad_features, void* grad_t_starts, void* grad_t_ends,
                     cudaStream_t stream) {
  if (p.R <= 0) return cudaSuccess;
  if (p.F > kMaxFeatures) return cudaErrorInvalidValue;
  CVK_VR_DISPATCH(dtype, run_backward, p, grad_color, grad_opacity, grad_depth, grad_expected, grad_weights, sigmas,
                  features, t_starts, t_ends, background, opacity, depth, num_kept, workspace, grad_sigmas,
                  grad_features, grad_t_starts, grad_t_ends, stream)
}

#undef CVK_VR_DISPATCH

}  // namespace vr_cuda
}  // namespace cvk
