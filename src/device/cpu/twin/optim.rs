//! CPU twins of kernels/optim.cu (placeholder until written).
