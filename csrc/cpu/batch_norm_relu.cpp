// Fused BatchNorm(+residual add)+ReLU on CPU: cvkernels::bn_relu_forward / bn_relu_backward
// (schemas and semantics in csrc/cvkernels.cpp).
//
// Every tensor of a call is seen as (N, C, S) with the same element strides (the input's when it
// is dense and its spatial dims flatten, contiguous otherwise); tensors laid out differently are
// copied into that layout. Two loop shapes cover the layouts:
//   planar (NCHW-like):       per channel, the N*S values form strided runs; work is split into
//                             (channel, chunk of kChunk values) tasks.
//   channels_last ((N, C) and NHWC): channels are contiguous within a row (n, s); work is split
//                             into (row range, channel block) tasks with per-task partial sums.
// Precision: per-channel constants are double, and the elementwise expressions and the backward's
// per-channel sums are evaluated in compute_t (double for float32 input), so each output rounds
// once (in float32 about half the per-op error of torch's CPU batch norm + add + relu). The forward's
// statistics, whose errors a corrected two-pass algorithm keeps small, keep opmath_type partial
// sums (float for float32: that pass runs at the speed of the loads) over blocks of at most
// kLaneBlock values. Partial sums are added in double in a fixed order: results do not depend on
// the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cvk_checks.h"

namespace cvk {
namespace {

using at::Tensor;

constexpr int64_t kChunk = 4096;         // values per reduction chunk (re-read from cache in pass 2)
constexpr int64_t kChannelBlock = 1024;  // channels per channels_last task
constexpr int64_t kMaxRowTasks = 64;     // row ranges of a channels_last reduction
constexpr int64_t kGrain = 32768;        // values per parallel_for grain in elementwise passes
constexpr int64_t kLaneBlock = 128;      // values summed in opmath_t lanes before a double add

// Arithmetic of the elementwise passes and of the backward's sums: double for float32 and float64,
// float for float16 / bfloat16. In float32 an expression such as (x - mean) * scale + shift (+ r)
// would round three or four times, more than torch's x * alpha + beta, and float lanes summing
// thousands of values round more than torch's double accumulator.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>,
                                     float, double>;

// Element strides of the (N, C, S) view shared by every tensor of a call.
struct Layout {
  int64_t N, C, S;
  int64_t sN, sC, sS;

