//! CPU twins of kernels/xent.cu (placeholder until written).
