// selftest.cu — kernels that test the emulator itself (tests/emu_runtime.rs), not part of the
// model: they are compiled only into the emulator library (not listed in gpu::MODULES).
//
// Each kernel exercises one feature against a plain Rust computation: block reductions with
// __syncthreads (block_sum of common.cuh), a shared-memory tiled SGEMM, warp shuffles (all four
// kinds, widths, sub-warp groups), votes, atomics on global and shared memory, dynamic shared
// memory and its poisoning, 2D/3D grid indices, and two deliberate deadlocks for the report.
// Parameter structs mirror src/device/gpu/emu.rs (`selftest`).
#include "common.cuh"

// ---- block_sum ---------------------------------------------------------------------------------

struct BlockSumParams {
  const float* x;
  float* out;  // [2 * gridDim.x]: sum and sum of squares of each block's chunk
  unsigned n, chunk;
};

KERNEL(selftest_block_sum_f32, BlockSumParams) {
  __shared__ float scratch[32];
  const unsigned begin = blockIdx.x * p.chunk;
  const unsigned end = min(p.n, begin + p.chunk);
  float s = 0.0f, q = 0.0f;
  for (unsigned i = begin + threadIdx.x; i < end; i += blockDim.x) {
    s += p.x[i];
    q += p.x[i] * p.x[i];
  }
  s = block_sum(s, scratch);
  q = block_sum(q, scratch);  // reuses scratch: block_sum's leading barrier protects it
  if (threadIdx.x == 0) {
    p.out[2 * blockIdx.x] = s;
    p.out[2 * blockIdx.x + 1] = q;
  }
}

// ---- tiled SGEMM: C[m,n] = A[m,k] B[k,n], row-major --------------------------------------------
// 64×64 output tile per block of 256 threads, 4×4 outputs per thread, k in steps of 16 through
// shared memory. Grid (ceil(n/64), ceil(m/64)).

struct GemmParams {
  const float* a;
  const float* b;
  float* c;
  unsigned m, n, k, pad;
};

KERNEL(selftest_sgemm_f32, GemmParams) {
  __shared__ float As[16][64];  // [kk][row]
  __shared__ float Bs[16][64];  // [kk][col]
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int row0 = blockIdx.y * 64, col0 = blockIdx.x * 64;
  const int M = p.m, N = p.n, K = p.k;
  float acc[4][4];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += 16) {
    for (int r = 0; r < 4; r++) {
      const int e = t + 256 * r;
      const int row = e / 16, kk = e % 16, gr = row0 + row, gk = k0 + kk;
      As[kk][row] = (gr < M && gk < K) ? p.a[gr * K + gk] : 0.0f;
      const int kb = e / 64, col = e % 64, gkb = k0 + kb, gc = col0 + col;
      Bs[kb][col] = (gkb < K && gc < N) ? p.b[gkb * N + gc] : 0.0f;
    }
    __syncthreads();
    for (int kk = 0; kk < 16; kk++) {
      float av[4], bv[4];
      for (int i = 0; i < 4; i++) av[i] = As[kk][ty * 4 + i];
      for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx * 4 + j];
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      const int r = row0 + ty * 4 + i, c = col0 + tx * 4 + j;
      if (r < M && c < N) p.c[r * N + c] = acc[i][j];
    }
}

// ---- indices -----------------------------------------------------------------------------------

struct IndexParams {
  unsigned* out;  // [4 per thread of the grid], thread order: block linear, then thread linear
};

__device__ __forceinline__ unsigned pack3(dim3 d) { return d.x | d.y << 10 | d.z << 20; }

KERNEL(selftest_index, IndexParams) {
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned* o = p.out + 4 * (block * threads + thread);
  o[0] = pack3(threadIdx);
  o[1] = pack3(blockIdx);
  o[2] = pack3(blockDim);
  o[3] = pack3(gridDim);
}

// ---- warp shuffles ------------------------------------------------------------------------------

struct WarpParams {
  const float* x;  // one value per thread
  float* out;      // [8 per thread]
};

KERNEL(selftest_warp_f32, WarpParams) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
  const float v = p.x[g];
  float* o = p.out + 8 * g;
  o[0] = __shfl_sync(REST_FULL_MASK, v, 3);
  o[1] = __shfl_sync(REST_FULL_MASK, v, 31 - lane);
  o[2] = warp_sum(v);
  o[3] = __shfl_down_sync(REST_FULL_MASK, v, 3);
  o[4] = __shfl_up_sync(REST_FULL_MASK, v, 2, 16);
  o[5] = __shfl_xor_sync(REST_FULL_MASK, v, 5, 8);
  // Two 16-lane groups with different masks and different work, in flight at the same time.
  float s = v;
  if (lane < 16) {
    for (int off = 8; off > 0; off >>= 1) s += __shfl_xor_sync(0x0000ffffu, s, off, 16);
  } else {
    __syncwarp(0xffff0000u);
    for (unsigned off = 1; off < 16; off <<= 1)
      s = fmaxf(s, __shfl_down_sync(0xffff0000u, s, off, 16));
  }
  o[6] = s;
  const int iv = __shfl_sync(REST_FULL_MASK, (int)(lane * 3), (int)((lane + 1) & 31));
  o[7] = (float)iv;
}

