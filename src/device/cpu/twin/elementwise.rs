//! CPU twins of kernels/elementwise.cu (placeholder until written).
