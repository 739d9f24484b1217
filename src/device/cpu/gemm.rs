//! Row-major f32 GEMM on top of the `gemm` crate (AVX-512 kernels, rayon over both cores).

/// `c[m, n] = (accumulate ? c : 0) + op(a)[m, k] · op(b)[k, n]`, all row-major and contiguous.
/// `a_t`: `a` is stored [k, m] and used transposed; `b_t`: `b` is stored [n, k].
#[allow(clippy::too_many_arguments)]
pub fn matmul(m: usize, k: usize, n: usize, a: &[f32], a_t: bool, b: &[f32], b_t: bool, c: &mut [f32], accumulate: bool) {
    let _ = (m, k, n, a, a_t, b, b_t, c, accumulate);
    todo!("ops helper")
}