  int64_t rows() const { return N * S; }  // per channel, values r in [0, N*S)
  int64_t row_offset(int64_t r) const { return N == 1 ? r * sS : (r / S) * sN + (r % S) * sS; }
  bool channels_last() const { return C > 1 && sC == 1 && !(S > 1 && sS == 1); }
};

Layout make_layout(const Tensor& x3) {
  Layout L{x3.size(0), x3.size(1), x3.size(2), x3.stride(0), x3.stride(1), x3.stride(2)};
  // Fold N into S when the (N, S) grid is one strided sequence ((N, C) inputs, dense NCHW with
  // C == 1, dense NHWC): the loops then see long runs and skip the (n, s) split.
  if (L.S == 1) {
    L.S = L.N;
    L.sS = L.sN;
    L.N = 1;
  } else if (L.N > 1 && L.sN == L.S * L.sS) {
    L.S *= L.N;
    L.N = 1;
  }
  if (L.N == 1) L.sN = 0;
  return L;
}

// Calls f(offset, len) for the runs of values r in [r0, r1) of one channel; the values of a run
// are at offset + i * L.sS, i < len (offsets relative to the channel's first value).
template <typename F>
inline void for_each_run(const Layout& L, int64_t r0, int64_t r1, const F& f) {
  int64_t n = r0 / L.S, s = r0 % L.S;
  while (r0 < r1) {
    const int64_t len = std::min(L.S - s, r1 - r0);
    f(n * L.sN + s * L.sS, len);
    r0 += len;
    ++n;
    s = 0;
  }
}

// Runs f with a compile-time unit stride when stride == 1 (so the inner loops vectorize).
template <typename F>
inline void with_stride(int64_t stride, const F& f) {
  if (stride == 1) {
    f(std::integral_constant<int64_t, 1>{});
  } else {
    f(stride);
  }
}

// Sums the pairs (a, b) that f(i, a, b) writes over i < len (f may leave b untouched: it then
// costs nothing), in double. `omp simd` keeps one acc_t partial sum per vector lane (the loop
// vectorizes) over blocks of kLaneBlock values; each block's sum is added in double, so a float
// acc_t rounds as a kLaneBlock-value sum whatever len is.
template <typename acc_t, typename F>
inline std::pair<double, double> lane_sum(int64_t len, const F& f) {
  double sa = 0, sb = 0;
  for (int64_t i0 = 0; i0 < len; i0 += kLaneBlock) {
    const int64_t i1 = std::min(i0 + kLaneBlock, len);
    acc_t ba = 0, bb = 0;
#pragma omp simd reduction(+ : ba, bb)
    for (int64_t i = i0; i < i1; ++i) {
      acc_t a = 0, b = 0;
      f(i, a, b);
      ba += a;
      bb += b;
    }
    sa += ba;
    sb += bb;
  }
  return {sa, sb};
}

// Chan et al.: merges (nb, mean_b, m2_b) into (n, mean, m2), m2 = sum of squared deviations.
inline void merge_moments(double n, double& mean, double& m2, double nb, double mean_b, double m2_b) {
  if (nb == 0) return;
  const double total = n + nb, delta = mean_b - mean;
  mean += delta * (nb / total);
  m2 += m2_b + delta * delta * (n * nb / total);
}

// Per-channel mean and sum of squared deviations of x. Per chunk, the corrected two-pass
// algorithm (Chan, Golub & LeVeque): pass 1 gives an approximate mean m; pass 2 (the chunk is
// still in cache) sums d = x - m and d^2, so mean = m + sum(d)/n, M2 = sum(d^2) - sum(d)^2/n
// remove the error of m. Chunks are merged with Chan's formula in double.
template <typename scalar_t>
void channel_moments(const scalar_t* x, const Layout& L, std::vector<double>& mean, std::vector<double>& m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = L.C, rows = L.rows();
  mean.assign(C, 0.0);
  m2.assign(C, 0.0);
  if (C == 0 || rows == 0) return;

  if (!L.channels_last()) {
    const int64_t nchunk = ceil_div(rows, kChunk);
    std::vector<double> pmean(C * nchunk), pm2(C * nchunk);
    at::parallel_for(0, C * nchunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c = task / nchunk, r0 = (task % nchunk) * kChunk, r1 = std::min(r0 + kChunk, rows);
        const scalar_t* xc = x + c * L.sC;
        const double count = static_cast<double>(r1 - r0);
        double sum = 0, dsum = 0, dsq = 0;
        with_stride(L.sS, [&](auto st) {
          for_each_run(L, r0, r1, [&](int64_t off, int64_t len) {
            sum += lane_sum<acc_t>(len, [&](int64_t i, acc_t& a, acc_t&) {
              a = static_cast<acc_t>(xc[off + i * st]);
            }).first;
          });
          const acc_t m = static_cast<acc_t>(sum / count);
          for_each_run(L, r0, r1, [&](int64_t off, int64_t len) {
            const auto s = lane_sum<acc_t>(len, [&](int64_t i, acc_t& a, acc_t& b) {
              a = static_cast<acc_t>(xc[off + i * st]) - m;
              b = a * a;
            });
            dsum += s.first;
            dsq += s.second;
          });
          pmean[task] = m + dsum / count;
          pm2[task] = std::max(0.0, dsq - dsum * dsum / count);
        });
      }
    });
    at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double n = 0;
        for (int64_t k = 0; k < nchunk; ++k) {
          const double nb = static_cast<double>(std::min(kChunk, rows - k * kChunk));
          merge_moments(n, mean[c], m2[c], nb, pmean[c * nchunk + k], pm2[c * nchunk + k]);
          n += nb;
        }
      }
    });
    return;
  }

  const int64_t cw_max = std::min(C, kChannelBlock), ncb = ceil_div(C, cw_max);
  const int64_t sub = std::clamp<int64_t>(kChunk / cw_max, 1, kLaneBlock);  // rows per chunk
  const int64_t ntask = std::min(ceil_div(rows, sub), kMaxRowTasks), rows_per_task = ceil_div(rows, ntask);
  std::vector<double> pmean(ntask * C), pm2(ntask * C);
  at::parallel_for(0, ntask * ncb, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> cm(cw_max), cd(cw_max), cd2(cw_max);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / ncb, c0 = (task % ncb) * cw_max, cw = std::min(cw_max, C - c0);
      const int64_t r_begin = std::min(t * rows_per_task, rows), r_end = std::min(r_begin + rows_per_task, rows);
      double* tmean = &pmean[t * C + c0];
      double* tm2 = &pm2[t * C + c0];
      double n = 0;
      for (int64_t rb = r_begin; rb < r_end; rb += sub) {
        const int64_t re = std::min(rb + sub, r_end);
        const acc_t inv_count = acc_t(1) / static_cast<acc_t>(re - rb);
        std::fill(cm.begin(), cm.begin() + cw, acc_t(0));
        std::fill(cd.begin(), cd.begin() + cw, acc_t(0));
        std::fill(cd2.begin(), cd2.begin() + cw, acc_t(0));
        for (int64_t r = rb; r < re; ++r) {
          const scalar_t* p = x + L.row_offset(r) + c0;
          for (int64_t j = 0; j < cw; ++j) cm[j] += static_cast<acc_t>(p[j]);
        }
        for (int64_t j = 0; j < cw; ++j) cm[j] *= inv_count;
        for (int64_t r = rb; r < re; ++r) {
          const scalar_t* p = x + L.row_offset(r) + c0;
          for (int64_t j = 0; j < cw; ++j) {
            const acc_t d = static_cast<acc_t>(p[j]) - cm[j];
            cd[j] += d;
            cd2[j] += d * d;
          }
        }
        const double nb = static_cast<double>(re - rb);
        for (int64_t j = 0; j < cw; ++j) {
          const double dsum = cd[j];
          merge_moments(n, tmean[j], tm2[j], nb, cm[j] + dsum / nb, std::max(0.0, cd2[j] - dsum * dsum / nb));
        }
        n += nb;
      }
    }
  });
  for (int64_t t = 0; t < ntask; ++t) {
    const int64_t r_begin = std::min(t * rows_per_task, rows);
    const double n = static_cast<double>(r_begin), nb = static_cast<double>(std::min(r_begin + rows_per_task, rows) - r_begin);
    for (int64_t c = 0; c < C; ++c) merge_moments(n, mean[c], m2[c], nb, pmean[t * C + c], pm2[t * C + c]);
  }
}

