// conv.cu — 2-D convolution, dense and masked-sparse: forward, input gradient, weight gradient,
// bias gradient.
//
// Layouts (as the CPU engine, src/device/cpu/conv.rs and src/sparse/csr.rs):
// - activations CNHW: x [Cin, N, H, W], y / dy [Cout, N, OH, OW], f32 contiguous;
// - dense weight W [Cout, K] with K = Cin·k·k and column r = ci·k·k + kh·k + kw;
// - the im2col matrix (never materialised here) col[r, j], j = (n·OH + oh)·OW + ow, reads
//   x[ci, n, oh·s + kh − pad, ow·s + kw − pad], zero outside the input;
// - sparse weight: CSR over rows = Cout (row_ptr [Cout+1], col_idx [nnz], values [nnz], columns
//   as the dense r) plus the CSC index (col_ptr [K+1], csc_row [nnz], csc_pos [nnz] = positions
//   into values). The linear layer is the 1×1 convolution of x [Cin, N, 1, 1].
// Every kernel below writes each output element exactly once (no atomics, no pre-zeroed
// outputs): results are deterministic for a given launch configuration.
//
// Kernels and launch configuration (chosen by src/device/gpu/kernels/conv.rs):
// - conv_fwd_dense_simple_f32: one thread per output element, no shared memory (reference).
// - conv_fwd_dense_f32, conv_bwd_data_dense_f32, conv_bwd_weight_dense_f32: implicit GEMMs on
//   one tiled core (gemm_tile below): 256 threads compute a 64×64 output tile, 4×4 per thread
//   (rows ty + 16i, columns tx + 16j, so shared-memory reads are broadcasts or consecutive and
//   global stores coalesce), K-step 16 through shared memory As[16][66] + Bs[16][64]
//   (8.4 KiB; the row pitch 66 makes the transposing A store conflict-free), with the next
//   K-step's global loads issued into registers before the current one is consumed.
//   Grid (⌈cols/64⌉, ⌈rows/64⌉, splits). The gathers (im2col for forward and weight gradient,
//   the col2im adjoint for the input gradient) happen in the tile loaders, which follow their
//   rows with mixed-radix counters (no integer division inside the K loop).
//     fwd:         Y[Cout, N·OH·OW] = W[Cout, K] · col           (reduction K)
//     bwd data:    dX[Cin, N·H·W]  = Wᵀ-gather · dY-gather        (reduction Cout·k·k)
//     bwd weight:  dW[Cout, K]     = dY[Cout, P] · colᵀ           (reduction P = N·OH·OW)
//   The weight gradient's long reduction is split over grid.z: split z writes its partial
//   dW into work[z] and conv_bwd_weight_reduce_f32 sums the splits in order (deterministic,
//   no atomics); with one split the kernel writes dW directly.
// - conv_fwd_sparse_f32: block (256 threads) per (tile of ≤ 1024 output pixels: whole images or a
//   band of rows, group of 8 output channels); per input channel the rows use, the tile's input
//   window is staged in shared memory once and every active weight of the 8 rows reads it there;
//   each thread accumulates 4 pixels × 8 channels.
// - conv_bwd_data_sparse_f32: block per (tile of ≤ 1024 input pixels, group of 8 input
//   channels); per output channel its columns use, dY's window is staged in shared memory (zero
//   where the stride maps no output) and every active (channel, tap) in that row reads it there.
// - conv_bwd_weight_sparse_f32: block per (split of the forward's tiles, group of 8 output
//   channels); per tile the pixels' dY of the 8 rows in registers, per input channel the input
//   window staged in shared memory, per active weight a block reduction; splits summed by
//   conv_bwd_weight_reduce_f32.
// - conv_bwd_bias_f32: block (256) per output channel: block_sum of its dY row.
//
// CPU twins: src/device/cpu/twin/conv.rs (same names; plain loops with f64 accumulators).
// Numeric differences vs the twins: f32 accumulation in a different order (tiles, splits,
// shuffle trees) and fused multiply-adds on a GPU; errors grow with the reduction length.
#include "common.cuh"

// Geometry, as ConvGeom (u32 fields). All element counts fit in 31 bits (checked by the
// wrappers), so int arithmetic is used for indices.
struct ConvShape {
  unsigned n, cin, h, w, cout, k, stride, pad, oh, ow;
};

struct ConvFwdParams {
  const float* x;     // [Cin, N, H, W]
  const float* w;     // [Cout, K]
  const float* bias;  // [Cout] or null
  float* y;           // [Cout, N, OH, OW]
  ConvShape s;
};

struct ConvBwdDataParams {
  const float* dy;  // [Cout, N, OH, OW]
  const float* w;   // [Cout, K]
  float* dx;        // [Cin, N, H, W]
  ConvShape s;
};

struct ConvBwdWeightParams {
  const float* x;   // [Cin, N, H, W]
  const float* dy;  // [Cout, N, OH, OW]
  float* out;       // dW [Cout, K] (splits = 1) or partials [splits, Cout, K]
  ConvShape s;
  unsigned splits;  // = gridDim.z
  unsigned chunk;   // reduction columns per split, a multiple of 16
};

struct ConvReduceParams {
  const float* partial;  // [splits, len]
  float* out;            // [len]
  unsigned len, splits;
};

struct ConvSparseFwdParams {
  const float* x;           // [Cin, N, H, W]
  const unsigned* row_ptr;  // [Cout + 1]
  const unsigned* col_idx;  // [nnz]
  const float* values;      // [nnz]
  const float* bias;        // [Cout] or null
  float* y;                 // [Cout, N, OH, OW]
  ConvShape s;
  unsigned nnz;
  unsigned rows, images;  // the tile: output rows of an image, or whole images (rows = OH)
  unsigned pad0;
};

