//! CPU twins of kernels/conv.cu (placeholder until written).
