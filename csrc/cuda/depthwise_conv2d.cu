// Depthwise conv2d (channel multiplier M) in CUDA: forward (+bias, +activation), grad-input and
// grad-weight, float32/float16/bfloat16 with float32 accumulation, dense NCHW or channels_last (NHWC).
// Semantics and the launchers' contract: csrc/include/cvk_depthwise_conv2d.h. CUDA headers only, so
// nvcc compiles this file anywhere (tests/test_cuda_sources.py).
//
// ---------------------------------------------------------------------------------------- design
// All kernels see a 4-D tensor as (n, channel, outer, strip): the "strip" axis is the one each thread
// walks through a short run of kTile consecutive outputs, the "outer" axis the other spatial axis.
//   channels_last: strip = W, outer = H. Consecutive threads take consecutive channel vectors of V
//                  channels (V * sizeof(T) = 16 bytes when C % V == 0 and M == 1, else V = 1), so
//                  every warp load/store is a contiguous, coalesced run along C.
//   NCHW:          strip = H, outer = W. Consecutive threads take consecutive outer positions (W),
//                  so loads and stores are coalesced along W; each thread produces kTile rows of one
//                  column.
// Register tiling along the strip: for one outer tap (kh for NHWC, kw for NCHW) a thread keeps its
// kTile accumulators and the K_s weights of that tap row in registers and streams the
// (kTile - 1) * S_s + K_s input values of the row once, each feeding every (output, tap) pair it
// belongs to. Versus the naive kTile * K_s loads this is 2x fewer loads for 3-tap kernels, 2.5x for
// 5, 2.8x for 7 (stride 1). The tap count K_s and stride S_s are compile-time for the common shapes
// (K_s in {3,5,7}, S_s in {1,2}, dilation 1); other sizes with stride 1 and dilation 1 run the same
// code over chunks of 8 taps; any other stride/dilation runs a generic kernel that loads per
// (output, tap) and relies on L1.
// Reuse along the outer axis (the K_o input rows a thread's outputs need, shared with the threads
// of neighbouring output rows) is left to L1/L2 rather than shared memory: a shared-memory tile
// costs a halo of (K-1) rows/columns per tile plus a barrier, a direct L2 hit costs nothing extra
// in DRAM traffic. Expected bytes (forward, per output element, T = dtype size):
//   DRAM:   T (x, read once: the rows of one image that K_o neighbouring output rows share stay
//           in L2 while those rows are in flight) + T (y) + weights (negligible).
//   L2->SM: ~K_o * ((kTile-1)*S_s + K_s) / kTile * T, e.g. 4.5 T for 3x3/s1, 17.5 T for 7x7/s1.
// So the kernel should run at the DRAM floor (x + y bytes / bandwidth) for small kernels and become
// L1/L2-bound as K_o * K_s grows (7x7 and up); shared-memory tiling along the outer axis is the next
// step there if the measurements say so (bench/NOTES.md).
//
// grad_input is the same gather with the kernel flipped: for stride 1 along the strip axis it is
// exactly the forward's register tiling with flipped taps (padding K_s-1-P_s); for strides > 1 a
// generic kernel checks divisibility per (output, tap). The channel fan-in over M is a loop.
//
// grad_weight is a reduction over N*OH*OW positions per (channel, tap). A block owns up to 32
// channel vectors (NHWC) or one channel (NCHW), one outer tap and a chunk of TK strip taps, and
// a contiguous slice of the position "units" (n, outer row, strip tile of kTile outputs); its 256
// threads walk the slice's units in a fixed interleaving, each with TK x V fp32 accumulators and the
// same register tiling as the forward (the kTile grad_output values of a unit stay in registers, the
// input row streams once). Threads combine their sums with a fixed-order butterfly (__shfl_xor)
// within the warp and a fixed-order sum across the 8 warps in shared memory; every block writes one
// fp32 partial per (channel, tap) for its slice into a [splits][C_out][KH*KW] workspace, and a second
// kernel adds the slices in order and casts to the weight's dtype. No atomics: results are bitwise
// reproducible for a given device.
//
// Indexing: sizes, channel counts and the work items of one image are 32-bit (checked by
// geometry_ok), every element offset is 64-bit (n * batch stride etc.), and the grids are
// grid-stride loops over (items of an image) x (images), so no kernel runs a 64-bit integer division
// (the grad-weight kernel finds the image of its first unit from a double-precision estimate).
//
// Registers: every kernel is __launch_bounds__(256, 2) (at most 128 registers). Without the
// min-blocks hint ptxas capped some variants at 32-64 registers and spilled; with it no kernel
// spills on sm_90 (tests/test_cuda_sources.py checks). The 16-bit NHWC forward/grad-input kernels
// with 8-channel vectors and 5-7 taps use 120-128 registers (2 blocks = 16 warps per SM, each
// thread with 6-10 independent 16-byte loads in flight per row); if that occupancy proves too low,
// max_vec<T>() = 4 (8-byte loads) halves the vector registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cvk_depthwise_conv2d.h"