struct ConvSparseBwdDataParams {
  const float* dy;          // [Cout, N, OH, OW]
  const unsigned* col_ptr;  // [K + 1]
  const unsigned* csc_row;  // [nnz]
  const unsigned* csc_pos;  // [nnz]
  const float* values;      // [nnz]
  float* dx;                // [Cin, N, H, W]
  ConvShape s;
  unsigned nnz;
  unsigned rows, images;  // the tile of dx: input rows of an image, or whole images (rows = H)
  unsigned pad0;
};

struct ConvSparseBwdWeightParams {
  const float* x;           // [Cin, N, H, W]
  const float* dy;          // [Cout, N, OH, OW]
  const unsigned* row_ptr;  // [Cout + 1]
  const unsigned* col_idx;  // [nnz]
  float* out;               // dvalues [nnz] (splits = 1) or partials [splits, nnz]
  ConvShape s;
  unsigned nnz;
  unsigned rows, images;  // the tile, as the forward's
  unsigned splits;        // = gridDim.x
};

struct ConvBwdBiasParams {
  const float* dy;  // [Cout, cols]
  float* db;        // [Cout]
  unsigned cout, cols;
};

// Sizes of the Rust mirrors (src/device/gpu/kernels/conv.rs): a field added on one side only fails
// the build (NVRTC and the emulator both compile this).
static_assert(sizeof(ConvShape) == 40, "ConvShape");
static_assert(sizeof(ConvFwdParams) == 72, "ConvFwdParams");
static_assert(sizeof(ConvBwdDataParams) == 64, "ConvBwdDataParams");
static_assert(sizeof(ConvBwdWeightParams) == 72, "ConvBwdWeightParams");
static_assert(sizeof(ConvReduceParams) == 24, "ConvReduceParams");
static_assert(sizeof(ConvSparseFwdParams) == 104, "ConvSparseFwdParams");
static_assert(sizeof(ConvSparseBwdDataParams) == 104, "ConvSparseBwdDataParams");
static_assert(sizeof(ConvSparseBwdWeightParams) == 96, "ConvSparseBwdWeightParams");
static_assert(sizeof(ConvBwdBiasParams) == 24, "ConvBwdBiasParams");

// A pixel index no (ih, iw) can reach: added to a kernel offset it stays negative.
#define CONV_NOWHERE (-(1 << 29))

// ---------------------------------------------------------------------------------------------
// Simple dense forward: one thread per output element.

KERNEL(conv_fwd_dense_simple_f32, ConvFwdParams) {
  const ConvShape s = p.s;
  const int ohw = (int)(s.oh * s.ow), P = (int)s.n * ohw;
  const int kk = (int)(s.k * s.k), K = (int)s.cin * kk, plane = (int)(s.n * s.h * s.w);
  const int idx = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (idx >= (int)s.cout * P) return;
  const int co = idx / P, j = idx - co * P;
  const int nn = j / ohw, q = j - nn * ohw, oh = q / (int)s.ow, ow = q - oh * (int)s.ow;
  const int ih0 = oh * (int)s.stride - (int)s.pad, iw0 = ow * (int)s.stride - (int)s.pad;
  const float* wr = p.w + (size_t)co * K;
  float acc = 0.0f;
  for (int ci = 0; ci < (int)s.cin; ++ci) {
    const float* xp = p.x + ci * plane + nn * (int)(s.h * s.w);
    for (int kh = 0; kh < (int)s.k; ++kh) {
      const int ih = ih0 + kh;
      if (ih < 0 || ih >= (int)s.h) continue;
      for (int kw = 0; kw < (int)s.k; ++kw) {
        const int iw = iw0 + kw;
        if (iw < 0 || iw >= (int)s.w) continue;
        acc += wr[ci * kk + kh * (int)s.k + kw] * xp[ih * (int)s.w + iw];
      }
    }
  }
  if (p.bias) acc += p.bias[co];
  p.y[idx] = acc;
}

// ---------------------------------------------------------------------------------------------
// The tiled implicit-GEMM core: C[m, c] = Σ_{r ∈ [rb, re)} A(m, r) · B(r, c) for the block's
// 64×64 tile (rows m0.., columns c0..). Loaders, built by the kernel for this thread:
//   la: A elements of the thread's A column ra = rb + (tid & 15) (+16 per K-step), for rows m;
//       la.at(m) is called only with m < M and ra < re, then la.step() moves ra on by 16;
//   lb: B elements of the thread's own column c0 + (tid & 63) at reduction rows
//       rb + (tid >> 6) + 4i (+16 per K-step), i = 0..3; lb.at(i) is called only with that
//       row < re and the column < N, then lb.step() moves all four rows on by 16.
// Loaders track their rows' (hi, mid, lo) digits with mixed-radix counters, so the gathers
// need no integer division inside the loop.
// Result in acc[i][j] for row m0 + ty + 16i, column c0 + tx + 16j (tx = tid & 15, ty = tid >> 4).
// Requires blockDim.x == 256; every thread of the block must call it (it synchronises).

#define CT_TILE 64
#define CT_KSTEP 16
#define CT_THREADS 256
#define CT_APITCH 66

// A number v = (hi·r1 + mid)·r0 + lo in mixed radix (∞, r1, r0), advanced by a fixed step.
struct Digits {
  int hi, mid, lo;
};

