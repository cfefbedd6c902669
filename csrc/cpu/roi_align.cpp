// RoI Align (avg and max modes) and RoI Pool on CPU: cvkernels::roi_align_forward / _backward,
// cvkernels::roi_align_multilevel_forward / _backward, cvkernels::roi_pool_forward / _backward
// (schemas in csrc/cvkernels.cpp, geometry in csrc/include/cvk_roi.h).
//
// RoI Align runs over a list of feature levels (an FPN): RoI r reads level levels[r] at that level's
// spatial scale, and the one-level op is the list of one level (every RoI on level 0). The levels
// share N, C and dtype; their H, W and strides may differ.
// Forward: parallel over RoIs. Per RoI the bilinear taps of every (bin, sample) are computed once
// (torchvision's pre-calculation), then applied to every channel: channel-innermost when the level's
// channels are contiguous (channels_last), channel-outermost otherwise. Inputs are read through
// their strides (any layout works without a copy). Accumulation in float (double for float64) in
// torchvision's sample order.
// Backward: every path is deterministic by construction (a fixed summation order that does not
// depend on the thread count):
//   avg RoI Align: a gather over the input rows (level, n, h) of every level: each row walks the
//     RoIs of (level, image n) in index order and adds the weights of the samples that touch it
//     (candidate_range + the exact weight); this is the same arithmetic the CUDA deterministic
//     kernel uses, and per level the same sums as the one-level op on that level's RoIs.
//   max RoI Align and RoI Pool: each output element feeds at most 4 (1) pixels; threads own
//     channels and scatter the RoIs of their channel in index order.
// Gradients accumulate in float/double and are cast to the input's dtype and memory format last.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cfloat>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "cvk_checks.h"
#include "cvk_roi.h"
#include "cvk_roi_checks.h"

namespace cvk {
namespace roi {

// The most feature levels one multi-level call takes (the CUDA kernels get the levels as a kernel
// argument of this many entries: csrc/cuda/roi_align.cu).
constexpr int64_t kMaxLevels = 8;

void check_levels_arg(const char* op, const at::Tensor& levels, const at::Tensor& rois) {
  CVK_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == rois.size(0), op, "levels must have shape (",
                  rois.size(0), ",) (one level per RoI), got ", levels.sizes());
  CVK_CHECK_TYPE(levels.scalar_type() == at::kLong, op, "levels must be int64, got ",
                 dtype_name(levels.scalar_type()));
  check_same_device(op, "levels", levels, "rois", rois);
}

// Multi-level RoI Align arguments, shared with the CUDA binding: 1 to kMaxLevels features of one
// batch size, channel count, dtype and device, each a valid roi_align input at its scale; one scale
// per level; levels int64 (K,) on rois' device.
void check_multilevel_forward_args(const char* op, at::TensorList features, const at::Tensor& rois,
                                   const at::Tensor& levels, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                   int64_t mode) {
  const int64_t L = static_cast<int64_t>(features.size());
  CVK_CHECK_VALUE(L >= 1 && L <= kMaxLevels, op, "features must hold 1 to ", kMaxLevels, " levels, got ", L);
  CVK_CHECK_VALUE(static_cast<int64_t>(scales.size()) == L, op, "spatial_scales must have one value per level (",
                  L, "), got ", scales.size());
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& f = features[l];
    CVK_CHECK_VALUE(f.dim() == 4, op, "features[", l, "] must be 4-D (N, C, H, W), got shape ", f.sizes());
    if (l > 0) {
      const at::Tensor& f0 = features[0];
      CVK_CHECK_TYPE(f.scalar_type() == f0.scalar_type(), op, "features[", l, "] must have features[0]'s dtype ",
                     dtype_name(f0.scalar_type()), ", got ", dtype_name(f.scalar_type()));
      CVK_CHECK_VALUE(f.device() == f0.device(), op, "features[", l, "] is on ", f.device(),
                      " but features[0] is on ", f0.device());
      CVK_CHECK_VALUE(f.size(0) == f0.size(0) && f.size(1) == f0.size(1), op, "features[", l,
                      "] must have features[0]'s batch size and channels (", f0.size(0), ", ", f0.size(1),
                      "), got shape ", f.sizes());
    }
    check_forward_args(op, f, rois, scales[l], PH, PW, mode);
  }
  check_levels_arg(op, levels, rois);
}