namespace cvk {
namespace dwconv {
namespace {

constexpr int kThreads = 256;                // threads per block, every kernel
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 4;                     // outputs per thread along the strip axis
constexpr int kChunk = 8;                    // taps per chunk for kernel sizes without a specialization
constexpr int64_t kMaxBlocks = int64_t(1) << 24;  // grid-stride loops cover the rest
constexpr int kWeightVec = 4;                // channels per thread in the NHWC grad-weight kernel

template <typename T>
constexpr int max_vec() {
  return static_cast<int>(16 / sizeof(T));   // 16-byte loads: 4 x fp32, 8 x fp16/bf16
}

// ------------------------------------------------------------------------------- element helpers

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V consecutive elements at p (aligned to V * sizeof(T)) as floats.
template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_float(pk.v[i]);
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) pk.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

template <int V>
__device__ __forceinline__ void zero_vec(float (&out)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = 0.f;
}

// NaN-propagating like torch's relu / hardtanh / silu.
__device__ __forceinline__ float activate(float v, int act) {
  switch (act) {
    case 1: return v < 0.f ? 0.f : v;
    case 2: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case 3: return __fdividef(v, 1.f + expf(-v));  // no slow-path call; 0 once exp(-v) > 2^126
    default: return v;
  }
}

// ------------------------------------------------------------------- forward and grad-input
// "in" is the tensor read (x for the forward, grad_output for grad-input), "out" the one written.
struct LineArgs {
  int64_t N;
  int C_out;        // channels of `out`
  int M;            // channel multiplier
  int F;            // NHWC: channel vectors of `out` (C_out / V); unused for NCHW
  int tiles;        // ceil(out_s / kTile)
  int items;        // work items per image: out_o * tiles * (C_out / V); fits in 31 bits (checked)
  int in_o, in_s;   // `in` sizes along the outer / strip axes
  int out_o, out_s; // `out` sizes along the outer / strip axes
  int K_o, K_s, S_o, S_s, P_o, P_s, D_o, D_s;  // convolution along the outer / strip axes
  int64_t in_sn, in_sc, in_so, in_ss;      // element strides of `in`
  int64_t out_sn, out_sc, out_so, out_ss;  // element strides of `out`
  int64_t w_sc, w_so, w_ss;                // element strides of the float weight buffer
  int act;
};

// Work item i of an image -> (channel, outer index, strip tile), 32-bit arithmetic. NHWC: channel
// vector fastest, then strip tile, then outer (H). NCHW: outer (W) fastest, then strip tile, channel.
template <bool NHWC, int V>
__device__ __forceinline__ void decompose(unsigned i, const LineArgs& a, int& c, int& o, int& tile) {
  if (NHWC) {
    const unsigned F = static_cast<unsigned>(a.F), r = i / F;
    c = static_cast<int>(i - r * F) * V;
    const unsigned tiles = static_cast<unsigned>(a.tiles), q = r / tiles;
    tile = static_cast<int>(r - q * tiles);
    o = static_cast<int>(q);
  } else {
    const unsigned O = static_cast<unsigned>(a.out_o), r = i / O;
    o = static_cast<int>(i - r * O);
    const unsigned tiles = static_cast<unsigned>(a.tiles), q = r / tiles;
    tile = static_cast<int>(r - q * tiles);
    c = static_cast<int>(q);
  }
}

// Grid: x covers the items of an image, y the images (both grid-stride).
#define CVK_DW_FOR_EACH_ITEM(a)                                                                        \
  for (int64_t n = blockIdx.y; n < (a).N; n += gridDim.y)                                            \
    for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < (a).items; \
         item += static_cast<int64_t>(gridDim.x) * blockDim.x)

// acc[j] += sum_k in[c0 + j*SS + k] * wr[k] over k < KC (stride SS, dilation 1 along the strip),
// loading each of the (kTile-1)*SS + KC input values once. Taps k >= k_end (past K_s in a partial
// chunk) are skipped, and so are loads that feed none; positions outside [0, in_s) are padding.
template <int V, int KC, bool EXACT, int SS, typename T>
__device__ __forceinline__ void strip_accumulate(float (&acc)[kTile][V], const T* __restrict__ row, int64_t in_ss,
                                                 int in_s, int c0, const float (&wr)[KC][V], int k_end) {
#pragma unroll
  for (int t = 0; t < (kTile - 1) * SS + KC; ++t) {
    // smallest tap index this input value feeds (its last output j); beyond the chunk's end: skip
    const int kmin = t - SS * ((t / SS) < (kTile - 1) ? (t / SS) : (kTile - 1));
    if (!EXACT && kmin >= k_end) continue;
    const int pos = c0 + t;
    if (pos < 0 || pos >= in_s) continue;
    float xv[V];
    load_vec<V>(row + pos * in_ss, xv);
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const int k = t - j * SS;
      if (k < 0 || k >= KC) continue;
      if (!EXACT && k >= k_end) continue;
#pragma unroll
      for (int v = 0; v < V; ++v) acc[j][v] = fmaf(xv[v], wr[k][v], acc[j][v]);
    }
  }
}

