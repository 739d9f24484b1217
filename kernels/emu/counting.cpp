// counting.cpp — measures the global-memory bytes the emulated kernels touch (README.md,
// "Counting global memory").
//
// build.rs compiles every kernel file twice: a plain copy and a counted copy (the generated
// emu_counted_*.cpp wrappers) with -fsanitize=thread but no ThreadSanitizer runtime, so that g++
// calls the __tsan_* hooks defined here before every load and store of kernel code and routes
// every atomic through a __tsan_atomic* hook. This file is compiled without the flag.
//
// - Counting is per OS thread and off by default. A kernel's plain host entry tests
//   cuda_emu::counting() once per launch and runs the counted copy only while the calling
//   thread has a window open; the hooks test the thread-local window pointer again.
// - Only addresses inside registered buffers count. Gpu::alloc registers every Gpu::Emu buffer
//   and its Drop unregisters it (a process-wide registry, sorted by address, under a mutex). A
//   window keeps its own copy of the registry with one bitmap per buffer and direction (read,
//   written), created on the buffer's first access; it copies the registry again when its
//   generation has changed (a buffer allocated or freed meanwhile, on any thread). A lookup tries
//   the buffer of the previous access, then the last few gaps between buffers that accesses
//   fell into (stacks, shared memory, the parameter struct), then a binary search.
// - read / written: bytes whose bit was not yet set (each byte of a buffer once);
//   read_requests / written_requests: every access's bytes. An atomic read-modify-write is a
//   read and a write of its bytes, an atomic load a read, an atomic store a write.
//
// Built without exceptions, RTTI or libstdc++ calls: the Rust binary links only libc for it.
#include "cuda_emu.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

[[noreturn]] void fatal(const char* what) {
  fprintf(stderr, "\ncuda_emu (byte counting): %s\n", what);
  fflush(stderr);
  abort();
}

void* alloc_zeroed(size_t count, size_t size) {
  void* p = calloc(count, size);
  if (!p) fatal("out of memory");
  return p;
}

// ---- process-wide registry of the emulator's device buffers -----------------------------------

struct Entry {
  uintptr_t base, end;  // [base, end)
  uint64_t id;          // unique per registration: a new buffer at a reused address differs
};

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
Entry* g_entries = nullptr;  // sorted by base, disjoint
size_t g_len = 0, g_cap = 0;
uint64_t g_next_id = 1;
uint64_t g_generation = 1;  // changes with every registration (atomic: read without the lock)