// The backward's: one scale, height, width and channels_last flag per level.
void check_multilevel_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                    const at::Tensor& levels, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                    int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                                    int64_t num_channels_last, int64_t mode) {
  const int64_t L = static_cast<int64_t>(scales.size());
  CVK_CHECK_VALUE(L >= 1 && L <= kMaxLevels, op, "spatial_scales must hold 1 to ", kMaxLevels, " levels, got ", L);
  CVK_CHECK_VALUE(static_cast<int64_t>(heights.size()) == L && static_cast<int64_t>(widths.size()) == L &&
                      num_channels_last == L,
                  op, "heights, widths and channels_last must have one value per level (", L, "), got ",
                  heights.size(), ", ", widths.size(), ", ", num_channels_last);
  CVK_CHECK_VALUE(mode == 0 || mode == 1, op, "mode must be 0 (avg) or 1 (max), got ", mode);
  for (int64_t l = 0; l < L; ++l) check_backward_args(op, grad, rois, PH, PW, N, C, heights[l], widths[l]);
  check_levels_arg(op, levels, rois);
}

}  // namespace roi

namespace {

using at::Tensor;

template <typename A>
struct Tap {
  int64_t o1, o2, o3, o4;  // element offsets within one (n, c) plane
  A w1, w2, w3, w4;
  bool valid;
};

// One feature level as the forward reads it.
template <typename T>
struct LevelInput {
  const T* x;
  int H, W;
  int64_t sN, sC, sH, sW;
  at::opmath_type<T> scale;
};

// One level's gradient buffer, (N, C, H, W) contiguous in the accumulation type.
template <typename A>
struct LevelGrad {
  A* gx;
  int H, W;
  A scale;
};

// RoI r's level (0 for every RoI when there is no level tensor).
inline int64_t level_of_roi(const int64_t* level_of, int64_t r) { return level_of ? level_of[r] : 0; }

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::MemoryFormat fmt_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

template <typename T>
void align_forward_impl(const std::vector<LevelInput<T>>& levels, const int64_t* level_of, const Tensor& rois_a,
                        int PH, int PW, int sr, bool aligned, int mode, Tensor& out, Tensor& argmax) {
  using A = at::opmath_type<T>;
  const int64_t K = rois_a.size(0), C = out.size(1);
  const A* rois = rois_a.const_data_ptr<A>();
  T* y = out.mutable_data_ptr<T>();
  int32_t* am = mode == roi::kMax ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const int64_t bins = int64_t(PH) * PW;

  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    std::vector<Tap<A>> taps;
    std::vector<A> acc(C);
    std::vector<int32_t> arg(C);
    for (int64_t r = begin; r < end; ++r) {
      const LevelInput<T>& lv = levels[level_of_roi(level_of, r)];
      const int H = lv.H, W = lv.W;
      const int64_t sC = lv.sC, sH = lv.sH, sW = lv.sW;
      const bool c_inner = sC == 1 && C > 1;
      const A* roi = rois + r * 5;
      const int64_t n = static_cast<int64_t>(roi[0]);
      const roi::AlignGeom<A> g = roi::align_geom<A>(roi, lv.scale, PH, PW, sr, aligned);
      const int gh = g.grid_h > 0 ? g.grid_h : 0, gw = g.grid_w > 0 ? g.grid_w : 0;
      const int64_t spb = int64_t(gh) * gw;  // samples per bin
      taps.resize(bins * spb);
      int64_t t = 0;
      for (int ph = 0; ph < PH; ++ph)
        for (int pw = 0; pw < PW; ++pw)
          for (int iy = 0; iy < gh; ++iy) {
            const A yy = roi::sample_coord(g.start_h, g.bin_h, ph, iy, gh);
            for (int ix = 0; ix < gw; ++ix, ++t) {
              const A xx = roi::sample_coord(g.start_w, g.bin_w, pw, ix, gw);
              Tap<A>& tp = taps[t];
              int yl, yh, xl, xh;
              A wyl, wyh, wxl, wxh;
              tp.valid = roi::axis_taps(yy, H, yl, yh, wyl, wyh) && roi::axis_taps(xx, W, xl, xh, wxl, wxh);
              if (!tp.valid) continue;
              tp.o1 = yl * sH + xl * sW;
              tp.o2 = yl * sH + xh * sW;
              tp.o3 = yh * sH + xl * sW;
              tp.o4 = yh * sH + xh * sW;
              tp.w1 = wyl * wxl;
              tp.w2 = wyl * wxh;
              tp.w3 = wyh * wxl;
              tp.w4 = wyh * wxh;
            }
          }
      const T* xn = lv.x + n * lv.sN;
      T* yr = y + r * C * bins;
      int32_t* ar = am ? am + r * C * bins : nullptr;
      if (c_inner) {
        for (int64_t b = 0; b < bins; ++b) {
          const Tap<A>* tb = taps.data() + b * spb;
          if (mode == roi::kAvg) {
            std::fill(acc.begin(), acc.end(), A(0));
            for (int64_t s = 0; s < spb; ++s) {
              const Tap<A>& tp = tb[s];
              if (!tp.valid) continue;
              for (int64_t c = 0; c < C; ++c) {
                const T* xc = xn + c;
                acc[c] += tp.w1 * static_cast<A>(xc[tp.o1]) + tp.w2 * static_cast<A>(xc[tp.o2]) +
                          tp.w3 * static_cast<A>(xc[tp.o3]) + tp.w4 * static_cast<A>(xc[tp.o4]);
              }
            }
            for (int64_t c = 0; c < C; ++c) yr[c * bins + b] = static_cast<T>(acc[c] / g.count);
          } else {
            std::fill(acc.begin(), acc.end(), -std::numeric_limits<A>::infinity());
            std::fill(arg.begin(), arg.end(), -1);
            for (int64_t s = 0; s < spb; ++s) {
              const Tap<A>& tp = tb[s];
              for (int64_t c = 0; c < C; ++c) {
                A v = A(0);
                if (tp.valid) {
                  const T* xc = xn + c;
                  v = tp.w1 * static_cast<A>(xc[tp.o1]) + tp.w2 * static_cast<A>(xc[tp.o2]) +
                      tp.w3 * static_cast<A>(xc[tp.o3]) + tp.w4 * static_cast<A>(xc[tp.o4]);
                }
                if (v > acc[c]) {
                  acc[c] = v;
                  arg[c] = static_cast<int32_t>(s);
                }
              }
            }
            for (int64_t c = 0; c < C; ++c) {
              yr[c * bins + b] = static_cast<T>(arg[c] < 0 ? A(0) : acc[c]);
              ar[c * bins + b] = arg[c];
            }
          }
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T* xc = xn + c * sC;
          for (int64_t b = 0; b < bins; ++b) {
            const Tap<A>* tb = taps.data() + b * spb;
            if (mode == roi::kAvg) {
              A s_acc = A(0);
              for (int64_t s = 0; s < spb; ++s) {
                const Tap<A>& tp = tb[s];
                if (!tp.valid) continue;
                s_acc += tp.w1 * static_cast<A>(xc[tp.o1]) + tp.w2 * static_cast<A>(xc[tp.o2]) +
                         tp.w3 * static_cast<A>(xc[tp.o3]) + tp.w4 * static_cast<A>(xc[tp.o4]);
              }
              yr[c * bins + b] = static_cast<T>(s_acc / g.count);
            } else {
              A best = -std::numeric_limits<A>::infinity();
              int32_t besti = -1;
              for (int64_t s = 0; s < spb; ++s) {
                const Tap<A>& tp = tb[s];
                A v = A(0);
                if (tp.valid)
                  v = tp.w1 * static_cast<A>(xc[tp.o1]) + tp.w2 * static_cast<A>(xc[tp.o2]) +
                      tp.w3 * static_cast<A>(xc[tp.o3]) + tp.w4 * static_cast<A>(xc[tp.o4]);
                if (v > best) {
                  best = v;
                  besti = static_cast<int32_t>(s);
                }
              }
              yr[c * bins + b] = static_cast<T>(besti < 0 ? A(0) : best);
              ar[c * bins + b] = besti;
            }
          }
        }
      }
    }
  });
}


