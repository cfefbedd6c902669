// RoI Align (avg / max) and RoI Pool in CUDA: forward, atomic backward, deterministic gather backward.
// Contract: csrc/include/cvk_roi_cuda.h; geometry shared with the CPU kernels: csrc/include/cvk_roi.h.
// CUDA headers only, so nvcc compiles this file anywhere (tests/test_cuda_sources.py).
//
// Every kernel runs over a table of up to kMaxLevels feature levels (an FPN), passed by value as a
// __grid_constant__ kernel argument (no device copy, no host sync): RoI r reads level level_of[r]
// (level 0 when level_of is null: the one-level ops are a table of one level). Levels share N and C
// and may differ in H, W and strides; a RoI whose level is outside the table reads nothing.
// forward: one thread per output element (grid-stride, 64-bit index). With channels-contiguous input
//   (channels_last) the flat index runs channel-fastest so a warp's loads are coalesced along C;
//   otherwise pw-fastest. Accumulation in A (float, double for float64) in torchvision's sample order.
// backward_atomic: one thread per output element; atomicAdd of A into a zeroed A buffer.
// backward_gather (deterministic): a block covers a 16 x 16 tile of one image's pixels and kCB
//   channels. It walks the RoIs of its image (sorted by batch index) in chunks of 256: each thread
//   stages one RoI's geometry in shared memory with a flag saying whether the RoI's sample extent can
//   touch the tile; then every thread walks the flagged RoIs in order and, for its pixel, the samples
//   (avg), the bins' argmax samples (max) or the bins (RoI Pool) that can touch it (candidate ranges
//   from cvk_roi.h, exact weights), accumulating kCB channels in registers. Each grad_input element
//   is written once: no zero fill, no atomics, the same sum order every run. With several levels the
//   blocks' x index runs over the tiles of every level and a block walks the RoIs of (its level, its
//   image): RoIs sorted by level * N + batch index.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "cvk_cuda_numeric.h"
#include "cvk_roi.h"
#include "cvk_roi_cuda.h"

namespace cvk {
namespace roi_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;  // gather tile: kTile x kTile pixels
constexpr int kCB = 8;     // gather: channels per thread
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
constexpr int kMaxLevels = 8;  // the levels one launch takes (as checked by the torch side)

// One feature level: what Problem's H, W, strides and spatial_scale say for the one-level ops.
struct Level {
  const void* input;  // forward: T, strides sN, sC, sH, sW in elements
  void* grad_input;   // backward: A [N][C][H][W] contiguous
  int64_t sN, sC, sH, sW;
  double spatial_scale;
  int H, W;
  int64_t first_tile;  // gather backward: the first block x index of this level's pixel tiles
  int tiles_w;         // gather backward: tiles per row of this level
};

struct Levels {
  int count;
  Level l[kMaxLevels];
};

// RoI r's level, or -1 when its batch index n or its level is out of range (it reads nothing).
__device__ __forceinline__ int roi_level(const Problem& p, const Levels& lv, const int64_t* level_of, int64_t r,
                                         int64_t n) {
  const int64_t l = level_of ? level_of[r] : 0;
  return (n < 0 || n >= p.N || l < 0 || l >= lv.count) ? -1 : static_cast<int>(l);
}

using cuda_numeric::load;
using cuda_numeric::store;

int grid_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<int>(b < 1 ? 1 : b);
}

// Output element idx -> (roi r, channel c, bin ph, pw). c_fast: channels vary fastest (the order
// that reads a channels_last input coalesced); otherwise bins vary fastest.
__device__ __forceinline__ void decode_output_index(const Problem& p, int64_t idx, bool c_fast, int64_t& r,
                                                    int64_t& c, int& ph, int& pw) {
  if (c_fast) {
    c = idx % p.C;
    int64_t t = idx / p.C;
    pw = static_cast<int>(t % p.PW);
    t /= p.PW;
    ph = static_cast<int>(t % p.PH);
    r = t / p.PH;
  } else {
    pw = static_cast<int>(idx % p.PW);
    int64_t t = idx / p.PW;
    ph = static_cast<int>(t % p.PH);
    t /= p.PH;
    c = t % p.C;
    r = t / p.C;
  }
}