// Per-channel sums of the pairs (a, b) that make(c)(i, a, b) writes for every element i of
// channel c (the element functor may also write outputs at i). Returns {sum a, sum b} per channel
// as sums[2 * c], sums[2 * c + 1], in double.
template <typename acc_t, typename Make>
std::vector<double> channel_sums(const Layout& L, const Make& make) {
  const int64_t C = L.C, rows = L.rows();
  std::vector<double> sums(2 * C, 0.0);
  if (C == 0 || rows == 0) return sums;

  if (!L.channels_last()) {
    const int64_t nchunk = ceil_div(rows, kChunk);
    std::vector<double> partial(2 * C * nchunk);
    at::parallel_for(0, C * nchunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c = task / nchunk, r0 = (task % nchunk) * kChunk, r1 = std::min(r0 + kChunk, rows);
        const auto elem = make(c);
        const int64_t base = c * L.sC;
        double sa = 0, sb = 0;
        with_stride(L.sS, [&](auto st) {
          for_each_run(L, r0, r1, [&](int64_t off, int64_t len) {
            const auto s = lane_sum<acc_t>(len, [&](int64_t i, acc_t& a, acc_t& b) { elem(base + off + i * st, a, b); });
            sa += s.first;
            sb += s.second;
          });
        });
        partial[2 * task] = sa;
        partial[2 * task + 1] = sb;
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t k = 0; k < nchunk; ++k) {
        sums[2 * c] += partial[2 * (c * nchunk + k)];
        sums[2 * c + 1] += partial[2 * (c * nchunk + k) + 1];
      }
    }
    return sums;
  }

  const int64_t cw_max = std::min(C, kChannelBlock), ncb = ceil_div(C, cw_max);
  const int64_t sub = std::clamp<int64_t>(kChunk / cw_max, 1, kLaneBlock);
  const int64_t ntask = std::min(ceil_div(rows, sub), kMaxRowTasks), rows_per_task = ceil_div(rows, ntask);
  std::vector<double> partial(2 * ntask * C, 0.0);  // [task][channel][a or b]
  at::parallel_for(0, ntask * ncb, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_a(cw_max), acc_b(cw_max);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / ncb, c0 = (task % ncb) * cw_max, cw = std::min(cw_max, C - c0);
      const int64_t r_begin = std::min(t * rows_per_task, rows), r_end = std::min(r_begin + rows_per_task, rows);
      double* out = &partial[2 * (t * C + c0)];
      for (int64_t rb = r_begin; rb < r_end; rb += sub) {
        const int64_t re = std::min(rb + sub, r_end);
        std::fill(acc_a.begin(), acc_a.end(), acc_t(0));
        std::fill(acc_b.begin(), acc_b.end(), acc_t(0));
        acc_t* sa = acc_a.data();
        acc_t* sb = acc_b.data();
        for (int64_t r = rb; r < re; ++r) {
          const int64_t base = L.row_offset(r) + c0;
#pragma omp simd
          for (int64_t j = 0; j < cw; ++j) {
            acc_t a = 0, b = 0;
            make(c0 + j)(base + j, a, b);
            sa[j] += a;
            sb[j] += b;
          }
        }
        for (int64_t j = 0; j < cw; ++j) {
          out[2 * j] += acc_a[j];
          out[2 * j + 1] += acc_b[j];
        }
      }
    }
  });
  for (int64_t t = 0; t < ntask; ++t) {
    for (int64_t i = 0; i < 2 * C; ++i) sums[i] += partial[2 * t * C + i];
  }
  return sums;
}

