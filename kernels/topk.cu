// topk.cu — one topology update of one sparse layer, entirely on the device: prune the k active
// weights of smallest |w|, regrow the k positions (inactive after pruning) of largest |score|
// (the dense gradient, or its momentum), and rebuild positions / values / momentum / CSR / CSC.
// Matches src/sparse/topology.rs::update_layer (PruneRule::Magnitude, GrowRule::Gradient or
// Momentum) exactly, bit for bit.
//
// Layer on the device (src/device/gpu/kernels/topk.rs, `SparseLayerBufs`), W[rows, cols],
// size = rows·cols, nnz fixed:
//   positions u32[nnz]  flat r·cols + c, strictly ascending (= CSR order)
//   values    f32[nnz]  momentum f32[nnz]  (optimiser state, one per active weight)
//   row_ptr   u32[rows+1], col_idx u32[nnz]
//   col_ptr   u32[cols+1], csc_row u32[nnz], csc_pos u32[nnz] (entries of a column, rows ascending)
//   score     f32[size] (read only)
// Workspace (`TopkWorkspace`):
//   mark      u32[size]  0 = inactive; after prune: old entry index + 1 of a kept weight;
//                        after grow: TOPK_GROWN for a regrown one; after compact: new index + 1
//   old_values, old_momentum f32[nnz]  copies taken by the prune kernel (compact reads them)
//   state     u32[2·TOPK_SLOT]  two radix-select slots (0 prune, 1 grow), layout below
//   tile_cnt  u32[ntiles+1]     actives per tile of TOPK_TILE positions, then scanned
//   csc_cnt   u32[nchunks·cols] actives per (chunk of rows_per_chunk rows, column), then scanned
//                               within each column
//
// Selection. Each candidate has a 64-bit composite key (hi, lo): prune hi = bits(|w|), lo = entry
// index e; grow hi = ~bits(|score|) (largest magnitude first), lo = position p. The keys are
// unique, so "the k smallest keys" is exactly the CPU's rule (`f32::total_cmp` on |x| — NaN above
// ∞ — then lower index first). A radix select finds the k-th smallest key up to 11 bits at a
// time: 3 passes over hi (bits 31..21, 20..10, 9..0), then as many as the index needs over lo.
// Each pass (`topk_hist_f32`) builds a histogram (≤ 2048 bins) of the candidates still matching
// the prefix (shared-memory atomics per block, then global atomics); the last block to finish
// picks the digit and updates the slot's prefix, mask and remaining rank, all on the device. When the chosen bin holds exactly the remaining
// rank, the slot is marked done and later passes return at once. A candidate is selected iff its
// masked key ≤ the prefix (lexicographically on (hi, lo)).
//
// Slot layout (u32): [0] prefix hi [1] prefix lo [2] mask hi [3] mask lo [4] remaining rank
// [5] done [6] blocks arrived in this pass [7] unused [8..2056] histogram.
//
// Launch sequence (host wrapper `update_layer`, k ≥ 1; nothing is read back):
//   topk_clear_u32        linear over max(size, nchunks·cols, 2·TOPK_SLOT), 256 threads
//   topk_hist_f32 ×(3+⌈bits(nnz-1)/11⌉)  slot 0, ≤ 264 blocks of 256 (grid-stride)
//   topk_prune_f32        linear over nnz, 256
//   topk_hist_f32 ×(3+⌈bits(size-1)/11⌉) slot 1
//   topk_grow_f32         ntiles blocks of 256 (tile = 2048 positions)
//   topk_colscan_u32      linear over cols, 256
//   topk_scan_u32         1 block of 1024
//   topk_compact_f32      ntiles blocks of 256
//   topk_csc_scatter_u32  grid (⌈cols/256⌉, nchunks), 256
//
// CPU twins: src/device/cpu/twin/topk.rs, same names. Numeric differences: none (the kernels only
// compare bit patterns and copy values; regrown weights and their momentum are exactly 0).
#include "common.cuh"

#define TOPK_THREADS 256
#define TOPK_SCAN_THREADS 1024
#define TOPK_ITEMS 8
#define TOPK_TILE (TOPK_THREADS * TOPK_ITEMS)
#define TOPK_BINS 2048
#define TOPK_HIST 8
#define TOPK_SLOT (TOPK_HIST + TOPK_BINS)
#define TOPK_GROWN 0xffffffffu