// Level values of CPU RoIs in [0, L) (reads the levels: CPU only).
void check_level_values_cpu(const char* op, const Tensor& levels, int64_t L) {
  if (levels.numel() == 0) return;
  const int64_t lo = levels.min().item<int64_t>(), hi = levels.max().item<int64_t>();
  CVK_CHECK_VALUE(lo >= 0 && hi < L, op, "levels must be in [0, ", L, ") for ", L, " feature levels, got values in [",
                  lo, ", ", hi, "]");
}


// The CPU RoI Align forward over `inputs` (one level: every RoI on it; levels undefined). The caller
// has checked the arguments but not their values.
std::tuple<Tensor, Tensor> align_forward_levels(const char* op, at::TensorList inputs, at::ArrayRef<double> scales,
                                                const Tensor& rois, const Tensor& levels, int64_t PH, int64_t PW,
                                                int64_t sampling_ratio, bool aligned, int64_t mode) {
  for (const Tensor& f : inputs) check_cpu(op, "input", f);
  const Tensor& x0 = inputs[0];
  const int64_t K = rois.size(0), N = x0.size(0), C = x0.size(1), L = static_cast<int64_t>(inputs.size());
  const Tensor rois_a = rois.to(acc_type(x0.scalar_type())).contiguous();
  roi::check_batch_indices_cpu(op, rois_a, N);
  const Tensor level_t = levels.defined() ? levels.contiguous() : Tensor();
  if (level_t.defined()) check_level_values_cpu(op, level_t, L);
  Tensor out = at::empty({K, C, PH, PW}, x0.options());
  Tensor argmax = mode == roi::kMax ? at::empty({K, C, PH, PW}, x0.options().dtype(at::kInt))
                                    : at::empty({0}, x0.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  for (const Tensor& f : inputs)
    CVK_CHECK_VALUE(f.size(2) > 0 && f.size(3) > 0, op, "input must have a positive height and width, got ",
                    f.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "roi_align_forward_cpu", [&] {
    std::vector<LevelInput<scalar_t>> lv(L);
    for (int64_t l = 0; l < L; ++l) {
      const Tensor& f = inputs[l];
      lv[l] = {f.const_data_ptr<scalar_t>(), static_cast<int>(f.size(2)), static_cast<int>(f.size(3)),
               f.stride(0), f.stride(1), f.stride(2), f.stride(3),
               static_cast<at::opmath_type<scalar_t>>(scales[l])};
    }
    align_forward_impl<scalar_t>(lv, level_t.defined() ? level_t.const_data_ptr<int64_t>() : nullptr, rois_a,
                                 static_cast<int>(PH), static_cast<int>(PW), static_cast<int>(sampling_ratio), aligned,
                                 static_cast<int>(mode), out, argmax);
  });
  return {out, argmax};
}

std::tuple<Tensor, Tensor> roi_align_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned,
                                                 int64_t mode) {
  constexpr const char* op = "roi_align";
  roi::check_forward_args(op, input, rois, spatial_scale, PH, PW, mode);
  return align_forward_levels(op, {input}, {spatial_scale}, rois, Tensor(), PH, PW, sampling_ratio, aligned, mode);
}

