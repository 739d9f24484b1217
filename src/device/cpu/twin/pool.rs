//! CPU twins of kernels/pool.cu (placeholder until written).