// One parameter struct shared by every kernel of the family (mirrors `TopkParams` in
// src/device/gpu/kernels/topk.rs, field for field).
struct TopkParams {
  // The layer.
  unsigned* positions;
  float* values;
  float* momentum;
  unsigned* row_ptr;
  unsigned* col_idx;
  unsigned* col_ptr;
  unsigned* csc_row;
  unsigned* csc_pos;
  const float* score;
  // The workspace.
  unsigned* mark;
  float* old_values;
  float* old_momentum;
  unsigned* state;
  unsigned* tile_cnt;
  unsigned* csc_cnt;
  // Shapes and pass.
  unsigned rows, cols, nnz, size;
  unsigned k;               // number pruned (= number regrown), 1 ≤ k ≤ nnz
  unsigned slot;            // topk_hist_f32: 0 prune, 1 grow
  unsigned word;            // topk_hist_f32: 0 digit of hi, 1 digit of lo
  unsigned shift;           // topk_hist_f32: bit offset of the digit
  unsigned digit_bits;      // topk_hist_f32: width of the digit, 1..11
  unsigned ntiles;          // ⌈size / TOPK_TILE⌉
  unsigned rows_per_chunk;  // rows of one CSC counting cell
  unsigned nchunks;         // ⌈rows / rows_per_chunk⌉
};

// Size of the Rust mirror (src/device/gpu/kernels/topk.rs): 15 addresses, 12 u32.
static_assert(sizeof(TopkParams) == 168, "TopkParams");

__device__ __forceinline__ unsigned topk_abs_bits(float x) { return __float_as_uint(x) & 0x7fffffffu; }

// (hi, lo) masked ≤ (prefix hi, prefix lo), lexicographically.
__device__ __forceinline__ bool topk_selected(const unsigned* s, unsigned hi, unsigned lo) {
  const unsigned h = hi & s[2], l = lo & s[3];
  return h < s[0] || (h == s[0] && l <= s[1]);
}

// Exclusive scan of v over the block (blockDim.x a multiple of 32, ≤ 1024); *total gets the sum.
// scratch: 32 unsigned of shared memory. Every thread of the block must call it.
__device__ __forceinline__ unsigned topk_block_scan(unsigned v, unsigned* scratch, unsigned* total) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  unsigned x = v;
  for (unsigned o = 1; o < 32; o <<= 1) {
    const unsigned y = __shfl_up_sync(REST_FULL_MASK, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    unsigned s = lane < nw ? scratch[lane] : 0u;
    for (unsigned o = 1; o < 32; o <<= 1) {
      const unsigned y = __shfl_up_sync(REST_FULL_MASK, s, o);
      if (lane >= o) s += y;
    }
    scratch[lane] = s;
  }
  __syncthreads();
  *total = scratch[nw - 1];
  return (warp ? scratch[warp - 1] : 0u) + x - v;
}

// Zeroes mark and csc_cnt, initialises both select slots (remaining rank k). Block bx of gx.
__device__ __forceinline__ void topk_clear_body(const TopkParams& p, unsigned bx, unsigned gx) {
  const unsigned ncells = p.nchunks * p.cols;
  const unsigned stride = gx * blockDim.x;
  for (unsigned i = bx * blockDim.x + threadIdx.x; i < p.size || i < ncells || i < 2u * TOPK_SLOT;
       i += stride) {
    if (i < p.size) p.mark[i] = 0u;
    if (i < ncells) p.csc_cnt[i] = 0u;
    if (i < 2u * TOPK_SLOT) p.state[i] = (i % TOPK_SLOT) == 4u ? p.k : 0u;
  }
}

KERNEL(topk_clear_u32, TopkParams) { topk_clear_body(p, blockIdx.x, gridDim.x); }

