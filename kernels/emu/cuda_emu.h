// cuda_emu.h — runs CUDA kernel sources (kernels/*.cu) on the CPU.
//
// Included by kernels/common.cuh when the file is compiled as plain C++ (build.rs, g++), never
// under NVRTC/nvcc. It supplies what the kernels use: dim3 and the built-in index variables,
// the CUDA qualifiers, __shared__ memory, barriers, warp collectives, atomics and intrinsics.
// The scheduler lives in runtime.cpp: one launch runs the grid's blocks one after another on the
// calling OS thread, each CUDA thread of a block as a cooperative fiber. See README.md.
//
// All emulator state is per OS thread (thread_local), so tests may launch concurrently.
//
// build.rs compiles every kernel file twice: a plain copy, whose host entries the Rust side
// calls, and a counted copy (CUDA_EMU_COUNTED defined, -fsanitize=thread) with entries
// rest_emu_counted_<name>, to which a plain entry hands the launch while the calling thread
// counts global-memory bytes (counting.cpp).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cuda_emu.h is the CPU emulator; CUDA compilers use common.cuh's own definitions"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// The header's inline functions live in an inline namespace named after the copy, so that the
// linker (which keeps one definition of an inline function) never mixes the plain and the
// counted (instrumented) copies. Types and the runtime interface are common to both.
#if defined(CUDA_EMU_COUNTED)
#define CUDA_EMU_COPY counted
#else
#define CUDA_EMU_COPY plain
#endif

// ---- built-in types and variables ------------------------------------------------------------

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

// Set by the scheduler before it resumes each fiber (constant-initialised: no TLS wrapper).
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---- qualifiers -------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __constant__
#define __launch_bounds__(...)
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
// g++ knows __restrict__ natively (same meaning as in CUDA), so it is left alone.
// Static shared memory: one copy per OS thread, shared by all fibers of the running block.
// `static` so file-scope __shared__ arrays of two kernel files never collide; thread_local (not
// plain static) because cargo runs tests on parallel threads.
#define __shared__ static thread_local

// ---- runtime interface (runtime.cpp) ----------------------------------------------------------

namespace cuda_emu {

using Body = void (*)(const void* params);

// Runs the whole grid of `body` on the calling thread; returns when every block has finished.
void launch(const char* kernel, dim3 grid, dim3 block, unsigned smem, const void* params,
            Body body);

enum WarpOp : int {
  kSyncwarp,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
};

enum BarrierMode : int { kCount, kAnd, kOr };
// __syncthreads and its _count/_and/_or forms: the count of threads with pred != 0, or whether
// all / any of the participating threads had it.
int barrier(int pred, int mode, int line, const char* file);
// One lane's part of a warp collective; returns its result when the group has completed.
unsigned warp_op(int op, unsigned mask, unsigned value, int arg, int width, int line,
                 const char* file);
// Lanes of the caller's warp that have not exited.
unsigned active_mask();

// Dynamic shared memory of the running block (see DYN_SHARED), 128-byte aligned.
inline thread_local unsigned char* dyn_smem = nullptr;

// Whether the calling thread counts global-memory bytes (counting.cpp).
bool counting();

inline namespace CUDA_EMU_COPY {
template <class To, class From>
__forceinline__ To bits(From f) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To t;
  memcpy(&t, &f, sizeof t);
  return t;
}
}  // namespace CUDA_EMU_COPY

}  // namespace cuda_emu

// KERNEL(name, P) { body } — the body becomes a static function of the parameter struct `p`;
// `name` is the host entry the Rust side calls (same symbol as the CUDA kernel). It runs the
// counted copy's entry instead while the calling thread counts bytes.
#if defined(CUDA_EMU_COUNTED)
#define KERNEL(name, P)                                                                  \
  static void rest_emu_body_##name(const P p);                                           \
  extern "C" void rest_emu_counted_##name(dim3 grid, dim3 block, unsigned smem,          \
                                          const void* params) {                          \
    ::cuda_emu::launch(#name, grid, block, smem, params, [](const void* q) {             \
      rest_emu_body_##name(*static_cast<const P*>(q));                                   \
    });                                                                                  \
  }                                                                                      \
  static void rest_emu_body_##name(const P p)