std::tuple<Tensor, Tensor> roi_align_multilevel_forward_cpu(at::TensorList features, const Tensor& rois,
                                                            const Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                            int64_t PH, int64_t PW, int64_t sampling_ratio,
                                                            bool aligned, int64_t mode) {
  constexpr const char* op = "roi_align_multilevel";
  roi::check_multilevel_forward_args(op, features, rois, levels, spatial_scales, PH, PW, mode);
  return align_forward_levels(op, features, spatial_scales, rois, levels, PH, PW, sampling_ratio, aligned, mode);
}

// Per-(level, image) RoI lists in index order: list level * N + n.
std::vector<std::vector<int64_t>> rois_by_group(const Tensor& rois_a, const int64_t* level_of, int64_t L, int64_t N) {
  std::vector<std::vector<int64_t>> by(L * N);
  const Tensor idx = rois_a.select(1, 0).to(at::kLong).contiguous();
  const int64_t* p = idx.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rois_a.size(0); ++r) {
    const int64_t l = level_of_roi(level_of, r);
    if (p[r] >= 0 && p[r] < N && l >= 0 && l < L) by[l * N + p[r]].push_back(r);
  }
  return by;
}

template <typename A>
void align_backward_avg(const Tensor& grad_a, const Tensor& rois_a, const int64_t* level_of,
                        const std::vector<LevelGrad<A>>& levels, int64_t N, int64_t C, int PH, int PW, int sr,
                        bool aligned) {
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t K = rois_a.size(0), bins = int64_t(PH) * PW;
  const A* rois = rois_a.const_data_ptr<A>();
  const A* gy = grad_a.const_data_ptr<A>();
  std::vector<roi::AlignGeom<A>> geom(K);
  for (int64_t r = 0; r < K; ++r)
    geom[r] = roi::align_geom<A>(rois + r * 5, levels[level_of_roi(level_of, r)].scale, PH, PW, sr, aligned);
  const auto by = rois_by_group(rois_a, level_of, L, N);
  // the rows (n, h) of level l are [first_row[l], first_row[l + 1])
  std::vector<int64_t> first_row(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) first_row[l + 1] = first_row[l] + N * levels[l].H;

  at::parallel_for(0, first_row[L], 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc;
    std::vector<std::pair<int, A>> rowt, colt;
    for (int64_t row = begin; row < end; ++row) {
      int64_t l = L - 1;
      while (row < first_row[l]) --l;
      const LevelGrad<A>& lv = levels[l];
      const int H = lv.H, W = lv.W;
      const int64_t n = (row - first_row[l]) / H;
      const int h = static_cast<int>((row - first_row[l]) % H);
      const std::vector<int64_t>& group = by[l * N + n];
      if (group.empty()) continue;
      acc.assign(int64_t(W) * C, A(0));
      bool any = false;
      for (int64_t r : group) {
        const roi::AlignGeom<A>& g = geom[r];
        if (g.grid_h <= 0 || g.grid_w <= 0) continue;
        int k0, k1;
        roi::candidate_range(g.start_h, g.bin_h, g.grid_h, PH, h, H, k0, k1);
        rowt.clear();
        for (int k = k0; k < k1; ++k) {
          const int ph = k / g.grid_h, iy = k % g.grid_h;
          const A wy = roi::axis_weight(roi::sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H, h);
          if (wy != A(0)) rowt.emplace_back(ph, wy);
        }
        if (rowt.empty()) continue;
        // pixel columns the RoI's samples can touch
        const double xa = static_cast<double>(g.start_w), xb = xa + static_cast<double>(g.bin_w) * PW;
        const double xs = std::min(xa, xb), xe = std::max(xa, xb);
        int w0 = static_cast<int>(std::floor(std::min(std::max(xs, 0.0), static_cast<double>(W)))) - 1;
        int w1 = static_cast<int>(std::ceil(std::min(std::max(xe, 0.0), static_cast<double>(W)))) + 1;
        w0 = std::max(w0, 0);
        w1 = std::min(w1, W - 1);
        const A* gr = gy + r * C * bins;
        for (int w = w0; w <= w1; ++w) {
          int j0, j1;
          roi::candidate_range(g.start_w, g.bin_w, g.grid_w, PW, w, W, j0, j1);
          colt.clear();
          for (int j = j0; j < j1; ++j) {
            const int pw = j / g.grid_w, ix = j % g.grid_w;
            const A wx = roi::axis_weight(roi::sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W, w);
            if (wx != A(0)) colt.emplace_back(pw, wx);
          }
          if (colt.empty()) continue;
          any = true;
          A* aw = acc.data() + int64_t(w) * C;
          for (const auto& rt : rowt)
            for (const auto& ct : colt) {
              const A wt = rt.second * ct.second / g.count;
              const A* gb = gr + int64_t(rt.first) * PW + ct.first;
              for (int64_t c = 0; c < C; ++c) aw[c] += wt * gb[c * bins];
            }
        }
      }
      if (!any) continue;
      A* plane = lv.gx + n * C * H * W + int64_t(h) * W;
      for (int w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) plane[c * H * W + w] = acc[int64_t(w) * C + c];
    }
  });
}