// Forward. KC/EXACT/SS: SS > 0 is the register-tiled path for stride SS and dilation 1 along the
// strip, over chunks of KC taps (EXACT: K_s == KC, one chunk); SS == 0 is the generic path.
template <typename T, int V, int KC, bool EXACT, int SS, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2)
dw_forward_kernel(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                  T* __restrict__ y, const LineArgs a) {
  CVK_DW_FOR_EACH_ITEM(a) {
    int co, oo, tile;
    decompose<NHWC, V>(static_cast<unsigned>(item), a, co, oo, tile);
    const int ci = co / a.M;  // V > 1 only when M == 1
    const int os0 = tile * kTile;
    const T* xb = x + n * a.in_sn + ci * a.in_sc;
    const float* wb = w + co * a.w_sc;

    float acc[kTile][V];
#pragma unroll
    for (int j = 0; j < kTile; ++j) zero_vec<V>(acc[j]);

    for (int ko = 0; ko < a.K_o; ++ko) {
      const int io = oo * a.S_o - a.P_o + ko * a.D_o;
      if (io < 0 || io >= a.in_o) continue;
      const T* row = xb + io * a.in_so;
      const float* wrow = wb + ko * a.w_so;
      if constexpr (SS > 0) {
        const int c0 = os0 * SS - a.P_s;
        const int kc_end = EXACT ? KC : a.K_s;
        for (int kc = 0; kc < kc_end; kc += KC) {
          const int k_end = a.K_s - kc;  // taps k < k_end of this chunk exist
          float wr[KC][V];
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            if (EXACT || k < k_end) load_vec<V>(wrow + (kc + k) * a.w_ss, wr[k]);
            else zero_vec<V>(wr[k]);
          }
          strip_accumulate<V, KC, EXACT, SS>(acc, row, a.in_ss, a.in_s, c0 + kc, wr, k_end);
        }
      } else {
        for (int ks = 0; ks < a.K_s; ++ks) {
          float wr[V];
          load_vec<V>(wrow + ks * a.w_ss, wr);
          const int off = ks * a.D_s - a.P_s;
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            const int pos = (os0 + j) * a.S_s + off;
            if (pos < 0 || pos >= a.in_s) continue;
            float xv[V];
            load_vec<V>(row + pos * a.in_ss, xv);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[j][v] = fmaf(xv[v], wr[v], acc[j][v]);
          }
        }
      }
    }

    float bv[V];
    if (bias != nullptr) load_vec<V>(bias + co, bv);
    else zero_vec<V>(bv);
    T* yb = y + n * a.out_sn + co * a.out_sc + oo * a.out_so;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const int os = os0 + j;
      if (os >= a.out_s) break;
      float r[V];
#pragma unroll
      for (int v = 0; v < V; ++v) r[v] = activate(acc[j][v] + bv[v], a.act);
      store_vec<V>(yb + os * a.out_ss, r);
    }
  }
}

// Grad-input: out = grad_input (C_in channels, input spatial size), in = grad_output.
// FAST: stride 1 and dilation 1 along the strip: the forward's tiling with the taps flipped
// (in position is + P_s - ks = c0 + t with c0 = is0 + P_s - (K_s-1), tap ks = K_s-1-k).
// Otherwise a generic gather with divisibility checks.
template <typename T, int V, int KC, bool EXACT, bool FAST, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2)
dw_backward_input_kernel(const T* __restrict__ gy, const float* __restrict__ w, T* __restrict__ gx,
                         const LineArgs a) {
  CVK_DW_FOR_EACH_ITEM(a) {
    int ci, io, tile;
    decompose<NHWC, V>(static_cast<unsigned>(item), a, ci, io, tile);
    const int is0 = tile * kTile;

    float acc[kTile][V];
#pragma unroll
    for (int j = 0; j < kTile; ++j) zero_vec<V>(acc[j]);

    for (int m = 0; m < a.M; ++m) {
      const int co = ci * a.M + m;  // V > 1 only when M == 1
      const T* gb = gy + n * a.in_sn + co * a.in_sc;
      const float* wb = w + co * a.w_sc;
      for (int ko = 0; ko < a.K_o; ++ko) {
        const int to = io + a.P_o - ko * a.D_o;  // = oo * S_o
        if (to < 0) break;                       // decreasing in ko
        const unsigned qo = static_cast<unsigned>(to) / static_cast<unsigned>(a.S_o);
        if (static_cast<unsigned>(to) != qo * static_cast<unsigned>(a.S_o)) continue;
        const int oo = static_cast<int>(qo);
        if (oo >= a.in_o) continue;
        const T* row = gb + oo * a.in_so;
        const float* wrow = wb + ko * a.w_so;
        if constexpr (FAST) {
          const int c0 = is0 + a.P_s - (a.K_s - 1);
          const int kc_end = EXACT ? KC : a.K_s;
          for (int kc = 0; kc < kc_end; kc += KC) {
            const int k_end = a.K_s - kc;
            float wr[KC][V];
#pragma unroll
            for (int k = 0; k < KC; ++k) {
              if (EXACT || k < k_end) load_vec<V>(wrow + (a.K_s - 1 - kc - k) * a.w_ss, wr[k]);
              else zero_vec<V>(wr[k]);
            }
            strip_accumulate<V, KC, EXACT, 1>(acc, row, a.in_ss, a.in_s, c0 + kc, wr, k_end);
          }
        } else {
          for (int ks = 0; ks < a.K_s; ++ks) {
            float wr[V];
            load_vec<V>(wrow + ks * a.w_ss, wr);
            const int off = a.P_s - ks * a.D_s;
#pragma unroll
            for (int j = 0; j < kTile; ++j) {
              const int ts = is0 + j + off;  // = os * S_s
              if (ts < 0) continue;
              const unsigned qs = static_cast<unsigned>(ts) / static_cast<unsigned>(a.S_s);
              if (static_cast<unsigned>(ts) != qs * static_cast<unsigned>(a.S_s)) continue;
              const int os = static_cast<int>(qs);
              if (os >= a.in_s) continue;
              float gv[V];
              load_vec<V>(row + os * a.in_ss, gv);
#pragma unroll
              for (int v = 0; v < V; ++v) acc[j][v] = fmaf(gv[v], wr[v], acc[j][v]);
            }
          }
        }
      }
    }

    T* xb = gx + n * a.out_sn + ci * a.out_sc + io * a.out_so;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const int is = is0 + j;
      if (is >= a.out_s) break;
      store_vec<V>(xb + is * a.out_ss, acc[j]);
    }
  }
}