struct RadixStep {
  int r1, r0;         // radices of mid and lo
  int dhi, dmid, dlo; // the step's own digits
};

__device__ __forceinline__ Digits digits_of(int v, int r1, int r0) {
  Digits d;
  const int q = v / r0;
  d.lo = v - q * r0;
  d.hi = q / r1;
  d.mid = q - d.hi * r1;
  return d;
}

__device__ __forceinline__ RadixStep radix_step(int step, int r1, int r0) {
  const Digits d = digits_of(step, r1, r0);
  RadixStep s;
  s.r1 = r1;
  s.r0 = r0;
  s.dhi = d.hi;
  s.dmid = d.mid;
  s.dlo = d.lo;
  return s;
}

// d += step (each digit and carry below twice its radix, so one subtraction normalises it).
__device__ __forceinline__ void advance(Digits& d, const RadixStep& s) {
  d.lo += s.dlo;
  int c = d.lo >= s.r0;
  d.lo -= c ? s.r0 : 0;
  d.mid += s.dmid + c;
  c = d.mid >= s.r1;
  d.mid -= c ? s.r1 : 0;
  d.hi += s.dhi + c;
}

template <class LA, class LB>
__device__ __forceinline__ void gemm_tile(LA& la, LB& lb, int M, int N, int m0, int c0, int rb,
                                          int re, float (*As)[CT_APITCH], float (*Bs)[CT_TILE],
                                          float acc[4][4]) {
  const int tid = (int)threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  // A loads: column r0 + ak of rows m0 + am + 16i. B loads: rows r0 + bk + 4i of column bc.
  const int ak = tid & 15, am = tid >> 4;
  const int bc = tid & 63, bk = tid >> 6;
  const bool bcol_ok = c0 + bc < N;
  float ra[4], rbv[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  if (rb >= re) return;  // uniform: empty reduction

  int r0 = rb;
  {
    const bool a_ok = r0 + ak < re;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + am + 16 * i;
      ra[i] = (a_ok && m < M) ? la.at(m) : 0.0f;
      rbv[i] = (bcol_ok && r0 + bk + 4 * i < re) ? lb.at(i) : 0.0f;
    }
    la.step();
    lb.step();
  }
  for (;;) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[ak][am + 16 * i] = ra[i];
      Bs[bk + 4 * i][bc] = rbv[i];
    }
    __syncthreads();
    const int rn = r0 + CT_KSTEP;
    const bool more = rn < re;  // uniform
    if (more) {
      // The next K-step's loads, in flight while this one is consumed.
      const bool a_ok = rn + ak < re;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = m0 + am + 16 * i;
        ra[i] = (a_ok && m < M) ? la.at(m) : 0.0f;
        rbv[i] = (bcol_ok && rn + bk + 4 * i < re) ? lb.at(i) : 0.0f;
      }
      la.step();
      lb.step();
    }
#pragma unroll
    for (int kq = 0; kq < CT_KSTEP; ++kq) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kq][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kq][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
    if (!more) break;
    r0 = rn;
  }
}

// Writes the 64×64 tile (row-major out[M, N]) from acc, adding bias[m] when given.
__device__ __forceinline__ void store_tile(float* out, const float* bias, int M, int N, int m0,
                                           int c0, const float acc[4][4]) {
  const int tx = (int)threadIdx.x & 15, ty = (int)threadIdx.x >> 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= M) continue;
    const float b = bias ? bias[m] : 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + tx + 16 * j;
      if (c < N) out[m * N + c] = acc[i][j] + b;
    }
  }
}

// A = a row-major matrix [M, ld] read at column ra (dense weight for forward, dY for the
// weight gradient).
struct RowMajorA {
  const float* a;
  int ld, ra;
  __device__ __forceinline__ float at(int m) const { return a[m * ld + ra]; }
  __device__ __forceinline__ void step() { ra += CT_KSTEP; }
};

// B rows r = (ci, kh, kw) of col[r, j] for the thread's fixed output column j (forward).
struct Im2colColumn {
  const float* x;
  int h, w, plane;  // plane = N·H·W
  int pix;          // n·H·W of column j
  int ih0, iw0;     // oh·s − pad, ow·s − pad of column j
  int j;
  bool direct;  // k = 1, stride 1, pad 0: col is x viewed as [Cin, N·H·W], row r at r·plane
  RadixStep st;
  Digits d[4];  // (ci, kh, kw) of the thread's four rows
  __device__ __forceinline__ float at(int i) const {
    if (direct) return x[d[i].hi * plane + j];
    const int ih = ih0 + d[i].mid, iw = iw0 + d[i].lo;
    if ((unsigned)ih >= (unsigned)h || (unsigned)iw >= (unsigned)w) return 0.0f;
    return x[d[i].hi * plane + pix + ih * w + iw];
  }
  __device__ __forceinline__ void step() {
#pragma unroll
    for (int i = 0; i < 4; ++i) advance(d[i], st);
  }
};