// ------------------------------------------------------------------------------ forward

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) align_forward_kernel(Problem p, const __grid_constant__ Levels lv,
                                                                 const int64_t* __restrict__ level_of,
                                                                 const A* __restrict__ rois, T* __restrict__ out,
                                                                 int32_t* __restrict__ argmax, bool c_fast) {
  const int64_t total = p.K * p.C * p.PH * p.PW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t r, c;
    int ph, pw;
    decode_output_index(p, idx, c_fast, r, c, ph, pw);
    const int64_t o = ((r * p.C + c) * p.PH + ph) * p.PW + pw;
    const A* roi = rois + r * 5;
    const int64_t n = static_cast<int64_t>(roi[0]);
    const int l = roi_level(p, lv, level_of, r, n);
    if (l < 0) {
      out[o] = store<T, A>(A(0));
      if (argmax) argmax[o] = -1;
      continue;
    }
    const Level& L = lv.l[l];
    const roi::AlignGeom<A> g =
        roi::align_geom<A>(roi, static_cast<A>(L.spatial_scale), p.PH, p.PW, p.sampling_ratio, p.aligned);
    const T* xc = static_cast<const T*>(L.input) + n * L.sN + c * L.sC;
    A acc = p.kind == roi::kAvg ? A(0) : -INFINITY;
    int32_t best = -1;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const A yy = roi::sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h);
      int yl, yh;
      A wyl, wyh;
      const bool vy = roi::axis_taps(yy, L.H, yl, yh, wyl, wyh);
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const A xx = roi::sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w);
        int xl, xh;
        A wxl, wxh;
        A v = A(0);
        const bool valid = vy && roi::axis_taps(xx, L.W, xl, xh, wxl, wxh);
        if (valid) {
          v = (wyl * wxl) * load<T, A>(xc + yl * L.sH + xl * L.sW) +
              (wyl * wxh) * load<T, A>(xc + yl * L.sH + xh * L.sW) +
              (wyh * wxl) * load<T, A>(xc + yh * L.sH + xl * L.sW) +
              (wyh * wxh) * load<T, A>(xc + yh * L.sH + xh * L.sW);
        }
        if (p.kind == roi::kAvg) {
          if (valid) acc += v;
        } else if (v > acc) {
          acc = v;
          best = iy * g.grid_w + ix;
        }
      }
    }
    if (p.kind == roi::kAvg) {
      out[o] = store<T, A>(acc / g.count);
    } else {
      out[o] = store<T, A>(best < 0 ? A(0) : acc);
      argmax[o] = best;
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) pool_forward_kernel(Problem p, const __grid_constant__ Levels lv,
                                                                const int64_t* __restrict__ level_of,
                                                                const A* __restrict__ rois, T* __restrict__ out,
                                                                int32_t* __restrict__ argmax, bool c_fast) {
  const int64_t total = p.K * p.C * p.PH * p.PW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t r, c;
    int ph, pw;
    decode_output_index(p, idx, c_fast, r, c, ph, pw);
    const int64_t o = ((r * p.C + c) * p.PH + ph) * p.PW + pw;
    const A* roi = rois + r * 5;
    const int64_t n = static_cast<int64_t>(roi[0]);
    const int l = roi_level(p, lv, level_of, r, n);
    if (l < 0) {
      out[o] = store<T, A>(A(0));
      argmax[o] = -1;
      continue;
    }
    const Level& L = lv.l[l];
    const roi::PoolGeom g = roi::pool_geom<A>(roi, static_cast<A>(L.spatial_scale));
    int hs, he, ws, we;
    roi::pool_bin<A>(g.start_h, g.size_h, ph, p.PH, L.H, hs, he);
    roi::pool_bin<A>(g.start_w, g.size_w, pw, p.PW, L.W, ws, we);
    const bool empty = he <= hs || we <= ws;
    A best = empty ? A(0) : A(-FLT_MAX);
    int32_t besti = -1;
    const T* xc = static_cast<const T*>(L.input) + n * L.sN + c * L.sC;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) {
        const A v = load<T, A>(xc + h * L.sH + w * L.sW);
        if (v > best) {
          best = v;
          besti = h * L.W + w;
        }
      }
    out[o] = store<T, A>(best);
    argmax[o] = besti;
  }
}