// ------------------------------------------------------------------------------ grad-weight

struct WeightArgs {
  int C_out, M;
  int Cv;           // NHWC: channel vectors C_out / V; NCHW: C_out
  int cvb;          // NHWC: channel vectors per block (power of 2 <= 32); NCHW: 1
  int npg;          // position groups per block: kThreads / cvb
  int tiles;        // ceil(O_s / kTile)
  int nkc;          // tap chunks along the strip: ceil(K_s / TK)
  int I_o, I_s, O_o, O_s;
  int K_o, K_s, S_o, S_s, P_o, P_s, D_o, D_s;
  int64_t x_sn, x_sc, x_so, x_ss;
  int64_t g_sn, g_sc, g_so, g_ss;
  int tap_o, tap_s;  // tap (kh * KW + kw) = ko * tap_o + ks * tap_s
  int taps;          // KH * KW
  int per_image;     // units per image: O_o * tiles (fits in 31 bits, checked)
  double inv_per_image;  // 1.0 / per_image
  int64_t units;     // N * per_image
  int64_t chunk;     // units per split: split z covers [z * chunk, min((z + 1) * chunk, units))
};

// grid (channel blocks, K_o * nkc, splits), kThreads threads, dynamic shared memory
// TK * V * kWarps * cvb floats. Writes part[z][co][tap] for its channels and taps.
template <typename T, int V, int TK, bool EXACT, int SS, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2)
dw_backward_weight_kernel(const T* __restrict__ gy, const T* __restrict__ x, float* __restrict__ part,
                          const WeightArgs a) {
  extern __shared__ float red[];
  const int tid = threadIdx.x;
  const int lane = NHWC ? (tid & (a.cvb - 1)) : 0;
  const int pg = NHWC ? tid / a.cvb : tid;
  const int cv = NHWC ? blockIdx.x * a.cvb + lane : blockIdx.x;
  const int co = NHWC ? cv * V : cv;
  const int ko = blockIdx.y / a.nkc;
  const int ks0 = (blockIdx.y % a.nkc) * TK;
  const int64_t z = blockIdx.z;
  const int64_t u_begin = z * a.chunk;
  const int64_t u_end = u_begin + a.chunk < a.units ? u_begin + a.chunk : a.units;

  float acc[TK][V];
#pragma unroll
  for (int k = 0; k < TK; ++k) zero_vec<V>(acc[k]);

  if (cv < a.Cv) {
    const int ci = co / a.M;  // V > 1 only when M == 1
    const int k_end = a.K_s - ks0;
    // unit u = n * per_image + rem; (n, rem) advance incrementally (32-bit divisions only)
    const unsigned per_image = static_cast<unsigned>(a.per_image);
    int64_t u = u_begin + pg;
    // n = u / per_image without a 64-bit division call: a double estimate, then corrected
    int64_t n = static_cast<int64_t>(static_cast<double>(u) * a.inv_per_image);
    int64_t r0 = u - n * per_image;
    while (r0 < 0) { --n; r0 += per_image; }
    while (r0 >= per_image) { ++n; r0 -= per_image; }
    unsigned rem = static_cast<unsigned>(r0);
    for (; u < u_end; u += a.npg) {
      int oo, tile;
      if (NHWC) {
        const unsigned q = rem / static_cast<unsigned>(a.tiles);
        tile = static_cast<int>(rem - q * static_cast<unsigned>(a.tiles));
        oo = static_cast<int>(q);
      } else {
        const unsigned q = rem / static_cast<unsigned>(a.O_o);
        oo = static_cast<int>(rem - q * static_cast<unsigned>(a.O_o));
        tile = static_cast<int>(q);
      }
      // the next unit of this thread (computed first: the body below may `continue`)
      const int64_t n_cur = n;
      rem += static_cast<unsigned>(a.npg);
      if (rem >= per_image) {
        const unsigned q = rem / per_image;
        n += q;
        rem -= q * per_image;
      }
      const int io = oo * a.S_o - a.P_o + ko * a.D_o;
      if (io < 0 || io >= a.I_o) continue;
      const int os0 = tile * kTile;
      const int nj = min(kTile, a.O_s - os0);
      const T* grow = gy + n_cur * a.g_sn + co * a.g_sc + oo * a.g_so;
      const T* xrow = x + n_cur * a.x_sn + ci * a.x_sc + io * a.x_so;
      float g[kTile][V];
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        if (j < nj) load_vec<V>(grow + (os0 + j) * a.g_ss, g[j]);
        else zero_vec<V>(g[j]);
      }
      if constexpr (SS > 0) {
        const int c0 = os0 * SS - a.P_s + ks0;
#pragma unroll
        for (int t = 0; t < (kTile - 1) * SS + TK; ++t) {
          const int kmin = t - SS * ((t / SS) < (kTile - 1) ? (t / SS) : (kTile - 1));
          if (!EXACT && kmin >= k_end) continue;
          const int pos = c0 + t;
          if (pos < 0 || pos >= a.I_s) continue;
          float xv[V];
          load_vec<V>(xrow + pos * a.x_ss, xv);
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            const int k = t - j * SS;
            if (k < 0 || k >= TK || j >= nj) continue;
            if (!EXACT && k >= k_end) continue;
#pragma unroll
            for (int v = 0; v < V; ++v) acc[k][v] = fmaf(g[j][v], xv[v], acc[k][v]);
          }
        }
      } else {
#pragma unroll
        for (int k = 0; k < TK; ++k) {
          if (k >= k_end) break;
          const int off = (ks0 + k) * a.D_s - a.P_s;
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            if (j >= nj) break;
            const int pos = (os0 + j) * a.S_s + off;
            if (pos < 0 || pos >= a.I_s) continue;
            float xv[V];
            load_vec<V>(xrow + pos * a.x_ss, xv);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[k][v] = fmaf(g[j][v], xv[v], acc[k][v]);
          }
        }
      }
    }
  }

  // Block reduction in a fixed order: butterfly over the lanes of a warp that share a channel
  // (lane ids equal mod cvb), then the kWarps warp sums in shared memory.
  const int warp = tid >> 5, wl = tid & 31;