// First entry with end > a (entries are disjoint and sorted, so ends are sorted too).
template <class E>
size_t first_ending_after(const E* v, size_t n, uintptr_t a) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    if (v[mid].end <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// ---- a counting window (one per OS thread at most) --------------------------------------------

struct Region {
  uintptr_t base, end;
  uint64_t id;
  uint64_t* bits[2];  // bytes read [0] / written [1] so far, one bit each; null until touched
};

struct Totals {
  uint64_t read, written, read_requests, written_requests;
};

// An address range between registered buffers: fiber stacks, shared memory (thread_local) and the
// parameter struct each lie in one, and most accesses of a kernel go there.
struct Gap {
  uintptr_t lo, hi;  // [lo, hi)
};
constexpr unsigned kGaps = 4;

struct Window {
  Region* regions;  // the registry as of `generation`, sorted by base
  size_t n;
  size_t last;  // the region of the previous access: most accesses hit it again
  Gap gaps[kGaps];  // recent gaps (empty: lo = hi = 0), replaced round-robin
  unsigned next_gap;
  uint64_t generation;
  uint64_t unique[2], requests[2];
};

// The calling thread's window, null while it does not count (then a hook returns at once; only
// the counted copies call hooks, and only inside a window). initial-exec: one %fs-relative load.
__attribute__((tls_model("initial-exec"))) thread_local Window* t_window = nullptr;

void free_bits(Region& r) {
  free(r.bits[0]);
  free(r.bits[1]);
  r.bits[0] = r.bits[1] = nullptr;
}

// Copies the registry into `w`, keeping the bitmaps of buffers that are still registered.
void sync(Window* w) {
  pthread_mutex_lock(&g_lock);
  Region* next = static_cast<Region*>(alloc_zeroed(g_len ? g_len : 1, sizeof(Region)));
  size_t old = 0;
  for (size_t i = 0; i < g_len; i++) {
    const Entry& e = g_entries[i];
    Region& r = next[i];
    r.base = e.base;
    r.end = e.end;
    r.id = e.id;
    while (old < w->n && w->regions[old].base < e.base) free_bits(w->regions[old++]);
    if (old < w->n && w->regions[old].base == e.base) {
      Region& o = w->regions[old++];
      if (o.id == e.id) {
        r.bits[0] = o.bits[0];
        r.bits[1] = o.bits[1];
        o.bits[0] = o.bits[1] = nullptr;
      } else {
        free_bits(o);
      }
    }
  }
  while (old < w->n) free_bits(w->regions[old++]);
  free(w->regions);
  w->regions = next;
  w->n = g_len;
  w->last = 0;
  memset(w->gaps, 0, sizeof w->gaps);
  w->generation = __atomic_load_n(&g_generation, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&g_lock);
}

// Marks [a, a + n) (inside r) in direction d (0 read, 1 write).
void mark(Window* w, Region& r, uintptr_t a, size_t n, int d) {
  uint64_t*& bits = r.bits[d];
  if (!bits) bits = static_cast<uint64_t*>(alloc_zeroed((r.end - r.base + 63) / 64, 8));
  uint64_t fresh = 0;
  for (size_t i = a - r.base, end = i + n; i < end;) {
    const size_t bit = i & 63, take = end - i < 64 - bit ? end - i : 64 - bit;
    const uint64_t m = (take == 64 ? ~0ull : (1ull << take) - 1) << bit;
    uint64_t& word = bits[i >> 6];
    const uint64_t seen = word & m;  // usually none or all of them (popcount is a libgcc call)
    fresh += seen == 0 ? take : seen == m ? 0 : take - (uint64_t)__builtin_popcountll(seen);
    word |= m;
    i += take;
  }
  w->unique[d] += fresh;
  w->requests[d] += n;
}

// The counting path of every hook: the access [a, a + n) in direction d.
__attribute__((noinline)) void count(Window* w, uintptr_t a, size_t n, int d) {
  if (__atomic_load_n(&g_generation, __ATOMIC_ACQUIRE) != w->generation) sync(w);
  if (w->n == 0 || n == 0) return;
  Region& hot = w->regions[w->last];
  if (a >= hot.base && a - hot.base + n <= hot.end - hot.base) return mark(w, hot, a, n, d);
  for (const Gap& g : w->gaps)
    if (a >= g.lo && a - g.lo + n <= g.hi - g.lo) return;
  // The parts of [a, a + n) inside registered buffers (almost always one buffer or none).
  const uintptr_t end = a + n < a ? UINTPTR_MAX : a + n;
  const size_t first = first_ending_after(w->regions, w->n, a);
  bool hit = false;
  for (size_t i = first; i < w->n; i++) {
    Region& r = w->regions[i];
    if (r.base >= end) break;
    const uintptr_t lo = a > r.base ? a : r.base, hi = end < r.end ? end : r.end;
    mark(w, r, lo, hi - lo, d);
    w->last = i;
    hit = true;
  }
  if (!hit) {
    Gap& g = w->gaps[w->next_gap++ % kGaps];
    g.lo = first > 0 ? w->regions[first - 1].end : 0;
    g.hi = first < w->n ? w->regions[first].base : UINTPTR_MAX;
  }
}

inline void on_access(const volatile void* p, size_t n, int d) {
  Window* w = t_window;
  if (__builtin_expect(w != nullptr, 0)) count(w, reinterpret_cast<uintptr_t>(p), n, d);
}

}  // namespace