// ------------------------------------------------------------------------------ atomic backward

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) backward_atomic_kernel(Problem p, const __grid_constant__ Levels lv,
                                                                   const int64_t* __restrict__ level_of,
                                                                   const T* __restrict__ grad,
                                                                   const A* __restrict__ rois,
                                                                   const int32_t* __restrict__ argmax) {
  const int64_t total = p.K * p.C * p.PH * p.PW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int pw = static_cast<int>(idx % p.PW);
    int64_t t = idx / p.PW;
    const int ph = static_cast<int>(t % p.PH);
    t /= p.PH;
    const int64_t c = t % p.C, r = t / p.C;
    const A* roi = rois + r * 5;
    const int64_t n = static_cast<int64_t>(roi[0]);
    const int l = roi_level(p, lv, level_of, r, n);
    if (l < 0) continue;
    const Level& L = lv.l[l];
    const int64_t HW = int64_t(L.H) * L.W;
    A* plane = static_cast<A*>(L.grad_input) + (n * p.C + c) * HW;
    const A gv = load<T, A>(grad + idx);
    if (p.kind == 2) {
      const int32_t a = argmax[idx];
      if (a >= 0 && a < HW) atomicAdd(plane + a, gv);
      continue;
    }
    const roi::AlignGeom<A> g =
        roi::align_geom<A>(roi, static_cast<A>(L.spatial_scale), p.PH, p.PW, p.sampling_ratio, p.aligned);
    if (p.kind == roi::kMax) {
      const int32_t a = argmax[idx];
      if (a < 0 || g.grid_w <= 0) continue;
      const A yy = roi::sample_coord(g.start_h, g.bin_h, ph, a / g.grid_w, g.grid_h);
      const A xx = roi::sample_coord(g.start_w, g.bin_w, pw, a % g.grid_w, g.grid_w);
      int yl, yh, xl, xh;
      A wyl, wyh, wxl, wxh;
      if (!roi::axis_taps(yy, L.H, yl, yh, wyl, wyh) || !roi::axis_taps(xx, L.W, xl, xh, wxl, wxh)) continue;
      atomicAdd(plane + int64_t(yl) * L.W + xl, gv * (wyl * wxl));
      atomicAdd(plane + int64_t(yl) * L.W + xh, gv * (wyl * wxh));
      atomicAdd(plane + int64_t(yh) * L.W + xl, gv * (wyh * wxl));
      atomicAdd(plane + int64_t(yh) * L.W + xh, gv * (wyh * wxh));
      continue;
    }
    const A gc = gv / g.count;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const A yy = roi::sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h);
      int yl, yh;
      A wyl, wyh;
      if (!roi::axis_taps(yy, L.H, yl, yh, wyl, wyh)) continue;
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const A xx = roi::sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w);
        int xl, xh;
        A wxl, wxh;
        if (!roi::axis_taps(xx, L.W, xl, xh, wxl, wxh)) continue;
        atomicAdd(plane + int64_t(yl) * L.W + xl, gc * (wyl * wxl));
        atomicAdd(plane + int64_t(yl) * L.W + xh, gc * (wyl * wxh));
        atomicAdd(plane + int64_t(yh) * L.W + xl, gc * (wyh * wxl));
        atomicAdd(plane + int64_t(yh) * L.W + xh, gc * (wyh * wxh));
      }
    }
  }
}