#pragma unroll
  for (int k = 0; k < TK; ++k) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float s = acc[k][v];
      for (int off = 16; off >= a.cvb; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (wl < a.cvb) red[((k * V + v) * kWarps + warp) * a.cvb + wl] = s;
    }
  }
  __syncthreads();
  const int outputs = a.cvb * TK * V;
  for (int e = tid; e < outputs; e += kThreads) {
    const int l = e % a.cvb, kv = e / a.cvb;
    float s = 0.f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) s += red[(kv * kWarps + wi) * a.cvb + l];
    const int k = kv / V, v = kv % V;
    const int ks = ks0 + k;
    const int cvl = NHWC ? static_cast<int>(blockIdx.x) * a.cvb + l : static_cast<int>(blockIdx.x);
    if (ks < a.K_s && cvl < a.Cv) {
      const int c = NHWC ? cvl * V + v : cvl;
      part[(z * a.C_out + c) * a.taps + ko * a.tap_o + ks * a.tap_s] = s;
    }
  }
}

// grad_weight[i] = sum_z part[z][i] in order of z, cast to T.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
dw_weight_finalize_kernel(const float* __restrict__ part, T* __restrict__ gw, int64_t count, int64_t splits) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
    float s = 0.f;
    for (int64_t z = 0; z < splits; ++z) s += part[z * count + i];
    gw[i] = from_float<T>(s);
  }
}

// --------------------------------------------------------------------------------- launchers

inline unsigned blocks_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
}

// (items of an image, images) for CVK_DW_FOR_EACH_ITEM.
inline dim3 grid_for(int64_t items, int64_t N) {
  return dim3(blocks_for(items), static_cast<unsigned>(std::min<int64_t>(N, 65535)));
}

inline bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The strip / outer views of the geometry: NHWC strip = W, outer = H; NCHW strip = H, outer = W.
struct Axes {
  int64_t I_o, I_s, O_o, O_s, K_o, K_s, S_o, S_s, P_o, P_s, D_o, D_s;
};

inline Axes axes_of(const Geometry& g) {
  if (g.channels_last) return {g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, g.DH, g.DW};
  return {g.W, g.H, g.OW, g.OH, g.KW, g.KH, g.SW, g.SH, g.PW, g.PH, g.DW, g.DH};
}

// Dense element strides (n, c, outer, strip) of a (N, C, H, W) tensor in g's layout.
inline void strides_of(const Geometry& g, int64_t C, int64_t H, int64_t W, int64_t& sn, int64_t& sc, int64_t& so,
                       int64_t& ss) {
  sn = C * H * W;
  if (g.channels_last) {
    sc = 1;
    so = W * C;  // h
    ss = C;      // w
  } else {
    sc = H * W;
    so = 1;      // w
    ss = W;      // h
  }
}

// Weight-buffer strides: NHWC [KH][KW][C_out], NCHW [C_out][KH][KW].
inline void weight_strides_of(const Geometry& g, LineArgs& a) {
  if (g.channels_last) {
    a.w_sc = 1;
    a.w_so = g.KW * g.C_out();  // kh
    a.w_ss = g.C_out();         // kw
  } else {
    a.w_sc = g.KH * g.KW;
    a.w_so = 1;                 // kw
    a.w_ss = g.KW;              // kh
  }
}

inline void fill_conv_axes(LineArgs& a, const Axes& ax) {
  a.K_o = static_cast<int>(ax.K_o);
  a.K_s = static_cast<int>(ax.K_s);
  a.S_o = static_cast<int>(ax.S_o);
  a.S_s = static_cast<int>(ax.S_s);
  a.P_o = static_cast<int>(ax.P_o);
  a.P_s = static_cast<int>(ax.P_s);
  a.D_o = static_cast<int>(ax.D_o);
  a.D_s = static_cast<int>(ax.D_s);
}