// The plain copy of a kernel hands its launch to the counted copy while this is true (cuda_emu.h).
bool cuda_emu::counting() { return t_window != nullptr; }

// ---- interface for the Rust side (src/device/gpu/emu.rs) ---------------------------------------

// Registers the buffer [addr, addr + bytes) (Gpu::alloc, Gpu::Emu arm). Empty buffers are not
// registered (nothing in them can be accessed).
extern "C" void rest_emu_buffer_register(uint64_t addr, uint64_t bytes) {
  if (bytes == 0) return;
  const uintptr_t base = (uintptr_t)addr, end = base + (uintptr_t)bytes;
  if (end < base) fatal("buffer registration wraps around the address space");
  pthread_mutex_lock(&g_lock);
  const size_t at = first_ending_after(g_entries, g_len, base);
  if (at < g_len && g_entries[at].base < end) {
    pthread_mutex_unlock(&g_lock);
    fatal("a buffer was registered over a live one (a buffer not unregistered on drop?)");
  }
  if (g_len == g_cap) {
    const size_t cap = g_cap ? 2 * g_cap : 256;
    Entry* grown = static_cast<Entry*>(realloc(g_entries, cap * sizeof(Entry)));
    if (!grown) fatal("out of memory");
    g_entries = grown;
    g_cap = cap;
  }
  memmove(g_entries + at + 1, g_entries + at, (g_len - at) * sizeof(Entry));
  g_entries[at] = Entry{base, end, g_next_id++};
  g_len++;
  __atomic_store_n(&g_generation, g_generation + 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&g_lock);
}

