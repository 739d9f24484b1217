//! CPU twins of kernels/topk.cu (placeholder until written).
