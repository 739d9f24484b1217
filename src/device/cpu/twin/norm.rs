//! CPU twins of kernels/norm.cu (placeholder until written).