template <typename T, int V, bool NHWC>
cudaError_t launch_forward(const Geometry& g, const T* x, const float* w, const float* bias, int act, T* y,
                           cudaStream_t stream) {
  const Axes ax = axes_of(g);
  LineArgs a{};
  a.N = g.N;
  a.C_out = static_cast<int>(g.C_out());
  a.M = static_cast<int>(g.M);
  a.in_o = static_cast<int>(ax.I_o);
  a.in_s = static_cast<int>(ax.I_s);
  a.out_o = static_cast<int>(ax.O_o);
  a.out_s = static_cast<int>(ax.O_s);
  fill_conv_axes(a, ax);
  a.tiles = static_cast<int>(ceil_div64(ax.O_s, kTile));
  a.F = NHWC ? a.C_out / V : a.out_o;
  strides_of(g, g.C_in, g.H, g.W, a.in_sn, a.in_sc, a.in_so, a.in_ss);
  strides_of(g, g.C_out(), g.OH, g.OW, a.out_sn, a.out_sc, a.out_so, a.out_ss);
  weight_strides_of(g, a);
  const int64_t items = ax.O_o * a.tiles * static_cast<int64_t>(NHWC ? a.F : a.C_out);
  if (items > kMaxDim) return cudaErrorInvalidValue;
  a.items = static_cast<int>(items);
  a.act = act;
  if (items == 0 || g.N == 0) return cudaSuccess;
  const dim3 grid = grid_for(items, g.N);

#define CVK_DW_FWD(KC, EXACT, SS) \
  dw_forward_kernel<T, V, KC, EXACT, SS, NHWC><<<grid, kThreads, 0, stream>>>(x, w, bias, y, a)
  if (a.D_s == 1 && (a.S_s == 1 || a.S_s == 2) && (a.K_s == 3 || a.K_s == 5 || a.K_s == 7)) {
    if (a.S_s == 1) {
      if (a.K_s == 3) CVK_DW_FWD(3, true, 1);
      else if (a.K_s == 5) CVK_DW_FWD(5, true, 1);
      else CVK_DW_FWD(7, true, 1);
    } else {
      if (a.K_s == 3) CVK_DW_FWD(3, true, 2);
      else if (a.K_s == 5) CVK_DW_FWD(5, true, 2);
      else CVK_DW_FWD(7, true, 2);
    }
  } else if (a.D_s == 1 && a.S_s == 1) {
    CVK_DW_FWD(kChunk, false, 1);
  } else {
    CVK_DW_FWD(1, true, 0);
  }
#undef CVK_DW_FWD
  return cudaGetLastError();
}

template <typename T, int V, bool NHWC>
cudaError_t launch_backward_input(const Geometry& g, const T* gy, const float* w, T* gx, cudaStream_t stream) {
  const Axes ax = axes_of(g);
  LineArgs a{};
  a.N = g.N;
  a.C_out = static_cast<int>(g.C_in);  // the written tensor is grad_input
  a.M = static_cast<int>(g.M);
  a.in_o = static_cast<int>(ax.O_o);
  a.in_s = static_cast<int>(ax.O_s);
  a.out_o = static_cast<int>(ax.I_o);
  a.out_s = static_cast<int>(ax.I_s);
  fill_conv_axes(a, ax);
  a.tiles = static_cast<int>(ceil_div64(ax.I_s, kTile));
  a.F = NHWC ? a.C_out / V : a.out_o;
  strides_of(g, g.C_out(), g.OH, g.OW, a.in_sn, a.in_sc, a.in_so, a.in_ss);
  strides_of(g, g.C_in, g.H, g.W, a.out_sn, a.out_sc, a.out_so, a.out_ss);
  weight_strides_of(g, a);
  const int64_t items = ax.I_o * a.tiles * static_cast<int64_t>(NHWC ? a.F : a.C_out);
  if (items > kMaxDim) return cudaErrorInvalidValue;
  a.items = static_cast<int>(items);
  a.act = 0;
  if (items == 0 || g.N == 0) return cudaSuccess;
  const dim3 grid = grid_for(items, g.N);

#define CVK_DW_BWD(KC, EXACT, FAST) \
  dw_backward_input_kernel<T, V, KC, EXACT, FAST, NHWC><<<grid, kThreads, 0, stream>>>(gy, w, gx, a)
  if (a.S_s == 1 && a.D_s == 1) {
    if (a.K_s == 3) CVK_DW_BWD(3, true, true);
    else if (a.K_s == 5) CVK_DW_BWD(5, true, true);
    else if (a.K_s == 7) CVK_DW_BWD(7, true, true);
    else CVK_DW_BWD(kChunk, false, true);
  } else {
    CVK_DW_BWD(1, true, false);
  }
#undef CVK_DW_BWD
  return cudaGetLastError();
}

// How the grad-weight kernel tiles a geometry (shared by the split heuristic and the launcher).
struct WeightPlan {
  int V, TK, SS, cvb, nkc;
  bool exact;
  int64_t Cv, grid_x, grid_y, per_image, units;
};

inline WeightPlan weight_plan(const Geometry& g, int V) {
  const Axes ax = axes_of(g);
  WeightPlan p{};
  p.V = V;
  if (ax.D_s == 1 && (ax.S_s == 1 || ax.S_s == 2) && (ax.K_s == 3 || ax.K_s == 5 || ax.K_s == 7)) {
    p.TK = static_cast<int>(ax.K_s);
    p.SS = static_cast<int>(ax.S_s);
    p.exact = true;
  } else {
    p.TK = kChunk;
    p.SS = (ax.D_s == 1 && ax.S_s == 1) ? 1 : 0;
    p.exact = false;
  }
  p.nkc = static_cast<int>(ceil_div64(ax.K_s, p.TK));
  if (g.channels_last) {
    p.Cv = g.C_out() / V;
    // the widest power-of-2 channel-vector block (<= 32) that leaves at most 1/8 of its lanes idle
    int cvb = 1;
    while (cvb < 32 && cvb < p.Cv) cvb *= 2;
    while (cvb > 1 && (ceil_div64(p.Cv, cvb) * cvb - p.Cv) * 8 > p.Cv) cvb /= 2;
    p.cvb = cvb;
    p.grid_x = ceil_div64(p.Cv, cvb);
  } else {
    p.Cv = g.C_out();
    p.cvb = 1;
    p.grid_x = p.Cv;
  }
  p.grid_y = ax.K_o * p.nkc;
  p.per_image = ax.O_o * ceil_div64(ax.O_s, kTile);
  p.units = g.N * p.per_image;
  return p;
}