// ------------------------------------------------------------------------------ gather backward

template <typename A>
struct RoiShared {
  A sh, sw, bh, bw, count;
  int gh, gw;
  int ph0, pw0, psh, psw;  // RoI Pool geometry (start, size)
  int64_t r;
  int touches;
};

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) backward_gather_kernel(Problem p, const __grid_constant__ Levels lv,
                                                                   const T* __restrict__ grad,
                                                                   const A* __restrict__ rois,
                                                                   const int32_t* __restrict__ argmax,
                                                                   const int64_t* __restrict__ order,
                                                                   const int64_t* __restrict__ group_start,
                                                                   int64_t z_items) {
  __shared__ RoiShared<A> sr[kThreads];
  int l = lv.count - 1;  // the level whose tiles hold block x (block-uniform)
  while (l > 0 && int64_t(blockIdx.x) < lv.l[l].first_tile) --l;
  const Level& L = lv.l[l];
  const int64_t tile = int64_t(blockIdx.x) - L.first_tile;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  const int h0 = static_cast<int>(tile / L.tiles_w) * kTile, w0 = static_cast<int>(tile % L.tiles_w) * kTile;
  const int h = h0 + threadIdx.y, w = w0 + threadIdx.x;
  const int64_t c_blocks = (p.C + kCB - 1) / kCB;
  const A scale = static_cast<A>(L.spatial_scale);
  const int64_t bins = int64_t(p.PH) * p.PW;
  A* gin = static_cast<A*>(L.grad_input);
  for (int64_t z = blockIdx.z; z < z_items; z += gridDim.z) {
    const int64_t n = z / c_blocks;
    const int64_t c0 = (z % c_blocks) * kCB;
    const int ncb = static_cast<int>(p.C - c0 < kCB ? p.C - c0 : kCB);
    A acc[kCB];
#pragma unroll
    for (int i = 0; i < kCB; ++i) acc[i] = A(0);
    // the RoIs of (level l, image n), in index order
    const int64_t rb = group_start[l * p.N + n], re = group_start[l * p.N + n + 1];
    for (int64_t chunk = rb; chunk < re; chunk += kThreads) {
      __syncthreads();
      if (chunk + tid < re) {
        RoiShared<A>& s = sr[tid];
        const int64_t r = order[chunk + tid];
        const A* roi = rois + r * 5;
        s.r = r;
        double lo_h, hi_h, lo_w, hi_w;
        if (p.kind == 2) {
          const roi::PoolGeom g = roi::pool_geom<A>(roi, scale);
          s.ph0 = g.start_h;
          s.pw0 = g.start_w;
          s.psh = g.size_h;
          s.psw = g.size_w;
          lo_h = g.start_h - 1.0;
          hi_h = double(g.start_h) + g.size_h + 1.0;
          lo_w = g.start_w - 1.0;
          hi_w = double(g.start_w) + g.size_w + 1.0;
          s.touches = 1;
        } else {
          const roi::AlignGeom<A> g = roi::align_geom<A>(roi, scale, p.PH, p.PW, p.sampling_ratio, p.aligned);
          s.sh = g.start_h;
          s.sw = g.start_w;
          s.bh = g.bin_h;
          s.bw = g.bin_w;
          s.count = g.count;
          s.gh = g.grid_h;
          s.gw = g.grid_w;
          const double ya = g.start_h, yb = ya + double(g.bin_h) * p.PH;
          const double xa = g.start_w, xb = xa + double(g.bin_w) * p.PW;
          lo_h = (ya < yb ? ya : yb) - 2.0;
          hi_h = (ya < yb ? yb : ya) + 2.0;
          lo_w = (xa < xb ? xa : xb) - 2.0;
          hi_w = (xa < xb ? xb : xa) + 2.0;
          s.touches = g.grid_h > 0 && g.grid_w > 0;
        }
        // clamping maps samples in [-1, 0] to row 0 and (H - 1, H] to row H - 1
        if (lo_h < 0.0) lo_h = -2.0;
        if (lo_w < 0.0) lo_w = -2.0;
        const double tile_h1 = h0 + kTile - 1, tile_w1 = w0 + kTile - 1;
        if (hi_h < h0 - 1.0 || lo_h > tile_h1 + 1.0 || hi_w < w0 - 1.0 || lo_w > tile_w1 + 1.0) s.touches = 0;
      }
      __syncthreads();
      if (h < L.H && w < L.W) {
        const int64_t m = (re - chunk < kThreads) ? re - chunk : kThreads;
        for (int j = 0; j < m; ++j) {
          const RoiShared<A>& s = sr[j];
          if (!s.touches) continue;
          const int64_t gbase = (s.r * p.C + c0) * bins;
          if (p.kind == 2) {
            int p0, p1, q0, q1;
            roi::pool_candidates<A>(s.ph0, s.psh, p.PH, h, p0, p1);
            roi::pool_candidates<A>(s.pw0, s.psw, p.PW, w, q0, q1);
            const int32_t target = h * L.W + w;
            for (int ph = p0; ph < p1; ++ph)
              for (int pw = q0; pw < q1; ++pw) {
                const int64_t b = int64_t(ph) * p.PW + pw;
#pragma unroll
                for (int i = 0; i < kCB; ++i)
                  if (i < ncb && argmax[gbase + i * bins + b] == target) acc[i] += load<T, A>(grad + gbase + i * bins + b);
              }
            continue;
          }
          int k0, k1, j0, j1;
          roi::candidate_range(s.sh, s.bh, s.gh, p.PH, h, L.H, k0, k1);
          if (k0 >= k1) continue;
          roi::candidate_range(s.sw, s.bw, s.gw, p.PW, w, L.W, j0, j1);
          if (j0 >= j1) continue;
          if (p.kind == roi::kAvg) {
            for (int k = k0; k < k1; ++k) {
              const int ph = k / s.gh;
              const A wy = roi::axis_weight(roi::sample_coord(s.sh, s.bh, ph, k % s.gh, s.gh), L.H, h);
              if (wy == A(0)) continue;
              for (int kx = j0; kx < j1; ++kx) {
                const int pw = kx / s.gw;
                const A wx = roi::axis_weight(roi::sample_coord(s.sw, s.bw, pw, kx % s.gw, s.gw), L.W, w);
                if (wx == A(0)) continue;
                const A wt = wy * wx / s.count;
                const int64_t b = gbase + int64_t(ph) * p.PW + pw;
#pragma unroll
                for (int i = 0; i < kCB; ++i)
                  if (i < ncb) acc[i] += wt * load<T, A>(grad + b + i * bins);
              }
            }
          } else {  // max: the argmax sample of each candidate bin
            const int pa = k0 / s.gh, pb = (k1 - 1) / s.gh, qa = j0 / s.gw, qb = (j1 - 1) / s.gw;
            for (int ph = pa; ph <= pb; ++ph)
              for (int pw = qa; pw <= qb; ++pw) {
                const int64_t b = gbase + int64_t(ph) * p.PW + pw;
#pragma unroll
                for (int i = 0; i < kCB; ++i) {
                  if (i >= ncb) continue;
                  const int32_t a = argmax[b + i * bins];
                  if (a < 0) continue;
                  const A wy = roi::axis_weight(roi::sample_coord(s.sh, s.bh, ph, a / s.gw, s.gh), L.H, h);
                  if (wy == A(0)) continue;
                  const A wx = roi::axis_weight(roi::sample_coord(s.sw, s.bw, pw, a % s.gw, s.gw), L.W, w);
                  if (wx == A(0)) continue;
                  acc[i] += load<T, A>(grad + b + i * bins) * (wy * wx);
                }
              }
          }
        }
      }
    }
    if (h < L.H && w < L.W) {
      const int64_t HW = int64_t(L.H) * L.W;
      #pragma unroll
      for (int i = 0; i < kCB; ++i)
        if (i < ncb) gin[(n * p.C + c0 + i) * HW + int64_t(h) * L.W + w] = acc[i];
    }
  }
}