// Unregisters the buffer starting at `addr` (Drop of Buf); unknown addresses are ignored.
extern "C" void rest_emu_buffer_unregister(uint64_t addr) {
  const uintptr_t base = (uintptr_t)addr;
  pthread_mutex_lock(&g_lock);
  const size_t at = first_ending_after(g_entries, g_len, base);
  if (at < g_len && g_entries[at].base == base) {
    memmove(g_entries + at, g_entries + at + 1, (g_len - at - 1) * sizeof(Entry));
    g_len--;
    __atomic_store_n(&g_generation, g_generation + 1, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&g_lock);
}

// Opens a counting window on the calling thread: 0, or -1 if one is already open.
extern "C" int rest_emu_count_begin() {
  if (t_window) return -1;
  Window* w = static_cast<Window*>(alloc_zeroed(1, sizeof(Window)));
  sync(w);
  t_window = w;
  return 0;
}

// Closes the calling thread's window and stores its totals: 0, or -1 if none was open.
extern "C" int rest_emu_count_end(Totals* out) {
  Window* w = t_window;
  if (!w) return -1;
  t_window = nullptr;
  *out = Totals{w->unique[0], w->unique[1], w->requests[0], w->requests[1]};
  for (size_t i = 0; i < w->n; i++) free_bits(w->regions[i]);
  free(w->regions);
  free(w);
  return 0;
}

// ---- the ThreadSanitizer instrumentation hooks --------------------------------------------------
// Every hook g++ may emit for the kernel units (it references only those the code needs).

extern "C" {

void __tsan_init() {}
void __tsan_func_entry(void*) {}  // build.rs turns these two off (tsan-instrument-func-entry-exit)
void __tsan_func_exit() {}

#define REST_EMU_ACCESS(N)                                                           \
  void __tsan_read##N(void* p) { on_access(p, N, 0); }                               \
  void __tsan_write##N(void* p) { on_access(p, N, 1); }                              \
  void __tsan_unaligned_read##N(void* p) { on_access(p, N, 0); }                     \
  void __tsan_unaligned_write##N(void* p) { on_access(p, N, 1); }                    \
  void __tsan_volatile_read##N(void* p) { on_access(p, N, 0); }                      \
  void __tsan_volatile_write##N(void* p) { on_access(p, N, 1); }                     \
  void __tsan_unaligned_volatile_read##N(void* p) { on_access(p, N, 0); }            \
  void __tsan_unaligned_volatile_write##N(void* p) { on_access(p, N, 1); }
REST_EMU_ACCESS(1)
REST_EMU_ACCESS(2)
REST_EMU_ACCESS(4)
REST_EMU_ACCESS(8)
REST_EMU_ACCESS(16)
#undef REST_EMU_ACCESS

void __tsan_read_range(void* p, unsigned long n) { on_access(p, n, 0); }
void __tsan_write_range(void* p, unsigned long n) { on_access(p, n, 1); }
void __tsan_vptr_read(void** p) { on_access(p, sizeof(void*), 0); }
void __tsan_vptr_update(void** p, void*) { on_access(p, sizeof(void*), 1); }

// Atomics: performed for real (sequentially consistent, at least as strong as what was asked)
// and counted as a read and/or a write of their bytes. The memory-order arguments are ignored.
#define REST_EMU_ATOMIC(B, T)                                                                    \
  T __tsan_atomic##B##_load(const volatile T* a, int) {                                         \
    on_access(a, sizeof(T), 0);                                                                  \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                 \
  }                                                                                              \
  void __tsan_atomic##B##_store(volatile T* a, T v, int) {                                      \
    on_access(a, sizeof(T), 1);                                                                  \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                    \
  }                                                                                              \
  T __tsan_atomic##B##_exchange(volatile T* a, T v, int) {                                      \
    on_access(a, sizeof(T), 0);                                                                  \
    on_access(a, sizeof(T), 1);                                                                  \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                              \
  REST_EMU_RMW(B, T, fetch_add)                                                                  \
  REST_EMU_RMW(B, T, fetch_sub)                                                                  \
  REST_EMU_RMW(B, T, fetch_and)                                                                  \
  REST_EMU_RMW(B, T, fetch_or)                                                                   \
  REST_EMU_RMW(B, T, fetch_xor)                                                                  \
  REST_EMU_RMW(B, T, fetch_nand)                                                                 \
  int __tsan_atomic##B##_compare_exchange_strong(volatile T* a, T* expected, T desired, int,   \
                                                 int) {                                          \
    on_access(a, sizeof(T), 0);                                                                  \
    on_access(a, sizeof(T), 1);                                                                  \
    return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST,           \
                                       __ATOMIC_SEQ_CST);                                        \
  }                                                                                              \
  int __tsan_atomic##B##_compare_exchange_weak(volatile T* a, T* expected, T desired, int,     \
                                               int) {                                            \
    on_access(a, sizeof(T), 0);                                                                  \
    on_access(a, sizeof(T), 1);                                                                  \
    return __atomic_compare_exchange_n(a, expected, desired, true, __ATOMIC_SEQ_CST,            \
                                       __ATOMIC_SEQ_CST);                                        \
  }                                                                                              \
  T __tsan_atomic##B##_compare_exchange_val(volatile T* a, T expected, T desired, int, int) {  \
    on_access(a, sizeof(T), 0);                                                                  \
    on_access(a, sizeof(T), 1);                                                                  \
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST,                 \
                                __ATOMIC_SEQ_CST);                                               \
    return expected;                                                                             \
  }
#define REST_EMU_RMW(B, T, op)                                                                   \
  T __tsan_atomic##B##_##op(volatile T* a, T v, int) {                                          \
    on_access(a, sizeof(T), 0);                                                                  \
    on_access(a, sizeof(T), 1);                                                                  \
    return __atomic_##op(a, v, __ATOMIC_SEQ_CST);                                                \
  }
REST_EMU_ATOMIC(8, char)
REST_EMU_ATOMIC(16, short)
REST_EMU_ATOMIC(32, int)
REST_EMU_ATOMIC(64, long)
#undef REST_EMU_RMW
#undef REST_EMU_ATOMIC

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

}  // extern "C"