KERNEL(conv_fwd_dense_f32, ConvFwdParams) {
  __shared__ float As[CT_KSTEP][CT_APITCH];
  __shared__ float Bs[CT_KSTEP][CT_TILE];
  const ConvShape s = p.s;
  const int k = (int)s.k;
  const int M = (int)s.cout, N = (int)(s.n * s.oh * s.ow), K = (int)s.cin * k * k;
  const int m0 = (int)blockIdx.y * CT_TILE, c0 = (int)blockIdx.x * CT_TILE;
  const int tid = (int)threadIdx.x;
  RowMajorA la;
  la.a = p.w;
  la.ld = K;
  la.ra = tid & 15;
  Im2colColumn lb;
  {
    const int j = min(c0 + (tid & 63), N - 1);  // clamped: unused past N
    const int ohw = (int)(s.oh * s.ow);
    const int nn = j / ohw, q = j - nn * ohw, oh = q / (int)s.ow, ow = q - oh * (int)s.ow;
    lb.x = p.x;
    lb.h = (int)s.h;
    lb.w = (int)s.w;
    lb.plane = (int)(s.n * s.h * s.w);
    lb.pix = nn * (int)(s.h * s.w);
    lb.ih0 = oh * (int)s.stride - (int)s.pad;
    lb.iw0 = ow * (int)s.stride - (int)s.pad;
    lb.j = j;
    lb.direct = k == 1 && s.stride == 1 && s.pad == 0;
    lb.st = radix_step(CT_KSTEP, k, k);
#pragma unroll
    for (int i = 0; i < 4; ++i) lb.d[i] = digits_of((tid >> 6) + 4 * i, k, k);
  }
  float acc[4][4];
  gemm_tile(la, lb, M, N, m0, c0, 0, K, As, Bs, acc);
  store_tile(p.y, p.bias, M, N, m0, c0, acc);
}

// ---------------------------------------------------------------------------------------------
// Dense input gradient: dX[ci, (n, ih, iw)] = Σ_{r = (co, kh, kw)} W[co, ci, kh, kw] ·
// dY[co, n, oh, ow] where oh·s + kh − pad = ih and ow·s + kw − pad = iw (col2im as a gather).

// A(ci, r) = W[co, ci·kk + khw] at the thread's column r = co·kk + khw (digits (co, khw)).
struct WeightTransposedA {
  const float* w;
  int kk, cin;
  RadixStep st;
  Digits d;
  __device__ __forceinline__ float at(int ci) const {
    return w[(d.mid * cin + ci) * kk + d.lo];
  }
  __device__ __forceinline__ void step() { advance(d, st); }
};

// B rows r = (co, kh, kw): dY[co, n, oh, ow] for the thread's input pixel (n, ih, iw), zero
// where no output pixel reads (ih, iw) through tap (kh, kw).
struct Col2imColumn {
  const float* dy;
  int stride, oh, ow, P;
  int dpix;    // n·OH·OW
  int th, tw;  // ih + pad, iw + pad
  RadixStep st;
  Digits d[4];  // (co, kh, kw) of the thread's four rows
  __device__ __forceinline__ float at(int i) const {
    const int a = th - d[i].mid, b = tw - d[i].lo;
    if (a < 0 || b < 0) return 0.0f;
    int oy = a, ox = b;
    if (stride != 1) {  // uniform; stride 1 (most layers) needs no division
      oy = a / stride;
      ox = b / stride;
      if (oy * stride != a || ox * stride != b) return 0.0f;
    }
    if (oy >= oh || ox >= ow) return 0.0f;
    return dy[d[i].hi * P + dpix + oy * ow + ox];
  }
  __device__ __forceinline__ void step() {
#pragma unroll
    for (int i = 0; i < 4; ++i) advance(d[i], st);
  }
};

KERNEL(conv_bwd_data_dense_f32, ConvBwdDataParams) {
  __shared__ float As[CT_KSTEP][CT_APITCH];
  __shared__ float Bs[CT_KSTEP][CT_TILE];
  const ConvShape s = p.s;
  const int hw = (int)(s.h * s.w), k = (int)s.k;
  const int M = (int)s.cin, N = (int)s.n * hw, kk = k * k, R = (int)s.cout * kk;
  const int m0 = (int)blockIdx.y * CT_TILE, c0 = (int)blockIdx.x * CT_TILE;
  const int tid = (int)threadIdx.x;
  WeightTransposedA la;
  la.w = p.w;
  la.kk = kk;
  la.cin = (int)s.cin;
  la.st = radix_step(CT_KSTEP, 1 << 30, kk);  // digits (0, co, khw): mid never wraps
  la.d = digits_of(tid & 15, 1 << 30, kk);
  Col2imColumn lb;
  {
    const int j = min(c0 + (tid & 63), N - 1);
    const int nn = j / hw, q = j - nn * hw, ih = q / (int)s.w, iw = q - ih * (int)s.w;
    lb.dy = p.dy;
    lb.stride = (int)s.stride;
    lb.oh = (int)s.oh;
    lb.ow = (int)s.ow;
    lb.P = (int)(s.n * s.oh * s.ow);
    lb.dpix = nn * (int)(s.oh * s.ow);
    lb.th = ih + (int)s.pad;
    lb.tw = iw + (int)s.pad;
    lb.st = radix_step(CT_KSTEP, k, k);
#pragma unroll
    for (int i = 0; i < 4; ++i) lb.d[i] = digits_of((tid >> 6) + 4 * i, k, k);
  }
  float acc[4][4];
  gemm_tile(la, lb, M, N, m0, c0, 0, R, As, Bs, acc);
  store_tile(p.dx, nullptr, M, N, m0, c0, acc);
}

// ---------------------------------------------------------------------------------------------
// Dense weight gradient: dW[co, r] = Σ_j dY[co, j] · col[r, j], the reduction over j split into
// gridDim.z chunks.