template <typename A>
void align_backward_max(const Tensor& grad_a, const Tensor& rois_a, const int64_t* level_of, const Tensor& argmax,
                        const std::vector<LevelGrad<A>>& levels, int64_t C, int PH, int PW, int sr, bool aligned) {
  const int64_t K = rois_a.size(0), bins = int64_t(PH) * PW;
  const A* rois = rois_a.const_data_ptr<A>();
  const A* gy = grad_a.const_data_ptr<A>();
  const int32_t* am = argmax.const_data_ptr<int32_t>();
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t r = 0; r < K; ++r) {
      const LevelGrad<A>& lv = levels[level_of_roi(level_of, r)];
      const int H = lv.H, W = lv.W;
      const int64_t HW = int64_t(H) * W;
      const A* roi = rois + r * 5;
      const int64_t n = static_cast<int64_t>(roi[0]);
      const roi::AlignGeom<A> g = roi::align_geom<A>(roi, lv.scale, PH, PW, sr, aligned);
      if (g.grid_h <= 0 || g.grid_w <= 0) continue;
      for (int64_t c = cb; c < ce; ++c) {
        A* plane = lv.gx + (n * C + c) * HW;
        for (int64_t b = 0; b < bins; ++b) {
          const int32_t a = am[(r * C + c) * bins + b];
          if (a < 0) continue;
          const int ph = static_cast<int>(b / PW), pw = static_cast<int>(b % PW);
          const A yy = roi::sample_coord(g.start_h, g.bin_h, ph, a / g.grid_w, g.grid_h);
          const A xx = roi::sample_coord(g.start_w, g.bin_w, pw, a % g.grid_w, g.grid_w);
          int yl, yh, xl, xh;
          A wyl, wyh, wxl, wxh;
          if (!roi::axis_taps(yy, H, yl, yh, wyl, wyh) || !roi::axis_taps(xx, W, xl, xh, wxl, wxh)) continue;
          const A gv = gy[(r * C + c) * bins + b];
          plane[int64_t(yl) * W + xl] += gv * (wyl * wxl);
          plane[int64_t(yl) * W + xh] += gv * (wyl * wxh);
          plane[int64_t(yh) * W + xl] += gv * (wyh * wxl);
          plane[int64_t(yh) * W + xh] += gv * (wyh * wxh);
        }
      }
    }
  });
}

