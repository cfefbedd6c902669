// RoI Align / RoI Pool geometry shared by the C++ CPU kernels (csrc/cpu/roi_align.cpp) and the CUDA
// kernels (csrc/cuda/roi_align.cu). Plain C++ (host/device when nvcc compiles it), no torch.
//
// Semantics are torchvision's (torchvision.ops.roi_align / roi_pool):
//   RoI Align, one RoI r = (batch, x1, y1, x2, y2), pooled size (PH, PW):
//     offset = aligned ? 0.5 : 0;  start = box * spatial_scale - offset;  size = end - start
//     (not aligned: size = max(size, 1));  bin = size / pooled;
//     grid = sampling_ratio > 0 ? sampling_ratio : ceil(size / pooled)   (per axis)
//     sample (iy, ix) of bin (ph, pw): y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h (same for x)
//     bilinear: a sample outside [-1, H] x [-1, W] reads 0; coordinates <= 0 clamp to 0, the last
//     row/column clamps (y_low = y_high = H - 1).
//     avg mode:  out = sum(samples) / max(grid_h * grid_w, 1)
//     max mode (mmcv's pool_mode='max'): out = max over samples (an out-of-image sample counts as 0);
//     the index iy * grid_w + ix of the first maximum is saved for backward (-1, and out = 0, when the
//     bin has no sample).
//   RoI Pool (Fast R-CNN): start = round(box * scale), size = max(end - start + 1, 1),
//     bin [floor(p * size / P), ceil((p + 1) * size / P)) + start clipped to the image; max over the
//     bin (0 for an empty bin), argmax = h * W + w of the first maximum (-1 when empty).
// The coordinate/accumulation type A is float (float32/float16/bfloat16 inputs) or double (float64).
//
// Backward as a gather: a pixel (h, w) receives, from every sample of every RoI of its image,
// row_weight(y, h) * col_weight(x, w) * grad / count, where row_weight is the bilinear weight that
// sample gives row h (0 when it does not touch it or is outside the image). A sample can touch row
// h only when its unclamped y lies in [h - 1, h + 1] (h <= 1: from -1; h = H - 1: up to H);
// candidate_range() turns that into a conservative range of sample indices k = p * grid + i along
// one axis, which the exact weight test then filters.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CVK_HD __host__ __device__ __forceinline__
#else
#define CVK_HD inline
#endif