// Calls make(c)(i) for every element i (channel c) of the layout, in parallel.
template <typename Make>
void for_each_element(const Layout& L, const Make& make) {
  const int64_t C = L.C, rows = L.rows();
  if (C == 0 || rows == 0) return;
  if (L.channels_last()) {
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = L.row_offset(r);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) make(c)(base + c);
      }
    });
    return;
  }
  const int64_t nchunk = ceil_div(rows, kChunk);
  at::parallel_for(0, C * nchunk, std::max<int64_t>(1, kGrain / kChunk), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / nchunk, r0 = (task % nchunk) * kChunk, r1 = std::min(r0 + kChunk, rows);
      const auto elem = make(c);
      const int64_t base = c * L.sC;
      with_stride(L.sS, [&](auto st) {
        for_each_run(L, r0, r1, [&](int64_t off, int64_t len) {
#pragma omp simd
          for (int64_t i = 0; i < len; ++i) elem(base + off + i * st);
        });
      });
    }
  });
}

// ----------------------------------------------------------------------------- layouts

// t's values as an (N, C, S) tensor laid out exactly like x3: a view when t already is, else a copy.
Tensor read_like(const Tensor& t, const Tensor& x3) {
  if (auto v = try_view_ncs(t); v && same_layout(*v, x3)) return *v;
  Tensor tmp = at::empty_strided(x3.sizes(), x3.strides(), t.options());
  tmp.view(t.sizes()).copy_(t);
  return tmp;
}

