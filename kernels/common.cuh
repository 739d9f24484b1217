// common.cuh — included by every kernel file (kernels/*.cu).
//
// One header, two modes:
// - Under NVRTC (__CUDACC_RTC__) or nvcc (__CUDACC__), KERNEL(name, P) declares
//   `extern "C" __global__ void name(const P p)`: every kernel takes exactly one parameter
//   struct by value, mirrored by a #[repr(C)] struct in src/device/gpu/kernels/<family>.rs.
// - Otherwise the file is being compiled as C++ for the emulator (kernels/emu/cuda_emu.h), where
//   KERNEL(name, P) also defines the host entry
//   `extern "C" void name(dim3 grid, dim3 block, unsigned smem, const void* params)`.
//
// Pointers in parameter structs are 64-bit device addresses (u64 on the Rust side).
// NVRTC has no host headers: nothing here (or in a kernel file) may include a system header.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KERNEL(name, P) extern "C" __global__ void name(const P p)
// Dynamic shared memory, 128-byte aligned, seen as T*. One per kernel.
#define DYN_SHARED(T, name)                                                    \
  extern __shared__ __align__(128) unsigned char rest_dyn_smem_[];             \
  T* name = reinterpret_cast<T*>(rest_dyn_smem_)
#else
#include "emu/cuda_emu.h"
#endif

#define REST_FULL_MASK 0xffffffffu
#define REST_WARP 32

// Sum over a full warp (all 32 lanes must call it).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(REST_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(REST_FULL_MASK, v, o));
  return v;
}

// Sum over the whole block; every thread of the block must call it, blockDim.x a multiple of 32
// (≤ 1024). `scratch` is 32 floats of shared memory. Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned warps = (blockDim.x + 31u) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}
