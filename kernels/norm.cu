// norm.cu — batch normalisation (PyTorch's BatchNorm2d as src/device/cpu/norm.rs): training
// forward with batch statistics (plain and fused with the following ReLU), evaluation forward
// with the running statistics, and the two backwards.
//
// Shapes: x, y, dy, dx [C, M] with M = N·H·W contiguous per channel (CNHW activations);
// gamma, beta, running_mean, running_var, save_mean, save_invstd, dgamma, dbeta [C].
// Math (as the CPU engine):
//   mean = Σx/M; var = Σ(x − mean)²/M (two passes, biased); invstd = 1/sqrt(var + eps);
//   y = (x − mean)·(gamma·invstd) + beta  (then max(·, 0) for the fused variant);
//   running_mean ← (1 − momentum)·running_mean + momentum·mean;
//   running_var  ← (1 − momentum)·running_var + momentum·var·M/(M − 1)  (var itself if M = 1).
//   backward: dbeta = Σdy', dgamma = invstd·Σdy'·(x − mean),
//             dx = a·dy' + b·(x − mean) + c0 with a = gamma·invstd, b = −a·invstd·dgamma/M,
//             c0 = −a·dbeta/M; dy' = dy, or for the fused variant dy masked where the
//             forward's output was 0 — recomputed from x with the forward's exact f32
//             operations (no ReLU output or mask is stored or read).
// Launch: train forward and both backwards: one block per channel (grid.x = C), 256 threads
// (1024 when M ≥ 65536), block-stride loops over M (any M, not a multiple of the block) with
// block_sum reductions. Eval forward: grid (min(⌈M/256⌉, 1024), C), 256 threads.
// CPU twins: src/device/cpu/twin/norm.rs (the functions of src/device/cpu/norm.rs).
// Numerics vs the twin: sums are f32 per thread then a tree over the block (the CPU
// accumulates in f64 across 1024-element blocks), and the non-fused scale is
// gamma·invstd in f32 (the CPU rounds from f64): relative differences ~1e-6 on the statistics
// and outputs. The normalising affine map is evaluated without FMA contraction
// (__fmul_rn/__fadd_rn), as the CPU does, so the fused ReLU mask of the backward is exactly the
// forward's.
#include "common.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float norm_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float norm_add(float a, float b) { return __fadd_rn(a, b); }
#else
__device__ __forceinline__ float norm_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float norm_add(float a, float b) { return a + b; }
#endif

// (v − center)·scale + shift, each operation rounded separately (no FMA).
__device__ __forceinline__ float norm_affine(float v, float center, float scale, float shift) {
  return norm_add(norm_mul(v - center, scale), shift);
}

// Shared by every kernel of this file; unused fields are ignored.
struct NormParams {
  const float* x;       // input [C, M]
  const float* gamma;   // [C]
  const float* beta;    // [C]
  float* running_mean;  // [C]: train forward updates it, eval forward reads it
  float* running_var;   // [C]: idem
  float* save_mean;     // [C]: train forward writes, backward reads
  float* save_invstd;   // [C]: idem
  float* y;             // forward: y [C, M]; backward: dx [C, M]
  const float* dy;      // backward: dy [C, M] (for the fused variant, the ReLU output's gradient)
  float* dgamma;        // backward: [C] (overwritten)
  float* dbeta;         // backward: [C] (overwritten)
  unsigned c, m;
  float eps, momentum;
};