// One radix-select pass of slot p.slot over the digit (p.word, p.shift, p.digit_bits).
// blockDim.x = 256; block bx of the gx the pass runs on. sh, scratch, last: shared memory.
__device__ __forceinline__ void topk_hist_body(const TopkParams& p, unsigned bx, unsigned gx, unsigned* sh,
                                               unsigned* scratch, unsigned* last_flag) {
  unsigned* s = p.state + p.slot * TOPK_SLOT;
  unsigned* hist = s + TOPK_HIST;
  if (s[5]) return;  // done: the selection is already exact
  unsigned& last = *last_flag;
  const unsigned ph = s[0], pl = s[1], mh = s[2], ml = s[3];
  const unsigned dmask = (1u << p.digit_bits) - 1u;
  for (unsigned b = threadIdx.x; b < TOPK_BINS; b += TOPK_THREADS) sh[b] = 0u;
  __syncthreads();
  const unsigned n = p.slot == 0 ? p.nnz : p.size;
  for (unsigned i = bx * blockDim.x + threadIdx.x; i < n; i += gx * blockDim.x) {
    unsigned hi;
    if (p.slot == 0) {
      hi = topk_abs_bits(p.values[i]);
    } else {
      if (p.mark[i] != 0u) continue;  // active after pruning: not a candidate
      hi = ~topk_abs_bits(p.score[i]);
    }
    if ((hi & mh) == ph && (i & ml) == pl) atomicAdd(&sh[((p.word ? i : hi) >> p.shift) & dmask], 1u);
  }
  __syncthreads();
  for (unsigned b = threadIdx.x; b <= dmask; b += TOPK_THREADS)
    if (sh[b]) atomicAdd(&hist[b], sh[b]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&s[6], 1u) == gx - 1;
  __syncthreads();
  if (!last) return;
  // The last block: every other block's histogram is in. Thread t owns bins 8t..8t+7; pick the
  // digit holding rank s[4].
  __threadfence();
  const unsigned per = TOPK_BINS / TOPK_THREADS;
  unsigned h[TOPK_BINS / TOPK_THREADS];
  unsigned mine = 0u;
  for (unsigned j = 0; j < per; ++j) {
    const unsigned b = threadIdx.x * per + j;
    h[j] = atomicAdd(&hist[b], 0u);  // an L2 read
    hist[b] = 0u;                    // ready for the next pass
    mine += h[j];
  }
  const unsigned rank = s[4];
  unsigned total;
  unsigned before = topk_block_scan(mine, scratch, &total);
  for (unsigned j = 0; j < per; ++j) {
    if (before < rank && rank <= before + h[j]) {
      const unsigned rem = rank - before;
      s[p.word] |= (threadIdx.x * per + j) << p.shift;
      s[2 + p.word] |= dmask << p.shift;
      s[4] = rem;
      if (h[j] == rem) s[5] = 1u;
    }
    before += h[j];
  }
  if (threadIdx.x == 0) s[6] = 0u;
}

KERNEL(topk_hist_f32, TopkParams) {
  __shared__ unsigned sh[TOPK_BINS];
  __shared__ unsigned scratch[32];
  __shared__ unsigned last;
  topk_hist_body(p, blockIdx.x, gridDim.x, sh, scratch, &last);
}

// Copies values and momentum aside and marks every kept weight: mark[pos] = e + 1.
__device__ __forceinline__ void topk_prune_body(const TopkParams& p, unsigned bx) {
  const unsigned e = bx * blockDim.x + threadIdx.x;
  if (e >= p.nnz) return;
  const float v = p.values[e];
  p.old_values[e] = v;
  p.old_momentum[e] = p.momentum[e];
  if (!topk_selected(p.state, topk_abs_bits(v), e)) p.mark[p.positions[e]] = e + 1u;
}

KERNEL(topk_prune_f32, TopkParams) { topk_prune_body(p, blockIdx.x); }