// B rows j = (n, oy, ox) of col[r, j] for the thread's fixed column r = (ci, kh, kw) of dW.
struct Im2colRow {
  const float* x;
  int xoff;    // ci·N·H·W
  int dh, dw;  // kh − pad, kw − pad
  int h, w, hw, stride;
  RadixStep st;
  Digits d[4];  // (n, oy, ox) of the thread's four rows
  __device__ __forceinline__ float at(int i) const {
    const int ih = d[i].mid * stride + dh, iw = d[i].lo * stride + dw;
    if ((unsigned)ih >= (unsigned)h || (unsigned)iw >= (unsigned)w) return 0.0f;
    return x[xoff + d[i].hi * hw + ih * w + iw];
  }
  __device__ __forceinline__ void step() {
#pragma unroll
    for (int i = 0; i < 4; ++i) advance(d[i], st);
  }
};

KERNEL(conv_bwd_weight_dense_f32, ConvBwdWeightParams) {
  __shared__ float As[CT_KSTEP][CT_APITCH];
  __shared__ float Bs[CT_KSTEP][CT_TILE];
  const ConvShape s = p.s;
  const int k = (int)s.k, kk = k * k, K = (int)s.cin * kk;
  const int OH = (int)s.oh, OW = (int)s.ow;
  const int M = (int)s.cout, N = K, P = (int)s.n * OH * OW;
  const int m0 = (int)blockIdx.y * CT_TILE, c0 = (int)blockIdx.x * CT_TILE;
  const int rb = (int)(blockIdx.z * p.chunk), re = min(P, rb + (int)p.chunk);
  const int tid = (int)threadIdx.x;
  RowMajorA la;
  la.a = p.dy;
  la.ld = P;
  la.ra = rb + (tid & 15);
  Im2colRow lb;
  {
    const int r = min(c0 + (tid & 63), N - 1);
    const int ci = r / kk, q = r - ci * kk, kh = q / k, kw = q - kh * k;
    lb.x = p.x;
    lb.xoff = ci * (int)(s.n * s.h * s.w);
    lb.dh = kh - (int)s.pad;
    lb.dw = kw - (int)s.pad;
    lb.h = (int)s.h;
    lb.w = (int)s.w;
    lb.hw = (int)(s.h * s.w);
    lb.stride = (int)s.stride;
    lb.st = radix_step(CT_KSTEP, OH, OW);
#pragma unroll
    for (int i = 0; i < 4; ++i) lb.d[i] = digits_of(rb + (tid >> 6) + 4 * i, OH, OW);
  }
  float acc[4][4];
  gemm_tile(la, lb, M, N, m0, c0, rb, re, As, Bs, acc);
  store_tile(p.out + (size_t)blockIdx.z * (size_t)(M * N), nullptr, M, N, m0, c0, acc);
}

// out[i] = Σ_z partial[z, i], z ascending (the deterministic second pass of the split
// weight gradient). One thread per element.
KERNEL(conv_bwd_weight_reduce_f32, ConvReduceParams) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.len) return;
  float acc = 0.0f;
  for (unsigned z = 0; z < p.splits; ++z) acc += p.partial[(size_t)z * p.len + i];
  p.out[i] = acc;
}

// ---------------------------------------------------------------------------------------------
// Sparse kernels.

#define SP_THREADS 256
#define SP_PPT 4
#define SP_TILE (SP_THREADS * SP_PPT)

// y[co, j] = Σ_{e in row co} values[e] · col[col_idx[e], j] (+ bias[co]).
// Block (256 threads) per (tile of output pixels, group of SPF_G output channels). A tile is
// `images` whole images, or a band of `rows` output rows of one image (the wrapper picks them so
// that the tile has ≤ 1024 pixels and its input window fits SPF_SMEM floats). The block walks
// the input channels its rows use, in order: it stages the tile's input window of channel ci in
// shared memory once (zero-padded, so the inner loop needs no bounds checks), then every active
// weight of its rows in ci reads from there. An input value is loaded from global memory once
// per (block, channel) instead of once per active weight. Each row's entries are summed in
// CSR order, as the CPU twin does.
// Grid (⌈N/images⌉·⌈OH/rows⌉, ⌈Cout/SPF_G⌉), block 256.
#define SPF_G 8
#define SPF_SMEM 8192

// A block's tile of the sparse kernels: `nimg` images from n0, `nrows` plane rows from r0 (of a
// plane of `plane_rows` rows; `rows` per band, `images` per tile as the wrapper chose).
struct SparseTile {
  int n0, r0, nimg, nrows;
};

__device__ __forceinline__ SparseTile sparse_tile(int tile, int rows, int images, int n,
                                                  int plane_rows) {
  const int bands = (plane_rows + rows - 1) / rows;
  const int group = tile / bands, band = tile - group * bands;
  SparseTile t;
  t.n0 = group * images;
  t.r0 = band * rows;
  t.nimg = min(images, n - t.n0);
  t.nrows = min(rows, plane_rows - t.r0);
  return t;
}

// Stages rows [ih0, ih0 + IR) × columns [−pd, W + pd) of `nimg` images of one input channel
// (xc: its plane at the tile's first image) into xs, zero outside the input.
__device__ __forceinline__ void stage_x_window(float* xs, const float* xc, int nimg, int IR,
                                               int WP, int ih0, int pd, int H, int W) {
  const int staged = nimg * IR * WP;
  for (int e = (int)threadIdx.x; e < staged; e += (int)blockDim.x) {
    const int img = e / (IR * WP), r = e - img * (IR * WP), row = r / WP, c = r - row * WP;
    const int ih = ih0 + row, iw = c - pd;
    xs[e] = ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                ? xc[img * H * W + ih * W + iw]
                : 0.0f;
  }
}