// A result of `like`'s shape and memory format (empty_like) written through an (N, C, S) tensor
// laid out like x3; when the two layouts differ the kernel writes a temporary copied in finish().
struct NcsOutput {
  Tensor full, ncs;
  bool copy_back = false;

  NcsOutput(const Tensor& like, const Tensor& x3) : full(at::empty_like(like)) {
    auto v = try_view_ncs(full);
    if (v && same_layout(*v, x3)) {
      ncs = *v;
    } else {
      ncs = at::empty_strided(x3.sizes(), x3.strides(), full.options());
      copy_back = true;
    }
  }
  Tensor finish() {
    if (copy_back) full.copy_(ncs.view(full.sizes()));
    return full;
  }
};

// The dense tensor the kernels read: input itself when dense, else a dense copy in its layout.
Tensor dense(const Tensor& input) {
  return input.is_non_overlapping_and_dense() ? input : at::empty_like(input).copy_(input);
}

std::vector<double> to_double_vector(const Tensor& t, int64_t C, double fill) {
  if (!t.defined()) return std::vector<double>(C, fill);
  const Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + C);
}

Tensor from_double_vector(const std::vector<double>& v, const at::TensorOptions& opts) {
  Tensor d = at::empty({static_cast<int64_t>(v.size())}, opts.dtype(at::kDouble));
  std::copy(v.begin(), v.end(), d.data_ptr<double>());
  return d;
}

Tensor defined_or_empty(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? *t : Tensor();
}