// The kernels' level table from per-level problems (levels[l]: H, W, strides, spatial_scale) and
// pointers (inputs or grad_inputs, either may be null); false when count is outside [1, kMaxLevels]
// or the gather's tiles do not fit a grid's x dimension.
bool make_levels(const Problem* levels, int count, const void* const* inputs, void* const* grad_inputs, Levels& lv) {
  if (count < 1 || count > kMaxLevels) return false;
  lv.count = count;
  int64_t tiles = 0;
  for (int l = 0; l < count; ++l) {
    const Problem& q = levels[l];
    const int tiles_w = (q.W + kTile - 1) / kTile;
    lv.l[l] = Level{inputs ? inputs[l] : nullptr, grad_inputs ? grad_inputs[l] : nullptr, q.sN, q.sC, q.sH, q.sW,
                    q.spatial_scale, q.H, q.W, tiles, tiles_w};
    tiles += int64_t(tiles_w) * ((q.H + kTile - 1) / kTile);
  }
  for (int l = count; l < kMaxLevels; ++l) lv.l[l] = Level{};
  return tiles < (int64_t(1) << 31);
}

int64_t total_tiles(const Levels& lv) {
  const Level& L = lv.l[lv.count - 1];
  return L.first_tile + int64_t(L.tiles_w) * ((L.H + kTile - 1) / kTile);
}