// ---- votes, barrier predicates, exited lanes, bit intrinsics ------------------------------------
// Launched with a partial last warp: absent lanes count as exited.

struct VoteParams {
  const unsigned* pred;  // one per thread
  unsigned* out;         // [11 per thread]
};

KERNEL(selftest_vote, VoteParams) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
  const int pr = p.pred[g] != 0;
  unsigned* o = p.out + 11 * g;
  o[0] = __ballot_sync(REST_FULL_MASK, pr);
  o[1] = __any_sync(REST_FULL_MASK, pr);
  o[2] = __all_sync(REST_FULL_MASK, pr);
  o[3] = __activemask();
  o[4] = __ballot_sync(lane < 16 ? 0x0000ffffu : 0xffff0000u, pr);
  o[5] = __syncthreads_count(pr);
  o[6] = __syncthreads_and(pr);
  o[7] = __syncthreads_or(pr);
  o[9] = __brev(1u << lane) ^ (unsigned)(__popc(lane) << 8) ^ (unsigned)(__clz(lane) << 16) ^
         (unsigned)(__ffs(lane) << 24);
  // Lanes 20.. of warp 0 leave; the rest still vote with the full mask.
  if (threadIdx.x < 32 && lane >= 20) return;
  o[8] = __ballot_sync(REST_FULL_MASK, 1);
  // Reading an exited (warp 0) or absent (16-lane warp) lane is undefined: the emulator poisons.
  o[10] = __shfl_sync(REST_FULL_MASK, lane, 25);
}

// ---- atomics -----------------------------------------------------------------------------------

struct AtomicParams {
  const float* x;  // [n]
  float* fsum;     // [2]: global float atomics, per-block shared sums added up
  unsigned* ints;  // [8]
  unsigned n, pad;
};

KERNEL(selftest_atomic, AtomicParams) {
  __shared__ float sf;
  __shared__ int si;
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (threadIdx.x == 0) {
    sf = 0.0f;
    si = 0;
  }
  __syncthreads();
  if (i < p.n) {
    const float v = p.x[i];
    atomicAdd(&p.fsum[0], v);
    atomicAdd(&sf, v);
    atomicAdd(&si, 1);
    atomicAdd(&p.ints[0], 1u);
    atomicMax(reinterpret_cast<int*>(&p.ints[2]), (int)i);
    atomicMin(&p.ints[3], i);
    atomicOr(&p.ints[4], 1u << (i % 32));
    atomicXor(&p.ints[5], i);
    unsigned old = p.ints[6], seen;
    while ((seen = atomicCAS(&p.ints[6], old, old + 2)) != old) old = seen;
    atomicSub(&p.ints[7], 1u);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(&p.fsum[1], sf);
    atomicAdd(reinterpret_cast<int*>(&p.ints[1]), si);
  }
}

// ---- dynamic shared memory ----------------------------------------------------------------------
// Launched with smem = 4 * blockDim.x bytes.

struct DynParams {
  unsigned* out;  // [2 per thread]: first word seen (poison), mirrored neighbour after the barrier
};

KERNEL(selftest_dyn_smem, DynParams) {
  DYN_SHARED(unsigned, buf);
  const unsigned t = threadIdx.x, n = blockDim.x, g = blockIdx.x * n + t;
  const unsigned first = buf[t];
  __syncthreads();
  buf[t] = t + 1000 * blockIdx.x;
  __syncthreads();
  p.out[2 * g] = first;
  p.out[2 * g + 1] = buf[n - 1 - t];
}

// ---- scheduler cost -----------------------------------------------------------------------------

struct SpinParams {
  float* out;  // [one per thread]
  unsigned iters, mode;  // mode 0: __syncthreads per iteration, 1: __syncwarp, 2: no waiting
};

KERNEL(selftest_spin, SpinParams) {
  float acc = (float)threadIdx.x;
  for (unsigned it = 0; it < p.iters; it++) {
    if (p.mode == 0)
      __syncthreads();
    else if (p.mode == 1)
      __syncwarp();
    acc = acc * 0.5f + 1.0f;
  }
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// ---- deliberate deadlocks and misuse (only in block 1; the test checks the report) ----------

struct DeadlockParams {
  unsigned mode, pad;
};

KERNEL(selftest_deadlock, DeadlockParams) {
  __syncthreads();
  if (blockIdx.x != 1) return;
  if (p.mode == 0) {
    if (threadIdx.x < 16)
      __syncthreads();  // DEADLOCK-A
    else
      __syncthreads();  // DEADLOCK-B
  } else if (p.mode == 2) {
    (void)__shfl_sync(1u, 1.0f, 0);  // MISUSE-E: lanes other than 0 are not in the mask
  } else {
    const unsigned lane = threadIdx.x & 31;
    if (threadIdx.x < 32 && lane < 16)
      __syncthreads();  // DEADLOCK-C
    else
      (void)__shfl_sync(REST_FULL_MASK, 1.0f, 0);  // DEADLOCK-D
  }
}