// Marks the regrown positions (TOPK_GROWN), counts the actives of each tile (tile_cnt) and of
// each CSC cell (csc_cnt, global atomics). One block per tile of TOPK_TILE positions.
__device__ __forceinline__ void topk_grow_body(const TopkParams& p, unsigned bx, unsigned* scratch) {
  const unsigned* s = p.state + TOPK_SLOT;
  const unsigned base = bx * TOPK_TILE;
  unsigned count = 0u;
  for (unsigned it = 0; it < TOPK_ITEMS; ++it) {
    const unsigned q = base + it * TOPK_THREADS + threadIdx.x;
    unsigned active = 0u;
    if (q < p.size) {
      unsigned m = p.mark[q];
      if (m == 0u && topk_selected(s, ~topk_abs_bits(p.score[q]), q)) {
        m = TOPK_GROWN;
        p.mark[q] = m;
      }
      if (m != 0u) {
        active = 1u;
        const unsigned r = q / p.cols, c = q - r * p.cols;
        atomicAdd(&p.csc_cnt[(r / p.rows_per_chunk) * p.cols + c], 1u);
      }
    }
    unsigned t;
    topk_block_scan(active, scratch, &t);
    count += t;
  }
  if (threadIdx.x == 0) p.tile_cnt[bx] = count;
}

KERNEL(topk_grow_f32, TopkParams) {
  __shared__ unsigned scratch[32];
  topk_grow_body(p, blockIdx.x, scratch);
}

// Per column: exclusive scan of its cells' counts over the chunks (in place); col_ptr[c] = the
// column's total (scanned over columns by topk_scan_u32).
__device__ __forceinline__ void topk_colscan_body(const TopkParams& p, unsigned bx) {
  const unsigned c = bx * blockDim.x + threadIdx.x;
  if (c >= p.cols) return;
  unsigned run = 0u;
  for (unsigned ch = 0; ch < p.nchunks; ++ch) {
    const unsigned v = p.csc_cnt[ch * p.cols + c];
    p.csc_cnt[ch * p.cols + c] = run;
    run += v;
  }
  p.col_ptr[c] = run;
}

KERNEL(topk_colscan_u32, TopkParams) { topk_colscan_body(p, blockIdx.x); }

// In-place exclusive scan of a[0..m] by one block; a[m] = the total.
__device__ __forceinline__ void topk_scan_array(unsigned* a, unsigned m, unsigned* scratch) {
  unsigned carry = 0u;
  for (unsigned b = 0; b < m; b += blockDim.x) {
    const unsigned i = b + threadIdx.x;
    const unsigned v = i < m ? a[i] : 0u;
    unsigned t;
    const unsigned x = topk_block_scan(v, scratch, &t);
    if (i < m) a[i] = carry + x;
    carry += t;
  }
  if (threadIdx.x == 0) a[m] = carry;
}

// One block of TOPK_SCAN_THREADS: scans tile_cnt (ntiles) and col_ptr (cols), each in place.
__device__ __forceinline__ void topk_scan_body(const TopkParams& p, unsigned* scratch) {
  topk_scan_array(p.tile_cnt, p.ntiles, scratch);
  topk_scan_array(p.col_ptr, p.cols, scratch);
}

KERNEL(topk_scan_u32, TopkParams) {
  __shared__ unsigned scratch[32];
  topk_scan_body(p, scratch);
}

// Stable compaction of the active positions: new positions, values (kept: copied; regrown: 0),
// momentum (likewise), col_idx, row_ptr; mark[q] becomes the new entry index + 1.
__device__ __forceinline__ void topk_compact_body(const TopkParams& p, unsigned bx, unsigned* scratch) {
  const unsigned base = bx * TOPK_TILE;
  unsigned carry = p.tile_cnt[bx];
  for (unsigned it = 0; it < TOPK_ITEMS; ++it) {
    const unsigned q = base + it * TOPK_THREADS + threadIdx.x;
    const unsigned m = q < p.size ? p.mark[q] : 0u;
    unsigned t;
    const unsigned j = carry + topk_block_scan(m != 0u ? 1u : 0u, scratch, &t);
    carry += t;
    if (q >= p.size) continue;
    const unsigned r = q / p.cols, c = q - r * p.cols;
    if (c == 0u) p.row_ptr[r] = j;
    if (m != 0u && j < p.nnz) {  // j < nnz always holds; the guard keeps a bug in bounds
      p.positions[j] = q;
      p.col_idx[j] = c;
      p.values[j] = m == TOPK_GROWN ? 0.0f : p.old_values[m - 1u];
      p.momentum[j] = m == TOPK_GROWN ? 0.0f : p.old_momentum[m - 1u];
      p.mark[q] = j + 1u;
    }
  }
  if (bx == 0 && threadIdx.x == 0) p.row_ptr[p.rows] = p.tile_cnt[p.ntiles];
}