namespace cvk {
namespace roi {

enum Mode : int { kAvg = 0, kMax = 1 };

CVK_HD float cvk_floor(float x) { return floorf(x); }
CVK_HD double cvk_floor(double x) { return ::floor(x); }
CVK_HD float cvk_ceil(float x) { return ceilf(x); }
CVK_HD double cvk_ceil(double x) { return ::ceil(x); }
CVK_HD float cvk_round(float x) { return roundf(x); }
CVK_HD double cvk_round(double x) { return ::round(x); }

template <typename A>
struct AlignGeom {
  A start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  A count;  // avg divisor max(grid_h * grid_w, 1)
};

// roi: 5 values (batch index, x1, y1, x2, y2) already in A.
template <typename A>
CVK_HD AlignGeom<A> align_geom(const A* roi, A scale, int PH, int PW, int sampling_ratio, bool aligned) {
  AlignGeom<A> g;
  const A offset = aligned ? A(0.5) : A(0);
  const A sw = roi[1] * scale - offset;
  const A sh = roi[2] * scale - offset;
  const A ew = roi[3] * scale - offset;
  const A eh = roi[4] * scale - offset;
  A rw = ew - sw, rh = eh - sh;
  if (!aligned) {
    rw = rw > A(1) ? rw : A(1);
    rh = rh > A(1) ? rh : A(1);
  }
  g.start_h = sh;
  g.start_w = sw;
  g.bin_h = rh / static_cast<A>(PH);
  g.bin_w = rw / static_cast<A>(PW);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cvk_ceil(rh / static_cast<A>(PH)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(cvk_ceil(rw / static_cast<A>(PW)));
  const int n = g.grid_h * g.grid_w;
  g.count = static_cast<A>(n > 1 ? n : 1);
  return g;
}

// Sample coordinate along one axis: bin p, sample i of `grid` (torchvision's expression order).
template <typename A>
CVK_HD A sample_coord(A start, A bin, int p, int i, int grid) {
  return start + static_cast<A>(p) * bin + static_cast<A>(static_cast<float>(i) + .5f) * bin / static_cast<A>(grid);
}

// Bilinear taps of one axis: low/high index and weights, after torchvision's clamping.
// Returns false when the coordinate is outside [-1, size] (the sample reads 0).
template <typename A>
CVK_HD bool axis_taps(A v, int size, int& lo, int& hi, A& w_lo, A& w_hi) {
  if (v < A(-1.0) || v > static_cast<A>(size)) return false;
  if (v <= A(0)) v = A(0);
  lo = static_cast<int>(v);
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<A>(lo);
  } else {
    hi = lo + 1;
  }
  const A l = v - static_cast<A>(lo);
  w_hi = l;
  w_lo = A(1) - l;
  return true;
}

// The weight a coordinate v gives index `idx` along an axis of `size` (0 when it does not touch it).
template <typename A>
CVK_HD A axis_weight(A v, int size, int idx) {
  int lo, hi;
  A wl, wh;
  if (!axis_taps(v, size, lo, hi, wl, wh)) return A(0);
  A w = A(0);
  if (lo == idx) w += wl;
  if (hi == idx) w += wh;
  return w;
}

// Conservative range [k0, k1) of sample indices k = p * grid + i (p < pooled) whose coordinate can
// touch index `idx` along an axis of `size`; empty (k0 >= k1) when none can.
template <typename A>
CVK_HD void candidate_range(A start, A bin, int grid, int pooled, int idx, int size, int& k0, int& k1) {
  const int total = grid * pooled;
  k0 = 0;
  k1 = total;
  if (grid <= 0) {
    k1 = 0;
    return;
  }
  const double step = static_cast<double>(bin) / grid;
  if (!(step > 1e-12)) return;  // zero-size RoI: every sample sits at `start`; the exact test filters
  const double lo = idx <= 1 ? -1.0 : idx - 1.0;
  const double hi = idx >= size - 1 ? static_cast<double>(size) : idx + 1.0;
  double a = (lo - static_cast<double>(start)) / step - 0.5 - 2.0;
  double b = (hi - static_cast<double>(start)) / step - 0.5 + 2.0;
  if (a < 0) a = 0;
  if (b > total - 1) b = total - 1;
  if (a > b) {
    k1 = 0;
    return;
  }
  k0 = static_cast<int>(cvk_floor(a));
  k1 = static_cast<int>(cvk_ceil(b)) + 1;
  if (k1 > total) k1 = total;
}

// ------------------------------------------------------------------------------ RoI Pool

struct PoolGeom {
  int start_h, start_w, size_h, size_w;
};

template <typename A>
CVK_HD PoolGeom pool_geom(const A* roi, A scale) {
  PoolGeom g;
  g.start_w = static_cast<int>(cvk_round(roi[1] * scale));
  g.start_h = static_cast<int>(cvk_round(roi[2] * scale));
  const int ew = static_cast<int>(cvk_round(roi[3] * scale));
  const int eh = static_cast<int>(cvk_round(roi[4] * scale));
  g.size_w = ew - g.start_w + 1 > 1 ? ew - g.start_w + 1 : 1;
  g.size_h = eh - g.start_h + 1 > 1 ? eh - g.start_h + 1 : 1;
  return g;
}

// The clipped [begin, end) of bin p along one axis.
template <typename A>
CVK_HD void pool_bin(int start, int size, int p, int pooled, int limit, int& b, int& e) {
  const A bin = static_cast<A>(size) / static_cast<A>(pooled);
  b = static_cast<int>(cvk_floor(static_cast<A>(p) * bin)) + start;
  e = static_cast<int>(cvk_ceil(static_cast<A>(p + 1) * bin)) + start;
  b = b < 0 ? 0 : (b > limit ? limit : b);
  e = e < 0 ? 0 : (e > limit ? limit : e);
}

// Conservative range [p0, p1) of bins whose clipped extent can contain index idx.
template <typename A>
CVK_HD void pool_candidates(int start, int size, int pooled, int idx, int& p0, int& p1) {
  const double bin = static_cast<double>(size) / pooled;
  double a = (idx - start) / bin - 2.0;
  double b = (idx - start + 1) / bin + 2.0;
  if (a < 0) a = 0;
  if (b > pooled) b = pooled;
  p0 = static_cast<int>(a);
  p1 = static_cast<int>(b);
  if (p1 > pooled) p1 = pooled;
  if (p0 > p1) p0 = p1;
}

}  // namespace roi
}  // namespace cvk