#else
#define KERNEL(name, P)                                                                  \
  static void rest_emu_body_##name(const P p);                                           \
  extern "C" void rest_emu_counted_##name(dim3, dim3, unsigned, const void*);            \
  extern "C" void name(dim3 grid, dim3 block, unsigned smem, const void* params) {       \
    if (__builtin_expect(::cuda_emu::counting(), 0))                                     \
      return rest_emu_counted_##name(grid, block, smem, params);                         \
    ::cuda_emu::launch(#name, grid, block, smem, params, [](const void* q) {             \
      rest_emu_body_##name(*static_cast<const P*>(q));                                   \
    });                                                                                  \
  }                                                                                      \
  static void rest_emu_body_##name(const P p)
#endif

// Dynamic shared memory: the launch's `smem` bytes, poisoned with 0xFF before every block and
// ending right at a PROT_NONE page (reading past the launch's size faults).
#define DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::cuda_emu::dyn_smem)

// Call-site capture for the deadlock report.
#define CUDA_EMU_SITE int line_ = __builtin_LINE(), const char* file_ = __builtin_FILE()

inline namespace CUDA_EMU_COPY {  // up to the cas_loop helpers

// ---- barriers ---------------------------------------------------------------------------------

inline void __syncthreads(CUDA_EMU_SITE) { cuda_emu::barrier(0, cuda_emu::kCount, line_, file_); }
inline int __syncthreads_count(int pred, CUDA_EMU_SITE) {
  return cuda_emu::barrier(pred, cuda_emu::kCount, line_, file_);
}
inline int __syncthreads_and(int pred, CUDA_EMU_SITE) {
  return cuda_emu::barrier(pred, cuda_emu::kAnd, line_, file_);
}
inline int __syncthreads_or(int pred, CUDA_EMU_SITE) {
  return cuda_emu::barrier(pred, cuda_emu::kOr, line_, file_);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDA_EMU_SITE) {
  cuda_emu::warp_op(cuda_emu::kSyncwarp, mask, 0, 0, 32, line_, file_);
}

// ---- warp collectives -------------------------------------------------------------------------

#define CUDA_EMU_SHFL(fn, op, A)                                                            \
  inline unsigned fn(unsigned mask, unsigned v, A a, int width = 32, CUDA_EMU_SITE) {       \
    return cuda_emu::warp_op(op, mask, v, (int)a, width, line_, file_);                    \
  }                                                                                         \
  inline int fn(unsigned mask, int v, A a, int width = 32, CUDA_EMU_SITE) {                 \
    return (int)cuda_emu::warp_op(op, mask, (unsigned)v, (int)a, width, line_, file_);     \
  }                                                                                         \
  inline float fn(unsigned mask, float v, A a, int width = 32, CUDA_EMU_SITE) {             \
    return cuda_emu::bits<float>(                                                           \
        cuda_emu::warp_op(op, mask, cuda_emu::bits<unsigned>(v), (int)a, width, line_, file_)); \
  }                                                                                         \
  inline unsigned long long fn(unsigned mask, unsigned long long v, A a, int width = 32,    \
                               CUDA_EMU_SITE) {                                             \
    unsigned lo = cuda_emu::warp_op(op, mask, (unsigned)v, (int)a, width, line_, file_);   \
    unsigned hi = cuda_emu::warp_op(op, mask, (unsigned)(v >> 32), (int)a, width, line_, file_); \
    return (unsigned long long)hi << 32 | lo;                                               \
  }                                                                                         \
  inline long long fn(unsigned mask, long long v, A a, int width = 32, CUDA_EMU_SITE) {     \
    return (long long)fn(mask, (unsigned long long)v, a, width, line_, file_);              \
  }                                                                                         \
  inline long fn(unsigned mask, long v, A a, int width = 32, CUDA_EMU_SITE) {               \
    return (long)fn(mask, (unsigned long long)v, a, width, line_, file_);                   \
  }                                                                                         \
  inline unsigned long fn(unsigned mask, unsigned long v, A a, int width = 32,              \
                          CUDA_EMU_SITE) {                                                  \
    return (unsigned long)fn(mask, (unsigned long long)v, a, width, line_, file_);          \
  }                                                                                         \
  inline double fn(unsigned mask, double v, A a, int width = 32, CUDA_EMU_SITE) {           \
    return cuda_emu::bits<double>(                                                          \
        fn(mask, cuda_emu::bits<unsigned long long>(v), a, width, line_, file_));           \
  }

CUDA_EMU_SHFL(__shfl_sync, cuda_emu::kShflIdx, int)
CUDA_EMU_SHFL(__shfl_up_sync, cuda_emu::kShflUp, unsigned)
CUDA_EMU_SHFL(__shfl_down_sync, cuda_emu::kShflDown, unsigned)
CUDA_EMU_SHFL(__shfl_xor_sync, cuda_emu::kShflXor, int)
#undef CUDA_EMU_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  return cuda_emu::warp_op(cuda_emu::kBallot, mask, pred != 0, 0, 32, line_, file_);
}
inline int __any_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  return (int)cuda_emu::warp_op(cuda_emu::kAny, mask, pred != 0, 0, 32, line_, file_);
}
inline int __all_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  return (int)cuda_emu::warp_op(cuda_emu::kAll, mask, pred != 0, 0, 32, line_, file_);
}
// Lanes of the warp that have not exited (the emulator cannot see divergence).
inline unsigned __activemask() { return cuda_emu::active_mask(); }