// The CPU RoI Align backward: one gradient per level (levels undefined: one level, every RoI on it).
// The caller has checked the arguments but not their values.
std::vector<Tensor> align_backward_levels(const char* op, const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                          const Tensor& argmax, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                          int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                                          int64_t sampling_ratio, bool aligned, int64_t mode,
                                          const std::vector<bool>& channels_last) {
  check_cpu(op, "grad", grad);
  const int64_t L = static_cast<int64_t>(scales.size());
  const at::ScalarType at_ = acc_type(grad.scalar_type());
  const Tensor rois_a = rois.to(at_).contiguous();
  roi::check_batch_indices_cpu(op, rois_a, N);
  const Tensor level_t = levels.defined() ? levels.contiguous() : Tensor();
  if (level_t.defined()) check_level_values_cpu(op, level_t, L);
  std::vector<Tensor> gin(L);
  for (int64_t l = 0; l < L; ++l) gin[l] = at::zeros({N, C, heights[l], widths[l]}, grad.options().dtype(at_));
  if (grad.numel() > 0 && N * C > 0) {
    const Tensor grad_a = grad.to(at_).contiguous();
    if (mode == roi::kMax) {
      CVK_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
                      "argmax must be int32 with grad's shape ", grad.sizes(), ", got ", argmax.sizes());
      check_same_device(op, "argmax", argmax, "grad", grad);
    }
    const Tensor am = mode == roi::kMax ? argmax.contiguous() : argmax;
    const int64_t* level_of = level_t.defined() ? level_t.const_data_ptr<int64_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(at_, "roi_align_backward_cpu", [&] {
      std::vector<LevelGrad<scalar_t>> lv(L);
      for (int64_t l = 0; l < L; ++l)
        lv[l] = {gin[l].mutable_data_ptr<scalar_t>(), static_cast<int>(heights[l]), static_cast<int>(widths[l]),
                 static_cast<scalar_t>(scales[l])};
      if (mode == roi::kAvg)
        align_backward_avg<scalar_t>(grad_a, rois_a, level_of, lv, N, C, PH, PW, static_cast<int>(sampling_ratio),
                                     aligned);
      else
        align_backward_max<scalar_t>(grad_a, rois_a, level_of, am, lv, C, PH, PW, static_cast<int>(sampling_ratio),
                                     aligned);
    });
  }
  for (int64_t l = 0; l < L; ++l) gin[l] = gin[l].to(grad.scalar_type()).contiguous(fmt_of(channels_last[l]));
  return gin;
}

