// optim.cu — SGD with momentum and weight decay, in place (src/optim.rs, PyTorch semantics
// without dampening or Nesterov, as the CPU engine):
//   g ← grad + wd·w;  buf ← μ·buf + g;  w ← w − lr·buf.
//
// Shapes: w, grad, buf: n f32 each — a dense parameter, or the compact values of a sparse layer
// (one entry per active weight, so the update stays on the mask by construction).
// Launch: 1-D grid-stride loop, 256 threads per block, at most 4096 blocks.
// CPU twin: optim_sgd_f32 in src/device/cpu/twin/optim.rs (the loop of Sgd::step).
// Numerics: each product and sum is rounded separately (__fmul_rn/__fadd_rn stop the compiler
// from contracting them into FMAs), so the update matches the CPU bit for bit.
//
// optim_sgd_multi_f32: the same update over MANY tensors in one launch (a model's whole SGD
// step). A device table holds one SgdRecord (w, grad, buf, n) per tensor and the block prefix
// sums starts[t] = first block of tensor t (starts[ntensors] = grid.x); tensor t gets
// ⌈n / SGD_MULTI_CHUNK⌉ blocks (none when n = 0). Both are uploaded once by the host wrapper
// (`SgdTable`), as the addresses do not change; lr, momentum and weight decay are scalars of the
// launch. A block finds its tensor by a binary search over the prefix sums, then updates its
// chunk of SGD_MULTI_CHUNK elements, 256 threads striding through it.
// Launch: grid.x = starts[ntensors], 256 threads. CPU twin: optim_sgd_multi_f32 (the per-tensor
// twin on every record). Numerics: as optim_sgd_f32, bit for bit.
#include "common.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float optim_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float optim_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float optim_sub(float a, float b) { return __fsub_rn(a, b); }
#else
__device__ __forceinline__ float optim_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float optim_add(float a, float b) { return a + b; }
__device__ __forceinline__ float optim_sub(float a, float b) { return a - b; }
#endif

struct SgdParams {
  float* w;            // weights (updated in place)
  const float* grad;   // gradient
  float* buf;          // momentum buffer (updated in place)
  unsigned n;          // elements
  float lr;
  float momentum;
  float weight_decay;
};
static_assert(sizeof(SgdParams) == 40, "SgdParams must match its #[repr(C)] Rust twin");

KERNEL(optim_sgd_f32, SgdParams) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x) {
    const float w = p.w[i];
    const float g = optim_add(p.grad[i], optim_mul(p.weight_decay, w));
    const float b = optim_add(optim_mul(p.momentum, p.buf[i]), g);
    p.buf[i] = b;
    p.w[i] = optim_sub(w, optim_mul(p.lr, b));
  }
}

#define SGD_MULTI_CHUNK 2048u

// Mirrors `SgdRecord` in src/device/gpu/kernels/optim.rs.
struct SgdRecord {
  float* w;
  const float* grad;
  float* buf;
  unsigned n;
  unsigned pad;
};
static_assert(sizeof(SgdRecord) == 32, "SgdRecord must match its #[repr(C)] Rust twin");

// Mirrors `SgdMultiParams` in src/device/gpu/kernels/optim.rs.
struct SgdMultiParams {
  const SgdRecord* table;  // SgdRecord[ntensors]
  const unsigned* starts;  // u32[ntensors + 1]: block prefix sums
  unsigned ntensors;
  float lr;
  float momentum;
  float weight_decay;
};
static_assert(sizeof(SgdMultiParams) == 32, "SgdMultiParams must match its #[repr(C)] Rust twin");

KERNEL(optim_sgd_multi_f32, SgdMultiParams) {
  // The last tensor whose first block is ≤ blockIdx.x (empty tensors own no block: a later
  // tensor with the same start wins).
  const unsigned b = blockIdx.x;
  unsigned lo = 0u, hi = p.ntensors - 1u;
  while (lo < hi) {
    const unsigned mid = (lo + hi + 1u) >> 1;
    if (p.starts[mid] <= b)
      lo = mid;
    else
      hi = mid - 1u;
  }
  const SgdRecord r = p.table[lo];
  const unsigned begin = (b - p.starts[lo]) * SGD_MULTI_CHUNK;
  const unsigned end = min(r.n, begin + SGD_MULTI_CHUNK);
  for (unsigned i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float w = r.w[i];
    const float g = optim_add(r.grad[i], optim_mul(p.weight_decay, w));
    const float m = optim_add(optim_mul(p.momentum, r.buf[i]), g);
    r.buf[i] = m;
    r.w[i] = optim_sub(w, optim_mul(p.lr, m));
  }
}