at::ScalarType stat_dtype(const Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_input(const char* op, const Tensor& input) {
  CVK_CHECK_VALUE(input.dim() >= 2, op, "input must have shape (N, C) or (N, C, *spatial), got a ", input.dim(),
                  "-D tensor of shape ", input.sizes());
  check_kernel_float(op, "input", input);
  check_cpu(op, "input", input);
}

// ----------------------------------------------------------------------------- forward

template <typename scalar_t>
void forward_kernel(const Tensor& x3, const Tensor& res3, const Tensor& y3, const std::vector<double>& mean,
                    const std::vector<double>& scale, const std::vector<double>& shift) {
  using acc_t = compute_t<scalar_t>;
  using opmath_t = at::opmath_type<scalar_t>;
  const Layout L = make_layout(x3);
  const std::vector<acc_t> m(mean.begin(), mean.end()), sc(scale.begin(), scale.end()),
      sh(shift.begin(), shift.end());
  const scalar_t* x = x3.const_data_ptr<scalar_t>();
  scalar_t* y = y3.data_ptr<scalar_t>();
  auto run = [&](auto has_res) {
    const scalar_t* r = has_res ? res3.const_data_ptr<scalar_t>() : nullptr;
    for_each_element(L, [&](int64_t c) {
      const acc_t mc = m[c], scc = sc[c], shc = sh[c];
      return [=](int64_t i) {
        acc_t v = (static_cast<acc_t>(x[i]) - mc) * scc + shc;
        if constexpr (decltype(has_res)::value) v += static_cast<acc_t>(r[i]);
        // ReLU of the rounded value, as torch.relu of a rounded batch_norm output (-0 and NaN
        // propagate); a select after the narrowing conversion vectorizes, one before it does not.
        const opmath_t o = static_cast<opmath_t>(v);
        y[i] = static_cast<scalar_t>(o < opmath_t(0) ? opmath_t(0) : o);
      };
    });
  };
  if (res3.defined()) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

std::tuple<Tensor, Tensor, Tensor> bn_relu_forward_cpu(
    const Tensor& input, const std::optional<Tensor>& weight_opt, const std::optional<Tensor>& bias_opt,
    const std::optional<Tensor>& residual_opt, const std::optional<Tensor>& running_mean_opt,
    const std::optional<Tensor>& running_var_opt, bool training, double momentum, double eps) {
  constexpr const char* op = "bn_relu_forward";
  check_input(op, input);
  const Tensor weight = defined_or_empty(weight_opt), bias = defined_or_empty(bias_opt);
  const Tensor residual = defined_or_empty(residual_opt);
  const Tensor running_mean = defined_or_empty(running_mean_opt), running_var = defined_or_empty(running_var_opt);
  if (weight.defined()) check_per_channel(op, "weight", weight, "input", input);
  if (bias.defined()) check_per_channel(op, "bias", bias, "input", input);
  if (running_mean.defined()) check_per_channel(op, "running_mean", running_mean, "input", input);
  if (running_var.defined()) check_per_channel(op, "running_var", running_var, "input", input);
  CVK_CHECK_VALUE(running_mean.defined() == running_var.defined(), op,
                  "running_mean and running_var must be given together, got only ",
                  running_mean.defined() ? "running_mean" : "running_var");
  CVK_CHECK_VALUE(training || running_mean.defined(), op,
                  "running_mean and running_var are required when training=False");
  if (residual.defined()) {
    check_same_device(op, "residual", residual, "input", input);
    check_same_shape(op, "residual", residual, "input", input);
    check_same_dtype(op, "residual", residual, "input", input);
  }

  const int64_t C = input.size(1), n = input.size(0) * spatial_numel(input);
  CVK_CHECK_VALUE(!training || C == 0 || n > 1, op,
                  "Expected more than 1 value per channel when training, got input size ", input.sizes());

  const Tensor x3 = view_ncs(dense(input));
  const Tensor res3 = residual.defined() ? read_like(residual, x3) : Tensor();
  NcsOutput out(input, x3);
  const auto stat_opts = input.options().dtype(stat_dtype(input));

  std::vector<double> mean, invstd(C);
  if (training) {
    std::vector<double> m2;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_relu_forward_stats", [&] {
      channel_moments<scalar_t>(x3.const_data_ptr<scalar_t>(), make_layout(x3), mean, m2);
    });
    std::vector<double> var(C), unbiased(C);
    for (int64_t c = 0; c < C; ++c) {
      var[c] = m2[c] / static_cast<double>(n);
      unbiased[c] = m2[c] / static_cast<double>(n - 1);
      invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    }
    if (running_mean.defined()) {
      std::vector<double> rm = to_double_vector(running_mean, C, 0.0), rv = to_double_vector(running_var, C, 0.0);
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = (1.0 - momentum) * rm[c] + momentum * mean[c];
        rv[c] = (1.0 - momentum) * rv[c] + momentum * unbiased[c];
      }
      running_mean.copy_(from_double_vector(rm, stat_opts));
      running_var.copy_(from_double_vector(rv, stat_opts));
    }
  } else {
    mean = to_double_vector(running_mean, C, 0.0);
    const std::vector<double> rv = to_double_vector(running_var, C, 0.0);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(rv[c] + eps);
  }
  Tensor save_mean = from_double_vector(mean, stat_opts).to(stat_dtype(input));
  Tensor save_invstd = from_double_vector(invstd, stat_opts).to(stat_dtype(input));

  // The kernel uses the statistics in double, not as saved (rounded to the stat dtype): the
  // output is then within one rounding of relu(batch_norm(x) + residual) with exact statistics.
  std::vector<double> scale = to_double_vector(weight, C, 1.0), shift = to_double_vector(bias, C, 0.0);
  for (int64_t c = 0; c < C; ++c) scale[c] *= invstd[c];

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_relu_forward", [&] {
    forward_kernel<scalar_t>(x3, res3, out.ncs, mean, scale, shift);
  });
  return {out.finish(), save_mean, save_invstd};
}