Tensor roi_align_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t sampling_ratio, bool aligned, int64_t mode, bool channels_last,
                              bool deterministic) {
  (void)deterministic;  // every CPU path is deterministic
  constexpr const char* op = "roi_align_backward";
  roi::check_backward_args(op, grad, rois, PH, PW, N, C, H, W);
  CVK_CHECK_VALUE(mode == 0 || mode == 1, op, "mode must be 0 (avg) or 1 (max), got ", mode);
  return align_backward_levels(op, grad, rois, Tensor(), argmax, {spatial_scale}, PH, PW, N, C, {H}, {W},
                               sampling_ratio, aligned, mode, {channels_last})[0];
}

std::vector<Tensor> roi_align_multilevel_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                                      const Tensor& argmax, at::ArrayRef<double> spatial_scales,
                                                      int64_t PH, int64_t PW, int64_t N, int64_t C,
                                                      at::IntArrayRef heights, at::IntArrayRef widths,
                                                      int64_t sampling_ratio, bool aligned, int64_t mode,
                                                      const c10::List<bool>& channels_last, bool deterministic) {
  (void)deterministic;
  constexpr const char* op = "roi_align_multilevel_backward";
  roi::check_multilevel_backward_args(op, grad, rois, levels, spatial_scales, PH, PW, N, C, heights, widths,
                                      static_cast<int64_t>(channels_last.size()), mode);
  return align_backward_levels(op, grad, rois, levels, argmax, spatial_scales, PH, PW, N, C, heights, widths,
                               sampling_ratio, aligned, mode, channels_last.vec());
}

// ------------------------------------------------------------------------------ RoI Pool

