// Greedy NMS in CUDA: IoU bitmask kernel + on-device keep-list reduction (no host sync, no copy of
// the mask to the host). Contract: csrc/include/cvk_nms_cuda.h. CUDA headers only.
//
// mask kernel: block (col block cb, row block rb), rb <= cb, 64 threads; the 64 column boxes are
//   staged in shared memory, thread t computes the 64-bit word of row rb * 64 + t against them
//   (diagonal block: only columns after the row). IoU with torchvision's CUDA arithmetic.
// reduce kernel: one block of kReduceThreads. For each column block nb in order: the 64 threads of
//   warp 0/1 stage the diagonal words mask[i][nb] of its rows in shared memory; thread 0 scans its 64
//   boxes sequentially against removed[nb] (kept boxes suppress later boxes of the same block through
//   their diagonal word), appends kept original indices to keep; then all threads OR the kept rows'
//   words into removed[nb + 1 ..]. Per column block: 3 barriers and (kept rows x remaining blocks)
//   / threads word loads, the same O(n^2 / 64) total as the host loop it replaces.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cvk_nms_cuda.h"

namespace cvk {
namespace nms_cuda {
namespace {

constexpr int kReduceThreads = 1024;

template <int R>
__device__ __forceinline__ float rnd(float v) {
  if (R == 1) return __half2float(__float2half_rn(v));
  if (R == 2) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

template <typename A, int R>
__device__ __forceinline__ A rnd_a(A v) {
  return static_cast<A>(rnd<R>(static_cast<float>(v)));
}
template <>
__device__ __forceinline__ double rnd_a<double, 0>(double v) {
  return v;
}

// torchvision's devIoU: widths/heights in the boxes' dtype, areas and IoU in the accumulation type.
template <typename A, int R>
__device__ __forceinline__ bool iou_above(const A* a, const A* b, float threshold) {
  const A left = a[0] > b[0] ? a[0] : b[0], right = a[2] < b[2] ? a[2] : b[2];
  const A top = a[1] > b[1] ? a[1] : b[1], bottom = a[3] < b[3] ? a[3] : b[3];
  A width = rnd_a<A, R>(right - left), height = rnd_a<A, R>(bottom - top);
  width = width > A(0) ? width : A(0);
  height = height > A(0) ? height : A(0);
  const A inter = width * height;
  const A sa = (a[2] - a[0]) * rnd_a<A, R>(a[3] - a[1]);
  const A sb = (b[2] - b[0]) * rnd_a<A, R>(b[3] - b[1]);
  return inter / (sa + sb - inter) > static_cast<A>(threshold);
}

template <typename A, int R>
__global__ void __launch_bounds__(kBlock) mask_kernel(int64_t n, const A* __restrict__ boxes,
                                                      const int64_t* __restrict__ classes, float threshold,
                                                      unsigned long long* __restrict__ mask) {
  const int64_t rb = blockIdx.y, cb = blockIdx.x;
  if (rb > cb) return;
  const int64_t cbs = col_blocks(n);
  const int rows = static_cast<int>(n - rb * kBlock < kBlock ? n - rb * kBlock : kBlock);
  const int cols = static_cast<int>(n - cb * kBlock < kBlock ? n - cb * kBlock : kBlock);
  __shared__ A sb[kBlock * 4];
  __shared__ int64_t sc[kBlock];
  const int t = threadIdx.x;
  if (t < cols) {
    const int64_t j = cb * kBlock + t;
#pragma unroll
    for (int k = 0; k < 4; ++k) sb[t * 4 + k] = boxes[j * 4 + k];
    sc[t] = classes ? classes[j] : 0;
  }
  __syncthreads();
  if (t >= rows) return;
  const int64_t i = rb * kBlock + t;
  A bi[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) bi[k] = boxes[i * 4 + k];
  const int64_t ci = classes ? classes[i] : 0;
  unsigned long long word = 0;
  for (int j = (rb == cb ? t + 1 : 0); j < cols; ++j) {
    if (sc[j] == ci && iou_above<A, R>(bi, sb + j * 4, threshold)) word |= 1ULL << j;
  }
  mask[i * cbs + cb] = word;
}

template <typename A>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(int64_t n, const unsigned long long* __restrict__ mask,
                                                                unsigned long long* removed,
                                                                const A* __restrict__ scores, bool has_thr,
                                                                double score_thr, const int64_t* __restrict__ order,
                                                                int64_t limit, int64_t* __restrict__ keep,
                                                                int64_t* __restrict__ num) {
  const int64_t cbs = col_blocks(n);
  __shared__ unsigned long long diag[kBlock];
  __shared__ unsigned long long kept_bits;
  __shared__ int64_t count;
  __shared__ int done;
  const int t = threadIdx.x;
  for (int64_t j = t; j < cbs; j += blockDim.x) removed[j] = 0ULL;
  if (t == 0) {
    count = 0;
    done = 0;
  }
  for (int64_t nb = 0; nb < cbs; ++nb) {
    const int64_t base = nb * kBlock;
    const int rows = static_cast<int>(n - base < kBlock ? n - base : kBlock);
    __syncthreads();  // removed[nb] complete, previous iteration's shared state consumed
    if (t < rows) diag[t] = mask[(base + t) * cbs + nb];
    __syncthreads();
    if (t == 0) {
      unsigned long long word = removed[nb], kb = 0ULL;
      for (int b = 0; b < rows; ++b) {
        if ((word >> b) & 1ULL) continue;
        if (has_thr && !(static_cast<double>(scores[base + b]) > score_thr)) continue;
        if (count >= limit) {
          done = 1;
          break;
        }
        keep[count++] = order[base + b];
        kb |= 1ULL << b;
        word |= diag[b];
      }
      if (count >= limit) done = 1;
      kept_bits = kb;
    }
    __syncthreads();
    if (done) break;
    const unsigned long long kb = kept_bits;
    if (kb == 0ULL) continue;
    for (int64_t j = nb + 1 + t; j < cbs; j += blockDim.x) {
      unsigned long long acc = removed[j];
      unsigned long long bits = kb;
      while (bits) {
        const int b = __ffsll(static_cast<long long>(bits)) - 1;
        bits &= bits - 1;
        acc |= mask[(base + b) * cbs + j];
      }
      removed[j] = acc;
    }
  }
  if (t == 0) *num = count;
}

template <typename A, int R>
cudaError_t run(int64_t n, const void* boxes, const void* scores, const int64_t* classes, const int64_t* order,
                double iou_threshold, bool has_thr, double score_thr, int64_t max_output, unsigned long long* mask,
                unsigned long long* removed, int64_t* keep, int64_t* num, cudaStream_t stream) {
  const int64_t cbs = col_blocks(n);
  if (cbs > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(cbs), static_cast<unsigned>(cbs));
  mask_kernel<A, R><<<grid, kBlock, 0, stream>>>(n, static_cast<const A*>(boxes), classes,
                                                 static_cast<float>(iou_threshold), mask);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t limit = max_output < 0 ? n : max_output;
  reduce_kernel<A><<<1, kReduceThreads, 0, stream>>>(n, mask, removed, static_cast<const A*>(scores), has_thr,
                                                     score_thr, order, limit, keep, num);
  return cudaGetLastError();
}

}  // namespace

cudaError_t nms(bool is_double, int rounding, int64_t n, const void* boxes, const void* scores, const int64_t* classes,
                const int64_t* order, double iou_threshold, bool has_score_threshold, double score_threshold,
                int64_t max_output, unsigned long long* mask, unsigned long long* removed, int64_t* keep, int64_t* num,
                cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (is_double)
    return run<double, 0>(n, boxes, scores, classes, order, iou_threshold, has_score_threshold, score_threshold,
                          max_output, mask, removed, keep, num, stream);
  switch (rounding) {
    case 1:
      return run<float, 1>(n, boxes, scores, classes, order, iou_threshold, has_score_threshold, score_threshold,
                           max_output, mask, removed, keep, num, stream);
    case 2:
      return run<float, 2>(n, boxes, scores, classes, order, iou_threshold, has_score_threshold, score_threshold,
                           max_output, mask, removed, keep, num, stream);
    default:
      return run<float, 0>(n, boxes, scores, classes, order, iou_threshold, has_score_threshold, score_threshold,
                           max_output, mask, removed, keep, num, stream);
  }
}

}  // namespace nms_cuda
}  // namespace cvk
