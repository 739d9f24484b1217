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

KERNEL(optim_sgd_f32, SgdParams) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x) {
    const float w = p.w[i];
    const float g = optim_add(p.grad[i], optim_mul(p.weight_decay, w));
    const float b = optim_add(optim_mul(p.momentum, p.buf[i]), g);
    p.buf[i] = b;
    p.w[i] = optim_sub(w, optim_mul(p.lr, b));
  }
}