// The lowest input channel the group's rows still use (entries cur[g] .. end[g], columns
// ascending), or −1 when every row is done. Uniform over the block.
__device__ __forceinline__ int next_input_channel(const int* cur, const int* end,
                                                  const unsigned* col_idx, int kk) {
  int ci = 1 << 30;
#pragma unroll
  for (int g = 0; g < SPF_G; ++g)
    if (cur[g] < end[g]) ci = min(ci, (int)col_idx[cur[g]] / kk);
  return ci == 1 << 30 ? -1 : ci;
}

KERNEL(conv_fwd_sparse_f32, ConvSparseFwdParams) {
  __shared__ float xs[SPF_SMEM];
  const ConvShape s = p.s;
  const int tid = (int)threadIdx.x;
  const int H = (int)s.h, W = (int)s.w, OH = (int)s.oh, OW = (int)s.ow;
  const int k = (int)s.k, kk = k * k, st = (int)s.stride, pd = (int)s.pad;
  const int plane = (int)s.n * H * W, P = (int)s.n * OH * OW;
  const int WP = W + 2 * pd;  // staged row pitch: the padded input row
  const SparseTile tl = sparse_tile((int)blockIdx.x, (int)p.rows, (int)p.images, (int)s.n, OH);
  const int n0 = tl.n0, oh0 = tl.r0, nimg = tl.nimg, orows = tl.nrows;
  const int IR = (orows - 1) * st + k;  // staged input rows per image
  const int ih0 = oh0 * st - pd;        // input row of staged row 0
  const int tile_px = nimg * orows * OW;
  // The thread's pixels: where each reads its window in xs, and where it writes y.
  int sb[SP_PPT], yo[SP_PPT];
#pragma unroll
  for (int q = 0; q < SP_PPT; ++q) {
    const int t = tid + q * SP_THREADS;
    sb[q] = 0;
    yo[q] = -1;
    if (t < tile_px) {
      const int img = t / (orows * OW), r = t - img * (orows * OW), orow = r / OW;
      const int ow = r - orow * OW;
      sb[q] = img * IR * WP + orow * st * WP + ow * st;
      yo[q] = ((n0 + img) * OH + oh0 + orow) * OW + ow;
    }
  }
  // Each of the group's rows: the next entry and the end (every thread keeps the same copy).
  const int co0 = (int)blockIdx.y * SPF_G;
  int cur[SPF_G], end[SPF_G];
  float acc[SPF_G][SP_PPT];
#pragma unroll
  for (int g = 0; g < SPF_G; ++g) {
    const bool live = co0 + g < (int)s.cout;
    cur[g] = live ? (int)p.row_ptr[co0 + g] : 0;
    end[g] = live ? (int)p.row_ptr[co0 + g + 1] : 0;
#pragma unroll
    for (int q = 0; q < SP_PPT; ++q) acc[g][q] = 0.0f;
  }
  for (;;) {
    const int ci = next_input_channel(cur, end, p.col_idx, kk);
    if (ci < 0) break;
    __syncthreads();  // the previous channel's window has been used
    stage_x_window(xs, p.x + ci * plane + n0 * H * W, nimg, IR, WP, ih0, pd, H, W);
    __syncthreads();
    const int cend = (ci + 1) * kk;
#pragma unroll
    for (int g = 0; g < SPF_G; ++g) {
      for (; cur[g] < end[g]; ++cur[g]) {
        const int c = (int)p.col_idx[cur[g]];
        if (c >= cend) break;
        const int t = c - ci * kk, kh = t / k, off = kh * WP + (t - kh * k);
        const float v = p.values[cur[g]];
#pragma unroll
        for (int q = 0; q < SP_PPT; ++q) acc[g][q] += v * xs[sb[q] + off];
      }
    }
  }
#pragma unroll
  for (int g = 0; g < SPF_G; ++g) {
    const int co = co0 + g;
    if (co >= (int)s.cout) continue;
    const float b = p.bias ? p.bias[co] : 0.0f;
#pragma unroll
    for (int q = 0; q < SP_PPT; ++q)
      if (yo[q] >= 0) p.y[co * P + yo[q]] = acc[g][q] + b;
  }
}

// The block-wide minimum of v (every thread gets it). `red` holds a value per warp.
__device__ __forceinline__ int block_min_int(int v, int* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  int m = red[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); ++w) m = min(m, red[w]);
  __syncthreads();
  return m;
}

#define SPB_G 8
#define SPB_MAXK 7
#define SPB_COLS (SPB_G * SPB_MAXK * SPB_MAXK)
#define SPB_NONE 0x7fffffff