KERNEL(topk_compact_f32, TopkParams) {
  __shared__ unsigned scratch[32];
  topk_compact_body(p, blockIdx.x, scratch);
}

// CSC: one thread per (column, chunk of rows) walks its rows in order and writes csc_row /
// csc_pos from col_ptr[c] + the cell's offset within the column.
__device__ __forceinline__ void topk_csc_scatter_body(const TopkParams& p, unsigned bx, unsigned by) {
  const unsigned c = bx * blockDim.x + threadIdx.x;
  if (c >= p.cols) return;
  const unsigned ch = by;
  unsigned k = p.col_ptr[c] + p.csc_cnt[ch * p.cols + c];
  const unsigned r0 = ch * p.rows_per_chunk;
  const unsigned r1 = min(p.rows, r0 + p.rows_per_chunk);
  for (unsigned r = r0; r < r1; ++r) {
    const unsigned m = p.mark[r * p.cols + c];
    if (m != 0u && k < p.nnz) {  // always true; keeps a bug in bounds
      p.csc_row[k] = r;
      p.csc_pos[k] = m - 1u;
      ++k;
    }
  }
}

KERNEL(topk_csc_scatter_u32, TopkParams) {
  topk_csc_scatter_body(p, blockIdx.x, blockIdx.y);
}

// ---------------------------------------------------------------------------------------------
// Batched update: many layers per launch. The same bodies as above, each block first finding
// its layer and its block index within that layer. Every layer has a full TopkParams record in
// a device table (addresses of its buffers and of its own slices of one shared workspace);
// the pass fields of the records are unused (the hist pass derives them per layer).
//
// Flattened launches (clear, prune, colscan, grow/compact, csc_scatter): grid.x = the sum over
// layers of the layer's block count of the per-layer launch; starts[kind·(nlayers+1) + l] = the
// first block of layer l (prefix sums, starts[...+ nlayers] = the total), kinds below. A block
// finds its layer by a binary search over the prefix sums.
// Histogram passes: grid (TOPK_MAX_HIST_BLOCKS or fewer, nlayers); layer = blockIdx.y; a layer
// uses the blocks its per-layer pass would (the others return at once). Pass j < 3 is the
// magnitude digit j of every layer; pass 3 + i is index digit i of each layer's own index width,
// and a layer whose index has fewer digits returns (it is done by then: the keys are unique).
// The scan runs one block per layer (grid.x = nlayers).
//
// Launch sequence (host wrapper `update_layers`; layers with k = 0 are left out of the table):
//   topk_clear_batched_u32, topk_hist_batched_f32 ×(3 + most index digits of nnz),
//   topk_prune_batched_f32, topk_hist_batched_f32 ×(3 + most index digits of size),
//   topk_grow_batched_f32, topk_colscan_batched_u32, topk_scan_batched_u32,
//   topk_compact_batched_f32, topk_csc_scatter_batched_u32.
// CPU twins: the same names in src/device/cpu/twin/topk.rs (each runs the per-layer twin on
// every layer of the table).

#define TOPK_KIND_CLEAR 0u
#define TOPK_KIND_PRUNE 1u
#define TOPK_KIND_TILES 2u
#define TOPK_KIND_COLS 3u
#define TOPK_KIND_SCATTER 4u
#define TOPK_HIST_ITEMS 16u
#define TOPK_MAX_HIST_BLOCKS 264u

// Mirrors `TopkBatchParams` in src/device/gpu/kernels/topk.rs.
struct TopkBatchParams {
  const TopkParams* table;  // TopkParams[nlayers]
  const unsigned* starts;   // u32[5·(nlayers+1)]: block prefix sums per kind
  unsigned nlayers;
  unsigned slot;  // topk_hist_batched_f32: 0 prune, 1 grow
  unsigned pass;  // topk_hist_batched_f32: digit pass (0..2 magnitude, 3.. index)
  unsigned pad;
};

static_assert(sizeof(TopkBatchParams) == 32, "TopkBatchParams");

