//! `rest device --check` for the elementwise kernels (`elementwise.rs` beside this file): each
//! kernel against its CPU twin (`device::cpu::twin::elementwise`) on random inputs; tolerances in
//! `device::gpu::check`.

use super::elementwise as ew;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{Checker, Cmp, EXACT};
use crate::device::gpu::{Buf, Gpu, KernelDef};
use anyhow::Result;

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    use twin::elementwise::*;
    let gpu = c.gpu;
    for n in [37usize, 70_001] {
        let shape = format!("n {n}");
        let mut a = c.normal(n, 1.0, 0.0);
        a[0] = 0.0;
        let b = c.normal(n, 1.0, 0.0);
        let p = ElementwiseParams {
            n: n as u32,
            alpha: -0.37,
            ..Default::default()
        };
        let (ba, bb) = (c.up(&a)?, c.up(&b)?);
        let mut want = vec![0.0; n];

        let y = c.out::<f32>(n)?;
        ew::relu_fwd(gpu, &ba, &y, n)?;
        elementwise_relu_fwd_f32(&p, &a, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_relu_fwd_f32, &shape, EXACT.into(), &r);

        // The two-input kernels: launch wrapper, twin, kernel.
        type Launch = fn(&Gpu, &Buf, &Buf, &Buf, usize) -> Result<()>;
        type Twin = fn(&ElementwiseParams, &[f32], &[f32], &mut [f32]);
        let binary: [(Launch, Twin, &KernelDef); 3] = [
            (
                ew::relu_bwd,
                elementwise_relu_bwd_f32,
                &ew::elementwise_relu_bwd_f32,
            ),
            (ew::add, elementwise_add_f32, &ew::elementwise_add_f32),
            (
                ew::add_relu,
                elementwise_add_relu_f32,
                &ew::elementwise_add_relu_f32,
            ),
        ];
        for (launch, twin, kernel) in binary {
            let y = c.out::<f32>(n)?;
            launch(gpu, &ba, &bb, &y, n)?;
            twin(&p, &a, &b, &mut want);
            let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
            c.row(kernel, &shape, EXACT.into(), &r);
        }

        // Accumulates into its output: starts from `a`, not from poison.
        let y = c.up(&a)?;
        ew::acc(gpu, &y, &bb, n)?;
        want.copy_from_slice(&a);
        elementwise_acc_f32(&p, &b, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_acc_f32, &shape, EXACT.into(), &r);

        let y = c.out::<f32>(n)?;
        ew::scale(gpu, &ba, &y, p.alpha, n)?;
        elementwise_scale_f32(&p, &a, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_scale_f32, &shape, EXACT.into(), &r);

        // One element more than n: the kernel must not write past n.
        let y = c.out::<f32>(n + 1)?;
        ew::fill(gpu, &y, p.alpha, n)?;
        elementwise_fill_f32(&p, &mut want);
        let mut want1 = want.clone();
        want1.push(f32::from_bits(u32::MAX));
        let r = Cmp::new().bits(&c.read(&y, n + 1)?, &want1).clone();
        c.row(&ew::elementwise_fill_f32, &shape, EXACT.into(), &r);
    }
    Ok(())
}