// dx[ci, (n, ih, iw)] = Σ_{kh, kw} Σ_{e in column ci·kk + kh·k + kw} values[csc_pos[e]] ·
// dY[csc_row[e], n, oh, ow] with oh·s + kh − pad = ih, ow·s + kw − pad = iw.
// Block (256 threads) per (tile of dx pixels: whole images or a band of rows, group of SPB_G
// input channels). The block walks, in ascending order, the output channels co its columns
// (the group's channels × k² taps, one cursor each over the CSC index) use: it stages dY[co]'s
// window for the tile in shared memory once — in "virtual" coordinates u = ih + pad − kh, zero
// where u is not a multiple of the stride or outside dY, so strided layers need no test in the
// inner loop — and every active (channel, tap) of the group in row co reads it there. Each
// output sums over co ascending, then taps ascending. Needs k ≤ SPB_MAXK.
// Grid (⌈N/images⌉·⌈H/rows⌉, ⌈Cin/SPB_G⌉), block 256.
KERNEL(conv_bwd_data_sparse_f32, ConvSparseBwdDataParams) {
  __shared__ float ds[SPF_SMEM];
  __shared__ float s_val[SPB_G][SPB_MAXK * SPB_MAXK];
  __shared__ unsigned long long s_mask[SPB_G];
  __shared__ int s_tapoff[SPB_MAXK * SPB_MAXK];
  __shared__ int red[SP_THREADS / 32];
  const ConvShape s = p.s;
  const int tid = (int)threadIdx.x;
  const int H = (int)s.h, W = (int)s.w, OH = (int)s.oh, OW = (int)s.ow;
  const int k = (int)s.k, kk = k * k, st = (int)s.stride, pd = (int)s.pad;
  const int P = (int)s.n * OH * OW, NHW = (int)s.n * H * W;
  const int VC = W + k - 1;  // staged row pitch (virtual columns)
  const SparseTile tl = sparse_tile((int)blockIdx.x, (int)p.rows, (int)p.images, (int)s.n, H);
  const int n0 = tl.n0, ih0 = tl.r0, nimg = tl.nimg, irows = tl.nrows;
  const int VR = irows + k - 1;       // staged rows per image
  const int ur0 = ih0 + pd - k + 1;   // virtual row of staged row 0
  const int uc0 = pd - k + 1;         // virtual column of staged column 0
  const int staged = nimg * VR * VC, tile_px = nimg * irows * W;
  int sb[SP_PPT], xo[SP_PPT];
#pragma unroll
  for (int q = 0; q < SP_PPT; ++q) {
    const int t = tid + q * SP_THREADS;
    sb[q] = 0;
    xo[q] = -1;
    if (t < tile_px) {
      const int img = t / (irows * W), r = t - img * (irows * W), lr = r / W, iw = r - lr * W;
      sb[q] = img * VR * VC + lr * VC + iw;
      xo[q] = (n0 + img) * H * W + (ih0 + lr) * W + iw;
    }
  }
  // The group's columns: slot t is (channel ci0 + t / kk, tap t % kk); two slots per thread.
  const int ci0 = (int)blockIdx.y * SPB_G, ncols = SPB_G * kk;
  int cur[2], end[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = tid + i * SP_THREADS, g = t / kk;
    const bool live = t < ncols && ci0 + g < (int)s.cin;
    const int c = (ci0 + g) * kk + (t - g * kk);
    cur[i] = live ? (int)p.col_ptr[c] : 0;
    end[i] = live ? (int)p.col_ptr[c + 1] : 0;
  }
  if (tid < kk) {
    const int kh = tid / k, kw = tid - kh * k;
    s_tapoff[tid] = (k - 1 - kh) * VC + (k - 1 - kw);
  }
  if (tid < SPB_G) s_mask[tid] = 0ull;
  float acc[SPB_G][SP_PPT];
#pragma unroll
  for (int g = 0; g < SPB_G; ++g)
#pragma unroll
    for (int q = 0; q < SP_PPT; ++q) acc[g][q] = 0.0f;
  __syncthreads();
  for (;;) {
    int mine = SPB_NONE;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (cur[i] < end[i]) mine = min(mine, (int)p.csc_row[cur[i]]);
    const int co = block_min_int(mine, red);
    if (co == SPB_NONE) break;
    // The group's entries in row co: each column holds at most one.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (cur[i] < end[i] && (int)p.csc_row[cur[i]] == co) {
        const int t = tid + i * SP_THREADS, g = t / kk, tap = t - g * kk;
        s_val[g][tap] = p.values[p.csc_pos[cur[i]]];
        atomicOr(&s_mask[g], 1ull << tap);
        ++cur[i];
      }
    }
    // dY[co]'s window, zero where no output pixel maps.
    const float* dyc = p.dy + co * P + n0 * OH * OW;
    for (int e = tid; e < staged; e += SP_THREADS) {
      const int img = e / (VR * VC), r = e - img * (VR * VC), row = r / VC, c = r - row * VC;
      const int ur = ur0 + row, uc = uc0 + c;
      float v = 0.0f;
      if (ur >= 0 && uc >= 0) {
        const int oy = ur / st, ox = uc / st;
        if (oy * st == ur && ox * st == uc && oy < OH && ox < OW) v = dyc[img * OH * OW + oy * OW + ox];
      }
      ds[e] = v;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < SPB_G; ++g) {
      unsigned long long m = s_mask[g];
      while (m) {
        const int tap = __ffsll((long long)m) - 1;
        m &= m - 1ull;
        const float v = s_val[g][tap];
        const int off = s_tapoff[tap];
#pragma unroll
        for (int q = 0; q < SP_PPT; ++q) acc[g][q] += v * ds[sb[q] + off];
      }
    }
    __syncthreads();  // the window and the masks have been used
    if (tid < SPB_G) s_mask[tid] = 0ull;
  }
#pragma unroll
  for (int g = 0; g < SPB_G; ++g) {
    const int ci = ci0 + g;
    if (ci >= (int)s.cin) continue;
#pragma unroll
    for (int q = 0; q < SP_PPT; ++q)
      if (xo[q] >= 0) p.dx[ci * NHW + xo[q]] = acc[g][q];
  }
}

#define SWB_SLOTS 32

