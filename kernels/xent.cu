// xent.cu — fused reweighted softmax cross-entropy (src/device/cpu/xent.rs), with the per-group
// statistics the trainer and evaluation report.
//
// Layout: logits and dlogits are class-major [K, N] — the linear layer's CNHW output [K, N, 1, 1]
// as it is, without the transpose the CPU engine makes (nn::ops::linear transposes its [K, N]
// result to [N, K] before cross_entropy). Sample i's logits are logits[c·N + i], c < K, so one
// thread per sample reads a class row with coalesced loads for any K. labels, groups u32 [N];
// weights, losses f32 [N].
// Per sample i (thread i, no softmax stored):
//   mx = max_c x_c, pred = first c with x_c = mx (argmax_rows), S = Σ_c exp(x_c − mx);
//   losses[i] = log S + (mx − x_label);
//   dlogits[c, i] = exp(x_c − mx)·(s/S) − [c = label]·s,  s = w_i·inv_wsum,
// inv_wsum = 1/Σ_j w_j computed by the caller on the host (it has the weights). A zero-weight
// sample gets a loss and zero gradient. A label ≥ K (the host validates labels) gives a NaN loss
// and no one-hot term instead of an out-of-bounds read.
// Statistics (XENT_STATS = 25 floats): [0] the weighted mean loss Σ w_i·l_i·inv_wsum; for group
// g < 8: [1 + 3g] Σ l_i (unweighted), [2 + 3g] correct predictions, [3 + 3g] samples. Samples
// with group ≥ num_groups count in no group; groups == null puts every sample in group 0.
// Launch: xent_fused_f32: ⌈N/256⌉ blocks of 256 threads, one sample per thread; each block writes
// one row of partial sums (warp shuffles, then the warps in order: no atomics) to
// partials [blocks, 25]. xent_reduce_f32: one block of 256 threads sums the rows in a fixed
// order into stats [25] — deterministic run to run.
// CPU twins: src/device/cpu/twin/xent.rs (per-block partials and their reduction, f64 sums).
// Numerics vs the twin: expf/logf in f32 (the CPU sums exp in f64 and takes the log in f64),
// f32 statistics sums; ~1e-6 relative on losses and gradients, ~1e-6·N on the sums.
#include "common.cuh"

#define XENT_STATS 25
#define XENT_MAX_GROUPS 8

struct XentParams {
  const float* logits;     // [K, N]
  const unsigned* labels;  // [N]
  const float* weights;    // [N]
  const unsigned* groups;  // [N], or null: all in group 0
  float* losses;           // [N]
  float* dlogits;          // [K, N]
  float* partials;         // [blocks, XENT_STATS]: written by fused, read by reduce
  float* stats;            // [XENT_STATS]: written by reduce
  unsigned n, k;
  float inv_wsum;
  unsigned num_groups;     // ≤ 8
  unsigned blocks;         // rows of partials (= the fused kernel's grid)
  unsigned per_block;      // samples per block (= the fused kernel's blockDim.x)
};

KERNEL(xent_fused_f32, XentParams) {
  __shared__ float red[32][XENT_STATS];
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned n = p.n, k = p.k;
  float wl = 0.0f, loss = 0.0f, correct = 0.0f;
  unsigned group = XENT_MAX_GROUPS;  // none
  if (i < n) {
    const float* col = p.logits + i;
    const unsigned label = p.labels[i];
    float mx = -__int_as_float(0x7f800000);
    unsigned pred = 0;
    for (unsigned c = 0; c < k; ++c) {
      const float v = col[(unsigned long long)c * n];
      if (v > mx) {
        mx = v;
        pred = c;
      }
    }
    float sum = 0.0f;
    for (unsigned c = 0; c < k; ++c) sum += expf(col[(unsigned long long)c * n] - mx);
    const float xl = label < k ? col[(unsigned long long)label * n] : __int_as_float(0x7fc00000);
    loss = logf(sum) + (mx - xl);
    const float w = p.weights[i];
    const float s = w * p.inv_wsum, norm = s / sum;
    float* dcol = p.dlogits + i;
    for (unsigned c = 0; c < k; ++c) {
      const float d = expf(col[(unsigned long long)c * n] - mx) * norm;
      dcol[(unsigned long long)c * n] = c == label ? d - s : d;
    }
    p.losses[i] = loss;
    wl = w * loss;
    correct = pred == label ? 1.0f : 0.0f;
    group = p.groups ? p.groups[i] : 0u;
  }
  // Block partials: every thread (also those past n, with zeros) takes part in full-warp sums.
  const unsigned ng = p.num_groups < XENT_MAX_GROUPS ? p.num_groups : XENT_MAX_GROUPS;
  float v = warp_sum(wl);
  if (lane == 0) red[warp][0] = v;
  for (unsigned g = 0; g < XENT_MAX_GROUPS; ++g) {
    if (g >= ng) {
      if (lane == 0) red[warp][1 + 3 * g] = red[warp][2 + 3 * g] = red[warp][3 + 3 * g] = 0.0f;
      continue;
    }
    const bool in = group == g;
    v = warp_sum(in ? loss : 0.0f);
    if (lane == 0) red[warp][1 + 3 * g] = v;
    v = warp_sum(in ? correct : 0.0f);
    if (lane == 0) red[warp][2 + 3 * g] = v;
    v = warp_sum(in ? 1.0f : 0.0f);
    if (lane == 0) red[warp][3 + 3 * g] = v;
  }
  __syncthreads();
  if (threadIdx.x < XENT_STATS) {
    const unsigned warps = (blockDim.x + 31u) >> 5;
    float t = 0.0f;
    for (unsigned w = 0; w < warps; ++w) t += red[w][threadIdx.x];
    p.partials[(unsigned long long)blockIdx.x * XENT_STATS + threadIdx.x] = t;
  }
}

// One block: stats[s] = Σ_b partials[b, s] (stats[0] scaled by inv_wsum), in a fixed order.
KERNEL(xent_reduce_f32, XentParams) {
  __shared__ float red[32][XENT_STATS];
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (unsigned s = 0; s < XENT_STATS; ++s) {
    float t = 0.0f;
    for (unsigned b = threadIdx.x; b < p.blocks; b += blockDim.x) {
      t += p.partials[(unsigned long long)b * XENT_STATS + s];
    }
    t = warp_sum(t);
    if (lane == 0) red[warp][s] = t;
  }
  __syncthreads();
  if (threadIdx.x < XENT_STATS) {
    const unsigned warps = (blockDim.x + 31u) >> 5;
    float t = 0.0f;
    for (unsigned w = 0; w < warps; ++w) t += red[w][threadIdx.x];
    p.stats[threadIdx.x] = threadIdx.x == 0 ? t * p.inv_wsum : t;
  }
}