template <typename T, typename A>
cudaError_t forward_t(const Problem* levels, int count, const void* const* inputs, const int64_t* level_of,
                      const void* rois, void* out, int32_t* argmax, cudaStream_t stream) {
  Levels lv;
  if (!make_levels(levels, count, inputs, nullptr, lv)) return cudaErrorInvalidValue;
  const Problem& p = levels[0];
  const int64_t total = p.K * p.C * p.PH * p.PW;
  if (total == 0) return cudaSuccess;
  bool c_fast = p.C > 1;  // channel-fastest when every level is channels-contiguous
  for (int l = 0; l < count; ++l) c_fast = c_fast && levels[l].sC == 1;
  if (p.kind == 2)
    pool_forward_kernel<T, A><<<grid_for(total), kThreads, 0, stream>>>(
        p, lv, level_of, static_cast<const A*>(rois), static_cast<T*>(out), argmax, c_fast);
  else
    align_forward_kernel<T, A><<<grid_for(total), kThreads, 0, stream>>>(
        p, lv, level_of, static_cast<const A*>(rois), static_cast<T*>(out), p.kind == roi::kMax ? argmax : nullptr,
        c_fast);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t backward_atomic_t(const Problem* levels, int count, const int64_t* level_of, const void* grad,
                              const void* rois, const int32_t* argmax, void* const* grad_inputs, cudaStream_t stream) {
  Levels lv;
  if (!make_levels(levels, count, nullptr, grad_inputs, lv)) return cudaErrorInvalidValue;
  const Problem& p = levels[0];
  const int64_t total = p.K * p.C * p.PH * p.PW;
  if (total == 0 || p.N * p.C == 0) return cudaSuccess;
  backward_atomic_kernel<T, A><<<grid_for(total), kThreads, 0, stream>>>(
      p, lv, level_of, static_cast<const T*>(grad), static_cast<const A*>(rois), argmax);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t backward_gather_t(const Problem* levels, int count, const void* grad, const void* rois,
                              const int32_t* argmax, const int64_t* order, const int64_t* group_start,
                              void* const* grad_inputs, cudaStream_t stream) {
  Levels lv;
  if (!make_levels(levels, count, nullptr, grad_inputs, lv)) return cudaErrorInvalidConfiguration;
  const Problem& p = levels[0];
  const int64_t tiles = total_tiles(lv);
  if (p.N * p.C == 0 || tiles == 0) return cudaSuccess;
  const int64_t z_items = p.N * ((p.C + kCB - 1) / kCB);
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(z_items < 65535 ? z_items : 65535));
  backward_gather_kernel<T, A><<<grid, block, 0, stream>>>(p, lv, static_cast<const T*>(grad),
                                                           static_cast<const A*>(rois), argmax, order, group_start,
                                                           z_items);
  return cudaGetLastError();
}

}  // namespace

