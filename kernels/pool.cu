// pool.cu — max-pooling (the ResNet stem's 3×3/2 pad 1, any k/stride/pad) and global average
// pooling, forward and backward, exactly as src/device/cpu/pool.rs.
//
// Shapes (CNHW activations seen as planes = C·N planes of h×w):
//   max fwd:  x [planes, h, w] → y [planes, oh, ow], argmax [planes, oh, ow] u32: the flat
//             in-plane index r·w + c of each window's first maximum (padding is −∞ and never
//             wins; a NaN wins and the first NaN is kept), 0xFFFFFFFF for a window of padding only.
//   max bwd:  dy, argmax [planes, oh, ow] → dx [planes, h, w] (overwritten): a gather, one
//             thread per input element summing the dy of the windows whose argmax is it, in
//             ascending output order (the CPU's scatter order), so no atomics and bit-exact.
//   avg fwd:  x [c·n, hw] → y [c·n] = mean of each plane (one warp per plane).
//   avg bwd:  dy [c·n] → dx [c·n, hw] = dy / hw (dy·(1/hw) as the CPU).
// Launch: max fwd/bwd and avg bwd: 1-D grid-stride, 256 threads; avg fwd: 256 threads = 8 warps
// per block, one plane per warp, grid-stride over planes.
// CPU twins: src/device/cpu/twin/pool.rs (the functions of src/device/cpu/pool.rs).
// Numerics: max-pool is exact; avg fwd sums in f32 in lane order (the CPU sums in f64), so it
// differs by a few ulp; avg bwd is exact.
#include "common.cuh"

#define POOL_NO_INPUT 0xffffffffu

struct MaxPoolParams {
  const float* x;     // fwd: x; bwd: unused
  float* y;           // fwd: y; bwd: dx
  unsigned* argmax;   // fwd: written; bwd: read
  const float* dy;    // bwd: dy; fwd: unused
  unsigned planes, h, w, oh, ow, k, stride, pad;
};

KERNEL(pool_max_fwd_f32, MaxPoolParams) {
  const unsigned per_plane = p.oh * p.ow, total = p.planes * per_plane;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned plane = i / per_plane, o = i - plane * per_plane;
    const unsigned oy = o / p.ow, ox = o - oy * p.ow;
    const int y0 = (int)(oy * p.stride) - (int)p.pad, x0 = (int)(ox * p.stride) - (int)p.pad;
    const int r0 = max(y0, 0), r1 = min(y0 + (int)p.k, (int)p.h);
    const int c0 = max(x0, 0), c1 = min(x0 + (int)p.k, (int)p.w);
    const float* xp = p.x + (unsigned long long)plane * p.h * p.w;
    float best = -__int_as_float(0x7f800000);
    unsigned arg = POOL_NO_INPUT;
    for (int r = r0; r < r1; ++r) {
      for (int c = c0; c < c1; ++c) {
        const float v = xp[r * (int)p.w + c];
        // Strict comparison (first maximum wins); NaN (v != v) beats any number.
        if (arg == POOL_NO_INPUT || v > best || (v != v && best == best)) {
          best = v;
          arg = (unsigned)(r * (int)p.w + c);
        }
      }
    }
    p.y[i] = best;
    p.argmax[i] = arg;
  }
}

KERNEL(pool_max_bwd_f32, MaxPoolParams) {
  const unsigned per_plane = p.h * p.w, total = p.planes * per_plane;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned plane = i / per_plane, q = i - plane * per_plane;
    const int iy = (int)(q / p.w), ix = (int)(q - (q / p.w) * p.w);
    // Outputs whose window [o·stride − pad, o·stride − pad + k) holds iy (resp. ix):
    // o·stride ≤ iy + pad and o·stride > iy + pad − k.
    const int s = (int)p.stride, ty = iy + (int)p.pad, tx = ix + (int)p.pad;
    const int oy0 = ty - (int)p.k < 0 ? 0 : (ty - (int)p.k) / s + 1;
    const int oy1 = min(ty / s, (int)p.oh - 1);
    const int ox0 = tx - (int)p.k < 0 ? 0 : (tx - (int)p.k) / s + 1;
    const int ox1 = min(tx / s, (int)p.ow - 1);
    const unsigned long long base = (unsigned long long)plane * p.oh * p.ow;
    float acc = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy) {
      for (int ox = ox0; ox <= ox1; ++ox) {
        const unsigned long long o = base + (unsigned long long)oy * p.ow + ox;
        if (p.argmax[o] == q) acc += p.dy[o];
      }
    }
    p.y[i] = acc;
  }
}

struct AvgPoolParams {
  const float* x;   // fwd: x [planes, hw]; bwd: dy [planes]
  float* y;         // fwd: y [planes]; bwd: dx [planes, hw]
  unsigned planes;  // c·n
  unsigned hw;
  float inv_hw;     // 1/hw, rounded to f32 (used by the backward only)
  unsigned pad_;
};

KERNEL(pool_avg_fwd_f32, AvgPoolParams) {
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const unsigned warps = (gridDim.x * blockDim.x) >> 5;
  // Every lane of a warp runs the same number of iterations (plane is warp-uniform), so the
  // warp_sum below always sees full warps.
  for (unsigned plane = warp; plane < p.planes; plane += warps) {
    const float* xp = p.x + (unsigned long long)plane * p.hw;
    float s = 0.0f;
    for (unsigned j = lane; j < p.hw; j += 32u) s += xp[j];
    s = warp_sum(s);
    if (lane == 0) p.y[plane] = s / (float)p.hw;
  }
}

KERNEL(pool_avg_bwd_f32, AvgPoolParams) {
  const unsigned total = p.planes * p.hw;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    p.y[i] = p.x[i / p.hw] * p.inv_hw;
  }
}