// ----------------------------------------------------------------------------- backward

// ReLU backward as torch's threshold_backward: zero where output <= 0 (NaN passes), then widened
// to acc_t. Both values are loaded unconditionally and the zeroing is a bit mask: a select followed
// by a widening conversion is not if-converted under -ftrapping-math, and the loop would not
// vectorize.
template <typename acc_t, typename scalar_t>
inline acc_t relu_grad(scalar_t grad_output, scalar_t output) {
  using opmath_t = at::opmath_type<scalar_t>;
  using bits_t = std::conditional_t<sizeof(opmath_t) == 8, uint64_t, uint32_t>;
  const opmath_t g = static_cast<opmath_t>(grad_output);
  bits_t b;
  std::memcpy(&b, &g, sizeof(b));
  b &= bits_t(0) - static_cast<bits_t>(!(static_cast<opmath_t>(output) <= opmath_t(0)));
  opmath_t kept;
  std::memcpy(&kept, &b, sizeof(b));
  return static_cast<acc_t>(kept);
}

// Returns (sum g, sum g * (x - mean)) per channel, g = grad_output * (output > 0); writes
// grad_residual = g when dres3 is defined and, in eval mode, grad_input = g * weight * invstd.
template <typename scalar_t>
std::vector<double> backward_reduce(const Layout& L, const Tensor& gy3, const Tensor& y3, const Tensor& x3,
                                    const Tensor& dres3, const Tensor& dx3_eval, const std::vector<double>& mean,
                                    const std::vector<double>& k1) {
  using acc_t = compute_t<scalar_t>;
  const std::vector<acc_t> m(mean.begin(), mean.end()), k(k1.begin(), k1.end());
  const scalar_t* gy = gy3.const_data_ptr<scalar_t>();
  const scalar_t* y = y3.const_data_ptr<scalar_t>();
  const scalar_t* x = x3.const_data_ptr<scalar_t>();
  scalar_t* dres = dres3.defined() ? dres3.data_ptr<scalar_t>() : nullptr;
  scalar_t* dx = dx3_eval.defined() ? dx3_eval.data_ptr<scalar_t>() : nullptr;
  std::vector<double> sums;
  auto run = [&](auto write_res, auto write_dx) {
    sums = channel_sums<acc_t>(L, [&](int64_t c) {
      const acc_t mc = m[c], kc = k[c];
      return [=](int64_t i, acc_t& sum_g, acc_t& sum_gd) {
        const acc_t g = relu_grad<acc_t>(gy[i], y[i]);
        if constexpr (decltype(write_res)::value) dres[i] = static_cast<scalar_t>(g);
        if constexpr (decltype(write_dx)::value) dx[i] = static_cast<scalar_t>(g * kc);
        sum_g = g;
        sum_gd = g * (static_cast<acc_t>(x[i]) - mc);
      };
    });
  };
  if (dres && dx) {
    run(std::true_type{}, std::true_type{});
  } else if (dres) {
    run(std::true_type{}, std::false_type{});
  } else if (dx) {
    run(std::false_type{}, std::true_type{});
  } else {
    run(std::false_type{}, std::false_type{});
  }
  return sums;
}