// Writes the block's `slots` pending sums: each is its warps' partials in warp order, stored to
// out[e] (the block's first tile) or added to it (later tiles of the same block, in order).
__device__ __forceinline__ void swb_flush(float (*red)[SWB_SLOTS], const int* slot_e, int slots,
                                          bool first, float* out) {
  __syncthreads();
  const int tid = (int)threadIdx.x;
  if (tid < slots) {
    float v = 0.0f;
    for (int w = 0; w < SP_THREADS / 32; ++w) v += red[w][tid];
    const int e = slot_e[tid];
    out[e] = first ? v : out[e] + v;
  }
  __syncthreads();
}

// dvalues[e] = Σ_j dY[row(e), j] · col[col_idx[e], j].
// Block (256 threads) per (split z, group of SPF_G output channels); the split takes the tiles
// z, z + splits, … (tiles as the forward's). Per tile, each thread holds its 4 pixels' dY of the
// group's rows in registers; per input channel the rows use, the tile's input window is staged
// in shared memory, and for each active weight of the channel every thread sums its pixels,
// then the block reduces (warp shuffles, then the 8 warps' sums in order). Deterministic: a
// split writes its own partials, conv_bwd_weight_reduce_f32 sums the splits in order.
// Grid (splits, ⌈Cout/SPF_G⌉), block 256.
KERNEL(conv_bwd_weight_sparse_f32, ConvSparseBwdWeightParams) {
  __shared__ float xs[SPF_SMEM];
  __shared__ float red[SP_THREADS / 32][SWB_SLOTS];
  __shared__ int slot_e[SWB_SLOTS];
  const ConvShape s = p.s;
  const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = (int)s.h, W = (int)s.w, OH = (int)s.oh, OW = (int)s.ow;
  const int k = (int)s.k, kk = k * k, st = (int)s.stride, pd = (int)s.pad;
  const int plane = (int)s.n * H * W, P = (int)s.n * OH * OW, WP = W + 2 * pd;
  const int tiles =
      ((int)s.n + (int)p.images - 1) / (int)p.images * ((OH + (int)p.rows - 1) / (int)p.rows);
  const int co0 = (int)blockIdx.y * SPF_G;
  float* out = p.out + (size_t)blockIdx.x * p.nnz;
  int rb[SPF_G], re[SPF_G];
#pragma unroll
  for (int g = 0; g < SPF_G; ++g) {
    const bool live = co0 + g < (int)s.cout;
    rb[g] = live ? (int)p.row_ptr[co0 + g] : 0;
    re[g] = live ? (int)p.row_ptr[co0 + g + 1] : 0;
  }
  for (int tile = (int)blockIdx.x; tile < tiles; tile += (int)gridDim.x) {
    const bool first = tile == (int)blockIdx.x;
    const SparseTile tl = sparse_tile(tile, (int)p.rows, (int)p.images, (int)s.n, OH);
    const int n0 = tl.n0, oh0 = tl.r0, nimg = tl.nimg, orows = tl.nrows;
    const int IR = (orows - 1) * st + k, ih0 = oh0 * st - pd;
    const int tile_px = nimg * orows * OW;
    int sb[SP_PPT];
    float dyr[SPF_G][SP_PPT];
#pragma unroll
    for (int q = 0; q < SP_PPT; ++q) {
      const int t = tid + q * SP_THREADS;
      sb[q] = 0;
      int yo = -1;
      if (t < tile_px) {
        const int img = t / (orows * OW), r = t - img * (orows * OW), orow = r / OW;
        const int ow = r - orow * OW;
        sb[q] = img * IR * WP + orow * st * WP + ow * st;
        yo = ((n0 + img) * OH + oh0 + orow) * OW + ow;
      }
#pragma unroll
      for (int g = 0; g < SPF_G; ++g)
        dyr[g][q] = (yo >= 0 && co0 + g < (int)s.cout) ? p.dy[(co0 + g) * P + yo] : 0.0f;
    }
    int cur[SPF_G];
#pragma unroll
    for (int g = 0; g < SPF_G; ++g) cur[g] = rb[g];
    for (;;) {
      const int ci = next_input_channel(cur, re, p.col_idx, kk);
      if (ci < 0) break;
      __syncthreads();  // the previous channel's window has been used
      stage_x_window(xs, p.x + ci * plane + n0 * H * W, nimg, IR, WP, ih0, pd, H, W);
      __syncthreads();
      const int cend = (ci + 1) * kk;
      int slots = 0;
#pragma unroll
      for (int g = 0; g < SPF_G; ++g) {
        for (; cur[g] < re[g]; ++cur[g]) {
          const int c = (int)p.col_idx[cur[g]];
          if (c >= cend) break;
          const int t = c - ci * kk, kh = t / k, off = kh * WP + (t - kh * k);
          float part = 0.0f;
#pragma unroll
          for (int q = 0; q < SP_PPT; ++q) part += dyr[g][q] * xs[sb[q] + off];
          part = warp_sum(part);
          if (lane == 0) red[warp][slots] = part;
          if (tid == 0) slot_e[slots] = cur[g];
          if (++slots == SWB_SLOTS) {  // uniform
            swb_flush(red, slot_e, slots, first, out);
            slots = 0;
          }
        }
      }
      if (slots > 0) swb_flush(red, slot_e, slots, first, out);
    }
  }
}

// db[co] = Σ_j dY[co, j]. Grid Cout, block 256.
KERNEL(conv_bwd_bias_f32, ConvBwdBiasParams) {
  __shared__ float scratch[32];
  const int co = (int)blockIdx.x, cols = (int)p.cols;
  const float* row = p.dy + (size_t)co * cols;
  float acc = 0.0f;
  for (int j = (int)threadIdx.x; j < cols; j += (int)blockDim.x) acc += row[j];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) p.db[co] = acc;
}