// ---- atomics (relaxed, like CUDA's; __atomic builtins so blocks could run on several threads)

#define CUDA_EMU_RMW(fn, builtin, T) \
  inline T fn(T* a, T v) { return builtin(a, v, __ATOMIC_RELAXED); }
CUDA_EMU_RMW(atomicAdd, __atomic_fetch_add, int)
CUDA_EMU_RMW(atomicAdd, __atomic_fetch_add, unsigned)
CUDA_EMU_RMW(atomicAdd, __atomic_fetch_add, unsigned long long)
CUDA_EMU_RMW(atomicSub, __atomic_fetch_sub, int)
CUDA_EMU_RMW(atomicSub, __atomic_fetch_sub, unsigned)
CUDA_EMU_RMW(atomicExch, __atomic_exchange_n, int)
CUDA_EMU_RMW(atomicExch, __atomic_exchange_n, unsigned)
CUDA_EMU_RMW(atomicExch, __atomic_exchange_n, unsigned long long)
CUDA_EMU_RMW(atomicOr, __atomic_fetch_or, int)
CUDA_EMU_RMW(atomicOr, __atomic_fetch_or, unsigned)
CUDA_EMU_RMW(atomicOr, __atomic_fetch_or, unsigned long long)
CUDA_EMU_RMW(atomicAnd, __atomic_fetch_and, int)
CUDA_EMU_RMW(atomicAnd, __atomic_fetch_and, unsigned)
CUDA_EMU_RMW(atomicAnd, __atomic_fetch_and, unsigned long long)
CUDA_EMU_RMW(atomicXor, __atomic_fetch_xor, int)
CUDA_EMU_RMW(atomicXor, __atomic_fetch_xor, unsigned)
CUDA_EMU_RMW(atomicXor, __atomic_fetch_xor, unsigned long long)
#undef CUDA_EMU_RMW

#define CUDA_EMU_CAS(T)                                                                      \
  inline T atomicCAS(T* a, T expected, T desired) {                                          \
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED,              \
                                __ATOMIC_RELAXED);                                           \
    return expected;                                                                         \
  }
CUDA_EMU_CAS(int)
CUDA_EMU_CAS(unsigned)
CUDA_EMU_CAS(unsigned long long)
#undef CUDA_EMU_CAS

}  // namespace CUDA_EMU_COPY

