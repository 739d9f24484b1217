//! ReLU and residual addition.

use rayon::prelude::*;

/// Below this many floats elementwise ops stay serial; above it they run over rayon in chunks
/// of `CHUNK` floats.
const PAR_MIN: usize = 1 << 16;
const CHUNK: usize = 1 << 14;

/// y = max(x, 0).
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "relu_forward: length mismatch");
    let kernel = |x: &[f32], y: &mut [f32]| {
        super::simd(
            #[inline(always)]
            || {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = v.max(0.0);
                }
            },
        )
    };
    if y.len() >= PAR_MIN {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| kernel(x, y));
    } else {
        kernel(x, y);
    }
}

/// dx = dy where y > 0, else 0 (y is the forward output).
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert_eq!(y.len(), dx.len(), "relu_backward: y/dx length mismatch");
    assert_eq!(dy.len(), dx.len(), "relu_backward: dy/dx length mismatch");
    binary(y, dy, dx, |v, g| if v > 0.0 { g } else { 0.0 });
}

/// y = a + b.
pub fn add_forward(a: &[f32], b: &[f32], y: &mut [f32]) {
    assert_eq!(a.len(), y.len(), "add_forward: a/y length mismatch");
    assert_eq!(b.len(), y.len(), "add_forward: b/y length mismatch");
    binary(a, b, y, |u, v| u + v);
}

/// y = max(a + b, 0): the residual add and its ReLU in one pass.
pub fn add_relu_forward(a: &[f32], b: &[f32], y: &mut [f32]) {
    assert_eq!(a.len(), y.len(), "add_relu_forward: a/y length mismatch");
    assert_eq!(b.len(), y.len(), "add_relu_forward: b/y length mismatch");
    binary(a, b, y, |u, v| (u + v).max(0.0));
}

/// y[i] = f(a[i], b[i]) over slices of one length, in `CHUNK`-float pieces on rayon's threads
/// from `PAR_MIN` floats.
#[inline(always)]
fn binary(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32 + Copy + Sync) {
    let kernel = |a: &[f32], b: &[f32], y: &mut [f32]| {
        super::simd(
            #[inline(always)]
            || {
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = f(u, v);
                }
            },
        )
    };
    if y.len() >= PAR_MIN {
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .for_each(|((y, a), b)| kernel(a, b, y));
    } else {
        kernel(a, b, y);
    }
}