template <typename T>
void pool_forward_impl(const Tensor& input, const Tensor& rois_a, double scale_d, int PH, int PW, Tensor& out,
                       Tensor& argmax) {
  using A = at::opmath_type<T>;
  const int64_t K = rois_a.size(0), C = input.size(1);
  const int H = static_cast<int>(input.size(2)), W = static_cast<int>(input.size(3));
  const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
  const T* x = input.const_data_ptr<T>();
  const A* rois = rois_a.const_data_ptr<A>();
  T* y = out.mutable_data_ptr<T>();
  int32_t* am = argmax.mutable_data_ptr<int32_t>();
  const A scale = static_cast<A>(scale_d);
  const int64_t bins = int64_t(PH) * PW;
  at::parallel_for(0, K * C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t rc = begin; rc < end; ++rc) {
      const int64_t r = rc / C, c = rc % C;
      const A* roi = rois + r * 5;
      const int64_t n = static_cast<int64_t>(roi[0]);
      const roi::PoolGeom g = roi::pool_geom<A>(roi, scale);
      const T* xc = x + n * sN + c * sC;
      for (int ph = 0; ph < PH; ++ph) {
        int hs, he;
        roi::pool_bin<A>(g.start_h, g.size_h, ph, PH, H, hs, he);
        for (int pw = 0; pw < PW; ++pw) {
          int ws, we;
          roi::pool_bin<A>(g.start_w, g.size_w, pw, PW, W, ws, we);
          const bool empty = he <= hs || we <= ws;
          A best = empty ? A(0) : A(-FLT_MAX);
          int32_t besti = -1;
          for (int h = hs; h < he; ++h)
            for (int w = ws; w < we; ++w) {
              const A v = static_cast<A>(xc[h * sH + w * sW]);
              if (v > best) {
                best = v;
                besti = h * W + w;
              }
            }
          y[rc * bins + int64_t(ph) * PW + pw] = static_cast<T>(best);
          am[rc * bins + int64_t(ph) * PW + pw] = besti;
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> roi_pool_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                int64_t PH, int64_t PW) {
  constexpr const char* op = "roi_pool";
  roi::check_forward_args(op, input, rois, spatial_scale, PH, PW, 0);
  check_cpu(op, "input", input);
  CVK_CHECK_VALUE(input.size(2) * input.size(3) < (int64_t(1) << 31), op,
                  "input height * width must fit 32-bit argmax indices, got ", input.sizes());
  const int64_t K = rois.size(0), C = input.size(1);
  const Tensor rois_a = rois.to(acc_type(input.scalar_type())).contiguous();
  roi::check_batch_indices_cpu(op, rois_a, input.size(0));
  Tensor out = at::empty({K, C, PH, PW}, input.options());
  Tensor argmax = at::empty({K, C, PH, PW}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  CVK_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, op, "input must have a positive height and width, got ",
                  input.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cpu", [&] {
    pool_forward_impl<scalar_t>(input, rois_a, spatial_scale, static_cast<int>(PH), static_cast<int>(PW), out, argmax);
  });
  return {out, argmax};
}

Tensor roi_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                             int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last,
                             bool deterministic) {
  (void)deterministic;
  (void)spatial_scale;
  constexpr const char* op = "roi_pool_backward";
  roi::check_backward_args(op, grad, rois, PH, PW, N, C, H, W);
  check_cpu(op, "grad", grad);
  CVK_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
                  "argmax must be int32 with grad's shape ", grad.sizes(), ", got ", argmax.sizes());
  check_same_device(op, "argmax", argmax, "grad", grad);
  const at::ScalarType at_ = acc_type(grad.scalar_type());
  const Tensor rois_a = rois.to(at_).contiguous();
  roi::check_batch_indices_cpu(op, rois_a, N);
  Tensor gin = at::zeros({N, C, H, W}, grad.options().dtype(at_));
  if (grad.numel() > 0 && gin.numel() > 0) {
    const Tensor grad_a = grad.to(at_).contiguous();
    const Tensor am_t = argmax.contiguous();
    const int64_t K = rois.size(0), bins = PH * PW, HW = H * W;
    AT_DISPATCH_FLOATING_TYPES(at_, "roi_pool_backward_cpu", [&] {
      const scalar_t* ra = rois_a.const_data_ptr<scalar_t>();
      const scalar_t* gy = grad_a.const_data_ptr<scalar_t>();
      const int32_t* am = am_t.const_data_ptr<int32_t>();
      scalar_t* gx = gin.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t r = 0; r < K; ++r) {
          const int64_t n = static_cast<int64_t>(ra[r * 5]);
          for (int64_t c = cb; c < ce; ++c) {
            scalar_t* plane = gx + (n * C + c) * HW;
            const int64_t base = (r * C + c) * bins;
            for (int64_t b = 0; b < bins; ++b) {
              const int32_t a = am[base + b];
              if (a >= 0 && a < HW) plane[a] += gy[base + b];
            }
          }
        }
      });
    });
  }
  return gin.to(grad.scalar_type()).contiguous(fmt_of(channels_last));
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CPU, m) {
  m.impl("roi_align_forward", TORCH_FN(roi_align_forward_cpu));
  m.impl("roi_align_backward", TORCH_FN(roi_align_backward_cpu));
  m.impl("roi_align_multilevel_forward", TORCH_FN(roi_align_multilevel_forward_cpu));
  m.impl("roi_align_multilevel_backward", TORCH_FN(roi_align_multilevel_backward_cpu));
  m.impl("roi_pool_forward", TORCH_FN(roi_pool_forward_cpu));
  m.impl("roi_pool_backward", TORCH_FN(roi_pool_backward_cpu));
}

}  // namespace cvk