template <bool RELU>
__device__ __forceinline__ void norm_train_fwd(const NormParams& p, float* scratch) {
  const unsigned ch = blockIdx.x, t = threadIdx.x, nt = blockDim.x, m = p.m;
  const float* x = p.x + (unsigned long long)ch * m;
  float* y = p.y + (unsigned long long)ch * m;
  float s = 0.0f;
  for (unsigned j = t; j < m; j += nt) s += x[j];
  const float mean = block_sum(s, scratch) / (float)m;
  float q = 0.0f;
  for (unsigned j = t; j < m; j += nt) {
    const float d = x[j] - mean;
    q += d * d;
  }
  const float var = block_sum(q, scratch) / (float)m;
  const float invstd = 1.0f / sqrtf(var + p.eps);
  const float scale = norm_mul(p.gamma[ch], invstd), shift = p.beta[ch];
  for (unsigned j = t; j < m; j += nt) {
    const float v = norm_affine(x[j], mean, scale, shift);
    y[j] = RELU ? fmaxf(v, 0.0f) : v;
  }
  if (t == 0) {
    p.save_mean[ch] = mean;
    p.save_invstd[ch] = invstd;
    const float unbias = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
    const float mo = p.momentum;
    p.running_mean[ch] = (1.0f - mo) * p.running_mean[ch] + mo * mean;
    p.running_var[ch] = (1.0f - mo) * p.running_var[ch] + mo * (var * unbias);
  }
}

KERNEL(norm_fwd_train_f32, NormParams) {
  __shared__ float scratch[32];
  norm_train_fwd<false>(p, scratch);
}

KERNEL(norm_fwd_train_relu_f32, NormParams) {
  __shared__ float scratch[32];
  norm_train_fwd<true>(p, scratch);
}

// Evaluation: y = (x − running_mean)·(gamma/sqrt(running_var + eps)) + beta.
KERNEL(norm_fwd_eval_f32, NormParams) {
  const unsigned ch = blockIdx.y, m = p.m;
  const float scale = p.gamma[ch] / sqrtf(p.running_var[ch] + p.eps);
  const float center = p.running_mean[ch], shift = p.beta[ch];
  const float* x = p.x + (unsigned long long)ch * m;
  float* y = p.y + (unsigned long long)ch * m;
  for (unsigned j = blockIdx.x * blockDim.x + threadIdx.x; j < m; j += gridDim.x * blockDim.x) {
    y[j] = norm_affine(x[j], center, scale, shift);
  }
}

template <bool RELU>
__device__ __forceinline__ void norm_bwd(const NormParams& p, float* scratch) {
  const unsigned ch = blockIdx.x, t = threadIdx.x, nt = blockDim.x, m = p.m;
  const unsigned long long off = (unsigned long long)ch * m;
  const float *x = p.x + off, *dy = p.dy + off;
  float* dx = p.y + off;
  const float mean = p.save_mean[ch], invstd = p.save_invstd[ch], gamma = p.gamma[ch];
  // The fused forward's scale and shift, for its ReLU mask.
  const float scale = norm_mul(gamma, invstd), shift = RELU ? p.beta[ch] : 0.0f;
  float sg = 0.0f, sd = 0.0f;
  for (unsigned j = t; j < m; j += nt) {
    const float v = x[j];
    float g = dy[j];
    if (RELU && !(norm_affine(v, mean, scale, shift) > 0.0f)) g = 0.0f;
    sg += g;
    sd += g * (v - mean);
  }
  const float sum_dy = block_sum(sg, scratch);
  const float dot = block_sum(sd, scratch);
  const float dg = dot * invstd;
  const float a = gamma * invstd;
  const float b = -a * invstd * dg / (float)m;
  const float c0 = -a * sum_dy / (float)m;
  for (unsigned j = t; j < m; j += nt) {
    const float v = x[j];
    float g = dy[j];
    if (RELU && !(norm_affine(v, mean, scale, shift) > 0.0f)) g = 0.0f;
    dx[j] = a * g + b * (v - mean) + c0;
  }
  if (t == 0) {
    p.dgamma[ch] = dg;
    p.dbeta[ch] = sum_dy;
  }
}

KERNEL(norm_bwd_f32, NormParams) {
  __shared__ float scratch[32];
  norm_bwd<false>(p, scratch);
}

KERNEL(norm_bwd_relu_f32, NormParams) {
  __shared__ float scratch[32];
  norm_bwd<true>(p, scratch);
}