// Training-mode grad_input = k1 * (g - a - (x - mean) * b) per channel.
template <typename scalar_t>
void backward_input(const Layout& L, const Tensor& gy3, const Tensor& y3, const Tensor& x3, const Tensor& dx3,
                    const std::vector<double>& mean, const std::vector<double>& k1, const std::vector<double>& a,
                    const std::vector<double>& b) {
  using acc_t = compute_t<scalar_t>;
  const std::vector<acc_t> m(mean.begin(), mean.end()), k(k1.begin(), k1.end()), av(a.begin(), a.end()),
      bv(b.begin(), b.end());
  const scalar_t* gy = gy3.const_data_ptr<scalar_t>();
  const scalar_t* y = y3.const_data_ptr<scalar_t>();
  const scalar_t* x = x3.const_data_ptr<scalar_t>();
  scalar_t* dx = dx3.data_ptr<scalar_t>();
  for_each_element(L, [&](int64_t c) {
    const acc_t mc = m[c], kc = k[c], ac = av[c], bc = bv[c];
    return [=](int64_t i) {
      const acc_t g = relu_grad<acc_t>(gy[i], y[i]);
      dx[i] = static_cast<scalar_t>(kc * (g - ac - (static_cast<acc_t>(x[i]) - mc) * bc));
    };
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_relu_backward_cpu(
    const Tensor& grad_output, const Tensor& output, const Tensor& input, const std::optional<Tensor>& weight_opt,
    const Tensor& save_mean, const Tensor& save_invstd, bool training, bool has_residual) {
  constexpr const char* op = "bn_relu_backward";
  check_input(op, input);
  auto check_like_input = [&](const char* name, const Tensor& t) {
    check_same_device(op, name, t, "input", input);
    check_same_shape(op, name, t, "input", input);
    check_same_dtype(op, name, t, "input", input);
  };
  check_like_input("grad_output", grad_output);
  check_like_input("output", output);
  const Tensor weight = defined_or_empty(weight_opt);
  if (weight.defined()) check_per_channel(op, "weight", weight, "input", input);
  check_per_channel(op, "save_mean", save_mean, "input", input);
  check_per_channel(op, "save_invstd", save_invstd, "input", input);

  const int64_t C = input.size(1), n = input.size(0) * spatial_numel(input);
  const Tensor x3 = view_ncs(dense(input));
  const Tensor gy3 = read_like(grad_output, x3), y3 = read_like(output, x3);
  const Layout L = make_layout(x3);
  NcsOutput grad_input(input, x3);
  std::optional<NcsOutput> grad_residual;
  if (has_residual) grad_residual.emplace(input, x3);

  const std::vector<double> mean = to_double_vector(save_mean, C, 0.0), invstd = to_double_vector(save_invstd, C, 0.0);
  std::vector<double> k1 = to_double_vector(weight, C, 1.0);
  for (int64_t c = 0; c < C; ++c) k1[c] *= invstd[c];

  std::vector<double> sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_relu_backward_reduce", [&] {
    sums = backward_reduce<scalar_t>(L, gy3, y3, x3, has_residual ? grad_residual->ncs : Tensor(),
                                     training ? Tensor() : grad_input.ncs, mean, k1);
  });
  std::vector<double> grad_w(C), grad_b(C);
  for (int64_t c = 0; c < C; ++c) {
    grad_b[c] = sums[2 * c];
    grad_w[c] = sums[2 * c + 1] * invstd[c];
  }
  if (training && n > 0) {
    std::vector<double> a(C), b(C);
    for (int64_t c = 0; c < C; ++c) {
      a[c] = grad_b[c] / static_cast<double>(n);
      b[c] = invstd[c] * grad_w[c] / static_cast<double>(n);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_relu_backward_input", [&] {
      backward_input<scalar_t>(L, gy3, y3, x3, grad_input.ncs, mean, k1, a, b);
    });
  }

  const auto grad_dtype = weight.defined() ? weight.scalar_type() : stat_dtype(input);
  const auto opts = input.options();
  return {grad_input.finish(), from_double_vector(grad_w, opts).to(grad_dtype),
          from_double_vector(grad_b, opts).to(grad_dtype),
          has_residual ? grad_residual->finish() : at::empty({0}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CPU, m) {
  m.impl("bn_relu_forward", TORCH_FN(bn_relu_forward_cpu));
  m.impl("bn_relu_backward", TORCH_FN(bn_relu_backward_cpu));
}

}  // namespace cvk