#define CVK_ROI_DISPATCH(dtype, CALL)                          \
  switch (dtype) {                                             \
    case DType::kFloat32: { using T = float; using A = float; return CALL; }          \
    case DType::kFloat64: { using T = double; using A = double; return CALL; }        \
    case DType::kFloat16: { using T = __half; using A = float; return CALL; }         \
    case DType::kBFloat16: { using T = __nv_bfloat16; using A = float; return CALL; } \
  }                                                            \
  return cudaErrorInvalidValue;

// The multi-level launchers (declared by csrc/cuda/roi_align_binding.cpp): levels[l] describes level l
// (H, W, input strides, spatial_scale); the shared fields (N, C, K, PH, PW, sampling_ratio, aligned,
// kind) are levels[0]'s. level_of: int64 [K] (RoI r reads level level_of[r]), or null (every RoI on
// level 0). grad_inputs[l]: A [N][C][H_l][W_l] (zeroed for the atomic kernel). The gather's `order`
// lists the RoIs sorted (stably) by level * N + batch index, `group_start` (int64 [count * N + 1])
// the start of each (level, image) run in it.
cudaError_t forward_multilevel(DType dtype, const Problem* levels, int count, const void* const* inputs,
                               const int64_t* level_of, const void* rois, void* out, int32_t* argmax,
                               cudaStream_t stream) {
  CVK_ROI_DISPATCH(dtype, (forward_t<T, A>(levels, count, inputs, level_of, rois, out, argmax, stream)))
}

cudaError_t backward_atomic_multilevel(DType dtype, const Problem* levels, int count, const int64_t* level_of,
                                       const void* grad, const void* rois, const int32_t* argmax,
                                       void* const* grad_inputs, cudaStream_t stream) {
  CVK_ROI_DISPATCH(dtype,
                   (backward_atomic_t<T, A>(levels, count, level_of, grad, rois, argmax, grad_inputs, stream)))
}

cudaError_t backward_gather_multilevel(DType dtype, const Problem* levels, int count, const void* grad,
                                       const void* rois, const int32_t* argmax, const int64_t* order,
                                       const int64_t* group_start, void* const* grad_inputs, cudaStream_t stream) {
  CVK_ROI_DISPATCH(dtype, (backward_gather_t<T, A>(levels, count, grad, rois, argmax, order, group_start,
                                                   grad_inputs, stream)))
}

// The one-level launchers of cvk_roi_cuda.h: a table of one level, every RoI on it.
cudaError_t forward(DType dtype, const Problem& p, const void* input, const void* rois, void* out, int32_t* argmax,
                    cudaStream_t stream) {
  return forward_multilevel(dtype, &p, 1, &input, nullptr, rois, out, argmax, stream);
}

cudaError_t backward_atomic(DType dtype, const Problem& p, const void* grad, const void* rois, const int32_t* argmax,
                            void* grad_input, cudaStream_t stream) {
  return backward_atomic_multilevel(dtype, &p, 1, nullptr, grad, rois, argmax, &grad_input, stream);
}

cudaError_t backward_gather(DType dtype, const Problem& p, const void* grad, const void* rois, const int32_t* argmax,
                            const int64_t* order, const int64_t* image_start, void* grad_input, cudaStream_t stream) {
  return backward_gather_multilevel(dtype, &p, 1, grad, rois, argmax, order, image_start, &grad_input, stream);
}

}  // namespace roi_cuda
}  // namespace cvk