// The layer of flattened block b of `kind`, and b's index within the layer (*local).
__device__ __forceinline__ unsigned topk_find_layer(const TopkBatchParams& p, unsigned kind, unsigned b,
                                                    unsigned* local) {
  const unsigned* st = p.starts + kind * (p.nlayers + 1u);
  unsigned lo = 0u, hi = p.nlayers - 1u;
  while (lo < hi) {
    const unsigned mid = (lo + hi + 1u) >> 1;
    if (st[mid] <= b)
      lo = mid;
    else
      hi = mid - 1u;
  }
  *local = b - st[lo];
  return lo;
}

// Blocks of layer l's kind (the per-layer launch's grid.x, or grid.x·grid.y for the scatter).
__device__ __forceinline__ unsigned topk_layer_blocks(const TopkBatchParams& p, unsigned kind, unsigned l) {
  const unsigned* st = p.starts + kind * (p.nlayers + 1u);
  return st[l + 1u] - st[l];
}

KERNEL(topk_clear_batched_u32, TopkBatchParams) {
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_CLEAR, blockIdx.x, &b);
  topk_clear_body(p.table[l], b, topk_layer_blocks(p, TOPK_KIND_CLEAR, l));
}

KERNEL(topk_hist_batched_f32, TopkBatchParams) {
  __shared__ unsigned sh[TOPK_BINS];
  __shared__ unsigned scratch[32];
  __shared__ unsigned last;
  TopkParams q = p.table[blockIdx.y];
  const unsigned n = p.slot == 0u ? q.nnz : q.size;
  const unsigned need = n / (TOPK_HIST_ITEMS * TOPK_THREADS) + (n % (TOPK_HIST_ITEMS * TOPK_THREADS) != 0u);
  const unsigned blocks = min(max(need, 1u), TOPK_MAX_HIST_BLOCKS);
  if (blockIdx.x >= blocks) return;
  // This layer's digit of pass p.pass: digit i (most significant first, ≤ 11 bits) of a key of
  // `bits` significant bits.
  unsigned bits = 32u, i = p.pass, word = 0u;
  if (p.pass >= 3u) {
    word = 1u;
    i = p.pass - 3u;
    bits = 0u;
    while (bits < 32u && ((n - 1u) >> bits) != 0u && n > 1u) ++bits;
  }
  if (11u * i >= bits) return;  // no such digit: the layer's selection is already done
  const unsigned width = min(11u, bits - 11u * i);
  q.slot = p.slot;
  q.word = word;
  q.digit_bits = width;
  q.shift = bits - 11u * i - width;
  topk_hist_body(q, blockIdx.x, blocks, sh, scratch, &last);
}

KERNEL(topk_prune_batched_f32, TopkBatchParams) {
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_PRUNE, blockIdx.x, &b);
  topk_prune_body(p.table[l], b);
}

KERNEL(topk_grow_batched_f32, TopkBatchParams) {
  __shared__ unsigned scratch[32];
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_TILES, blockIdx.x, &b);
  topk_grow_body(p.table[l], b, scratch);
}

KERNEL(topk_colscan_batched_u32, TopkBatchParams) {
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_COLS, blockIdx.x, &b);
  topk_colscan_body(p.table[l], b);
}

// One block of TOPK_SCAN_THREADS per layer.
KERNEL(topk_scan_batched_u32, TopkBatchParams) {
  __shared__ unsigned scratch[32];
  topk_scan_body(p.table[blockIdx.x], scratch);
}

KERNEL(topk_compact_batched_f32, TopkBatchParams) {
  __shared__ unsigned scratch[32];
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_TILES, blockIdx.x, &b);
  topk_compact_body(p.table[l], b, scratch);
}

// A layer's blocks are its per-layer grid (⌈cols/256⌉, nchunks) flattened x-fastest.
KERNEL(topk_csc_scatter_batched_u32, TopkBatchParams) {
  unsigned b;
  const unsigned l = topk_find_layer(p, TOPK_KIND_SCATTER, blockIdx.x, &b);
  const TopkParams& q = p.table[l];
  const unsigned cb = (q.cols + TOPK_THREADS - 1u) / TOPK_THREADS;
  topk_csc_scatter_body(q, b % cb, b / cb);
}
