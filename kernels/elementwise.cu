// elementwise.cu — the elementwise ops of a training step.
//
// Purpose: ReLU forward/backward, the residual add (optionally fused with the ReLU that follows
// it in a ResNet BasicBlock), in-place accumulation of gradients (a += b), scaling and filling.
// Shapes: flat f32 arrays of n elements (any layout; activations are CNHW); n < 2^32.
// Launch: 1-D grid-stride loop, 256 threads per block, at most 4096 blocks
// (LaunchCfg chosen by src/device/gpu/kernels/elementwise.rs). In-place use (y == x) is allowed
// for relu_fwd, scale and acc (each element is read then written by the same thread).
// CPU twins: src/device/cpu/twin/elementwise.rs (relu/add call src/device/cpu/elementwise.rs).
// Numerics: every op is a single correctly rounded f32 operation, so results match the twins
// bit for bit (scale: one multiply; add_relu: the add then the max, as add then relu on the CPU).
#include "common.cuh"

// Shared by every kernel of this file; unused fields are ignored.
struct ElementwiseParams {
  const float* a;  // input (x for relu/scale; y (forward output) for relu_bwd; a for add)
  const float* b;  // second input (dy for relu_bwd, b for add/acc)
  float* y;        // output (acc: the accumulated array, read and written)
  unsigned n;      // elements
  float alpha;     // scale factor (scale) or value (fill)
};

#define EW_LOOP(i) \
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x)

// y = max(x, 0). NaN stays NaN on the CPU (f32::max returns the non-NaN operand: 0); fmaxf does
// the same, so both give 0 for NaN.
KERNEL(elementwise_relu_fwd_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = fmaxf(p.a[i], 0.0f);
}

// dx = dy where the forward output (or input) is > 0, else 0. a: y, b: dy, y: dx.
KERNEL(elementwise_relu_bwd_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = p.a[i] > 0.0f ? p.b[i] : 0.0f;
}

// y = a + b (the residual connection).
KERNEL(elementwise_add_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = p.a[i] + p.b[i];
}

// y = max(a + b, 0): the residual add and the block's final ReLU in one pass. Its backward is
// relu_bwd masked by this output, whose gradient then flows to both a and b.
KERNEL(elementwise_add_relu_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = fmaxf(p.a[i] + p.b[i], 0.0f);
}

// y += b (gradient accumulation).
KERNEL(elementwise_acc_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = p.y[i] + p.b[i];
}

// y = alpha · a (in place when y == a).
KERNEL(elementwise_scale_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = p.alpha * p.a[i];
}

// y = alpha.
KERNEL(elementwise_fill_f32, ElementwiseParams) {
  EW_LOOP(i) p.y[i] = p.alpha;
}