namespace cuda_emu {
inline namespace CUDA_EMU_COPY {
// The first load of a compare-and-swap loop, left out of the byte counting (counting.cpp): the
// atomic then counts as one read and one write (its compare-and-swap, which succeeds at once
// since nothing runs in between), as on a GPU. noinline: the attribute must survive inlining
// into the instrumented kernel units.
template <class U>
__attribute__((noinline, no_sanitize("thread"))) U cas_first_load(const U* w) {
  return __atomic_load_n(w, __ATOMIC_RELAXED);
}

// Read-modify-write through compare-and-swap on the value's bits: f(old) -> new.
template <class T, class U, class F>
inline T cas_loop(T* a, F f) {
  U* w = reinterpret_cast<U*>(a);
  U old = cas_first_load(w);
  for (;;) {
    U next = bits<U>(f(bits<T>(old)));
    if (__atomic_compare_exchange_n(w, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return bits<T>(old);
  }
}
}  // namespace CUDA_EMU_COPY
}  // namespace cuda_emu

inline namespace CUDA_EMU_COPY {  // up to the vector types

inline float atomicAdd(float* a, float v) {
  return cuda_emu::cas_loop<float, unsigned>(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double* a, double v) {
  return cuda_emu::cas_loop<double, unsigned long long>(a, [v](double o) { return o + v; });
}
inline float atomicExch(float* a, float v) {
  return cuda_emu::bits<float>(
      atomicExch(reinterpret_cast<unsigned*>(a), cuda_emu::bits<unsigned>(v)));
}
#define CUDA_EMU_MINMAX(T, U)                                                                \
  inline T atomicMax(T* a, T v) {                                                            \
    return cuda_emu::cas_loop<T, U>(a, [v](T o) { return o < v ? v : o; });                  \
  }                                                                                          \
  inline T atomicMin(T* a, T v) {                                                            \
    return cuda_emu::cas_loop<T, U>(a, [v](T o) { return v < o ? v : o; });                  \
  }
CUDA_EMU_MINMAX(int, int)
CUDA_EMU_MINMAX(unsigned, unsigned)
CUDA_EMU_MINMAX(long long, long long)
CUDA_EMU_MINMAX(unsigned long long, unsigned long long)
#undef CUDA_EMU_MINMAX
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return cuda_emu::cas_loop<unsigned, unsigned>(
      a, [limit](unsigned o) { return o >= limit ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return cuda_emu::cas_loop<unsigned, unsigned>(
      a, [limit](unsigned o) { return (o == 0 || o > limit) ? limit : o - 1; });
}

// ---- math and bit intrinsics -------------------------------------------------------------------
// expf, logf, sqrtf, fmaxf, fminf, fabsf, floorf, ceilf, powf, tanhf, fmaf, ... come from libm
// (more exact than a GPU's; size test tolerances for the GPU).

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

inline unsigned __float_as_uint(float x) { return cuda_emu::bits<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return cuda_emu::bits<float>(x); }
inline int __float_as_int(float x) { return cuda_emu::bits<int>(x); }
inline float __int_as_float(int x) { return cuda_emu::bits<float>(x); }
inline long long __double_as_longlong(double x) { return cuda_emu::bits<long long>(x); }
inline double __longlong_as_double(long long x) { return cuda_emu::bits<double>(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = (x >> 1 & 0x55555555u) | (x & 0x55555555u) << 1;
  x = (x >> 2 & 0x33333333u) | (x & 0x33333333u) << 2;
  x = (x >> 4 & 0x0f0f0f0fu) | (x & 0x0f0f0f0fu) << 4;
  return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)((unsigned long long)a * b >> 32);
}
inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }

template <class T>
inline T __ldg(const T* p) { return *p; }

// min/max as CUDA overloads them (mixed signedness goes unsigned, mixed float/double to double).
#define CUDA_EMU_MINMAX2(R, A, B)                                \
  inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; }   \
  inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
CUDA_EMU_MINMAX2(int, int, int)
CUDA_EMU_MINMAX2(unsigned, unsigned, unsigned)
CUDA_EMU_MINMAX2(unsigned, int, unsigned)
CUDA_EMU_MINMAX2(unsigned, unsigned, int)
CUDA_EMU_MINMAX2(long, long, long)
CUDA_EMU_MINMAX2(unsigned long, unsigned long, unsigned long)
CUDA_EMU_MINMAX2(long long, long long, long long)
CUDA_EMU_MINMAX2(unsigned long long, unsigned long long, unsigned long long)
CUDA_EMU_MINMAX2(unsigned long long, long long, unsigned long long)
CUDA_EMU_MINMAX2(unsigned long long, unsigned long long, long long)
#undef CUDA_EMU_MINMAX2
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

}  // namespace CUDA_EMU_COPY

// ---- vector types ------------------------------------------------------------------------------

struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };

inline namespace CUDA_EMU_COPY {
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline dim3 make_uint3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }
}  // namespace CUDA_EMU_COPY