template <typename T>
bool weight_vectorizable(const Geometry& g) {
  return g.channels_last && g.M == 1 && g.C_out() % kWeightVec == 0;
}

template <typename T, int V, bool NHWC>
cudaError_t launch_backward_weight(const Geometry& g, const T* gy, const T* x, int64_t splits, float* part, T* gw,
                                   cudaStream_t stream) {
  const Axes ax = axes_of(g);
  const WeightPlan p = weight_plan(g, V);
  if (p.grid_x > 0x7fffffff || p.grid_y > 65535 || splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  WeightArgs a{};
  a.C_out = static_cast<int>(g.C_out());
  a.M = static_cast<int>(g.M);
  a.Cv = static_cast<int>(p.Cv);
  a.cvb = p.cvb;
  a.npg = kThreads / p.cvb;
  a.tiles = static_cast<int>(ceil_div64(ax.O_s, kTile));
  a.nkc = p.nkc;
  a.I_o = static_cast<int>(ax.I_o);
  a.I_s = static_cast<int>(ax.I_s);
  a.O_o = static_cast<int>(ax.O_o);
  a.O_s = static_cast<int>(ax.O_s);
  a.K_o = static_cast<int>(ax.K_o);
  a.K_s = static_cast<int>(ax.K_s);
  a.S_o = static_cast<int>(ax.S_o);
  a.S_s = static_cast<int>(ax.S_s);
  a.P_o = static_cast<int>(ax.P_o);
  a.P_s = static_cast<int>(ax.P_s);
  a.D_o = static_cast<int>(ax.D_o);
  a.D_s = static_cast<int>(ax.D_s);
  strides_of(g, g.C_in, g.H, g.W, a.x_sn, a.x_sc, a.x_so, a.x_ss);
  strides_of(g, g.C_out(), g.OH, g.OW, a.g_sn, a.g_sc, a.g_so, a.g_ss);
  a.tap_o = static_cast<int>(NHWC ? g.KW : 1);
  a.tap_s = static_cast<int>(NHWC ? 1 : g.KW);
  a.taps = static_cast<int>(g.KH * g.KW);
  if (p.per_image > kMaxDim) return cudaErrorInvalidValue;
  a.per_image = static_cast<int>(p.per_image);
  a.inv_per_image = 1.0 / static_cast<double>(p.per_image);
  a.units = p.units;
  a.chunk = ceil_div64(p.units, splits);

  const dim3 grid(static_cast<unsigned>(p.grid_x), static_cast<unsigned>(p.grid_y), static_cast<unsigned>(splits));
  const size_t smem = static_cast<size_t>(p.TK) * V * kWarps * p.cvb * sizeof(float);

#define CVK_DW_WGT(TK, EXACT, SS) \
  dw_backward_weight_kernel<T, V, TK, EXACT, SS, NHWC><<<grid, kThreads, smem, stream>>>(gy, x, part, a)
  if (p.exact) {
    if (p.SS == 1) {
      if (p.TK == 3) CVK_DW_WGT(3, true, 1);
      else if (p.TK == 5) CVK_DW_WGT(5, true, 1);
      else CVK_DW_WGT(7, true, 1);
    } else {
      if (p.TK == 3) CVK_DW_WGT(3, true, 2);
      else if (p.TK == 5) CVK_DW_WGT(5, true, 2);
      else CVK_DW_WGT(7, true, 2);
    }
  } else if (p.SS == 1) {
    CVK_DW_WGT(kChunk, false, 1);
  } else {
    CVK_DW_WGT(kChunk, false, 0);
  }
#undef CVK_DW_WGT
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int64_t count = g.C_out() * g.KH * g.KW;
  dw_weight_finalize_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(part, gw, count, splits);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------ typed entries

template <typename T>
cudaError_t forward_typed(const Geometry& g, const void* input, const float* w, const float* bias, int act,
                          void* output, cudaStream_t stream) {
  const T* x = static_cast<const T*>(input);
  T* y = static_cast<T*>(output);
  if (g.channels_last) {
    constexpr int VM = max_vec<T>();
    const bool vec = g.M == 1 && g.C_out() % VM == 0 && aligned(x, VM * sizeof(T)) &&
                     aligned(y, VM * sizeof(T)) && aligned(w, VM * sizeof(float)) && aligned(bias, VM * sizeof(float));
    return vec ? launch_forward<T, VM, true>(g, x, w, bias, act, y, stream)
               : launch_forward<T, 1, true>(g, x, w, bias, act, y, stream);
  }
  return launch_forward<T, 1, false>(g, x, w, bias, act, y, stream);
}

template <typename T>
cudaError_t backward_input_typed(const Geometry& g, const void* grad_output, const float* w, void* grad_input,
                                 cudaStream_t stream) {
  const T* gy = static_cast<const T*>(grad_output);
  T* gx = static_cast<T*>(grad_input);
  if (g.channels_last) {
    constexpr int VM = max_vec<T>();
    const bool vec = g.M == 1 && g.C_in % VM == 0 && aligned(gy, VM * sizeof(T)) && aligned(gx, VM * sizeof(T)) &&
                     aligned(w, VM * sizeof(float));
    return vec ? launch_backward_input<T, VM, true>(g, gy, w, gx, stream)
               : launch_backward_input<T, 1, true>(g, gy, w, gx, stream);
  }
  return launch_backward_input<T, 1, false>(g, gy, w, gx, stream);
}

template <typename T>
cudaError_t backward_weight_typed(const Geometry& g, const void* grad_output, const void* input, int64_t splits,
                                  float* workspace, void* grad_weight, cudaStream_t stream) {
  const T* gy = static_cast<const T*>(grad_output);
  const T* x = static_cast<const T*>(input);
  T* gw = static_cast<T*>(grad_weight);
  if (g.channels_last) {
    const bool vec = weight_vectorizable<T>(g) && aligned(gy, kWeightVec * sizeof(T)) &&
                     aligned(x, kWeightVec * sizeof(T));
    return vec ? launch_backward_weight<T, kWeightVec, true>(g, gy, x, splits, workspace, gw, stream)
               : launch_backward_weight<T, 1, true>(g, gy, x, splits, workspace, gw, stream);
  }
  return launch_backward_weight<T, 1, false>(g, gy, x, splits, workspace, gw, stream);
}

inline bool empty(const Geometry& g) { return g.N == 0 || g.C_in == 0 || g.M == 0; }

}  // namespace

// ------------------------------------------------------------------------------ public API

bool geometry_ok(const Geometry& g) {
  const int64_t dims[] = {g.C_in, g.M, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW};
  for (int64_t d : dims) {
    if (d < 1 || d > kMaxDim) return false;
  }
  if (g.N < 0 || g.PH < 0 || g.PW < 0 || g.PH > kMaxDim || g.PW > kMaxDim || g.C_out() > kMaxDim) return false;
  // every intermediate index (positions, padded extents, dilated taps) must fit in 32 bits
  if (g.H + 2 * g.PH + g.DH * (g.KH - 1) + 4 * g.SH >= kMaxDim) return false;
  if (g.W + 2 * g.PW + g.DW * (g.KW - 1) + 4 * g.SW >= kMaxDim) return false;
  if (g.OH != conv_output_size(g.H, g.KH, g.SH, g.PH, g.DH)) return false;
  if (g.OW != conv_output_size(g.W, g.KW, g.SW, g.PW, g.DW)) return false;
  // grad-weight grid.y = K_outer * ceil(K_strip / 8) <= 65535 in both layouts
  if (g.KH * ceil_div64(g.KW, kChunk) > 65535 || g.KW * ceil_div64(g.KH, kChunk) > 65535) return false;
  // work items of one image are counted in 31 bits: out_o * ceil(out_s / kTile) * channels
  const Axes ax = axes_of(g);
  if (ax.O_o * ceil_div64(ax.O_s, kTile) * g.C_out() > kMaxDim) return false;
  if (ax.I_o * ceil_div64(ax.I_s, kTile) * g.C_in > kMaxDim) return false;
  return true;
}

cudaError_t forward(DType dtype, const Geometry& g, const void* input, const float* weight, const float* bias,
                    int activation, void* output, cudaStream_t stream) {
  if (empty(g)) return cudaSuccess;
  if (!geometry_ok(g) || activation < 0 || activation > 3) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(g, input, weight, bias, activation, output, stream);
    case DType::kFloat16: return forward_typed<__half>(g, input, weight, bias, activation, output, stream);
    case DType::kBFloat16: return forward_typed<__nv_bfloat16>(g, input, weight, bias, activation, output, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward_input(DType dtype, const Geometry& g, const void* grad_output, const float* weight,
                           void* grad_input, cudaStream_t stream) {
  if (empty(g)) return cudaSuccess;
  if (!geometry_ok(g)) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return backward_input_typed<float>(g, grad_output, weight, grad_input, stream);
    case DType::kFloat16: return backward_input_typed<__half>(g, grad_output, weight, grad_input, stream);
    case DType::kBFloat16: return backward_input_typed<__nv_bfloat16>(g, grad_output, weight, grad_input, stream);
  }
  return cudaErrorInvalidValue;
}

int64_t backward_weight_splits(const Geometry& g, int num_sms) {
  if (empty(g) || !geometry_ok(g)) return 1;
  const bool vec = g.channels_last && g.M == 1 && g.C_out() % kWeightVec == 0;
  const WeightPlan p = weight_plan(g, vec ? kWeightVec : 1);
  const int npg = kThreads / p.cvb;
  // about 8 resident 256-thread blocks per SM, and at least 2 units per thread in every slice
  const int64_t target = static_cast<int64_t>(std::max(num_sms, 1)) * 8;
  const int64_t blocks_xy = std::max<int64_t>(1, p.grid_x * p.grid_y);
  int64_t splits = ceil_div64(target, blocks_xy);
  splits = std::min(splits, std::max<int64_t>(1, p.units / (2 * npg)));
  return std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
}

size_t backward_weight_workspace_bytes(const Geometry& g, int64_t splits) {
  return static_cast<size_t>(std::max<int64_t>(splits, 1)) * static_cast<size_t>(g.C_out()) *
         static_cast<size_t>(g.KH * g.KW) * sizeof(float);
}

cudaError_t backward_weight(DType dtype, const Geometry& g, const void* grad_output, const void* input,
                            int64_t splits, float* workspace, void* grad_weight, cudaStream_t stream) {
  if (empty(g)) return cudaSuccess;  // the caller zero-fills grad_weight
  if (!geometry_ok(g)) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32:
      return backward_weight_typed<float>(g, grad_output, input, splits, workspace, grad_weight, stream);
    case DType::kFloat16:
      return backward_weight_typed<__half>(g, grad_output, input, splits, workspace, grad_weight, stream);
    case DType::kBFloat16:
      return backward_weight_typed<__nv_bfloat16>(g, grad_output, input, splits, workspace, grad_weight, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dwconv
}  // namespace cvk
