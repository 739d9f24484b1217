//! A tape autograd: each operation computes its output eagerly and records a closure that, given
//! the gradient of its output, adds the gradients of its inputs (and of its parameters).
//!
//! Parameters live outside the tape in a `ParamStore` (values) and a `Grads` (their gradients),
//! so that backward closures read weights without copying them and the optimiser owns updates.
//! A tape lives for one step; `Tape::no_grad()` records nothing (evaluation).

use crate::device::gpu::alloc::GpuDevice;
use crate::nn::param::{Grads, ParamStore};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use std::any::Any;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// What a backward closure sees: the parameter values, and where to add gradients.
pub struct BackwardCtx<'a> {
    pub params: &'a ParamStore,
    pub grads: &'a mut Grads,
    node_grads: &'a mut [Option<Tensor>],
    requires_grad: &'a [bool],
    /// How many gradients have been added into each node so far.
    contributions: &'a mut [u32],
    /// How many recorded ops took each node as an input.
    uses: &'a [u32],
    /// The node whose backward is running.
    current: Var,
}

impl BackwardCtx<'_> {
    /// The node whose backward is running (the output of the op).
    pub fn current(&self) -> Var {
        self.current
    }

    /// How many recorded ops took `v` as an input: with one, the op whose backward is running
    /// may be the only one that will send `v` a gradient.
    pub fn uses(&self, v: Var) -> u32 {
        self.uses[v.0]
    }

    /// How many ops have added a gradient into `v` (one: its gradient is exactly what that
    /// one consumer computed).
    pub fn contributions(&self, v: Var) -> u32 {
        self.contributions[v.0]
    }

    /// Whether input `v` needs a gradient (false for data and for values computed from data only).
    pub fn wants(&self, v: Var) -> bool {
        self.requires_grad[v.0]
    }

    /// Adds `g` to the gradient of input `v`.
    pub fn accumulate(&mut self, v: Var, g: Tensor) -> Result<()> {
        if !self.requires_grad[v.0] {
            return Ok(());
        }
        self.contributions[v.0] += 1;
        match &mut self.node_grads[v.0] {
            Some(acc) => acc.add_assign(&g)?,
            slot @ None => *slot = Some(g),
        }
        Ok(())
    }
}

/// An op's backward: given the gradient of its output, adds its inputs' and parameters'.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &mut BackwardCtx) -> Result<()>>;

struct Node {
    name: &'static str,
    value: Rc<Tensor>,
    requires_grad: bool,
    backward: Option<BackwardFn>,
    /// What the op that made the value tells the ops that consume it (`Tape::set_hint`).
    hint: Option<Rc<dyn Any>>,
    /// The inputs of the op, when it recorded a backward.
    inputs: Vec<Var>,
}

/// The wall time one recorded op took, forward and backward (`Tape::profiled`).
#[derive(Clone, Debug)]
pub struct OpTime {
    pub name: &'static str,
    /// The op's output shape, which tells the layers apart.
    pub shape: Vec<usize>,
    pub forward_s: f64,
    pub backward_s: f64,
}

/// Per-node times of a profiled tape. An op computes its output before it is pushed, so its
/// forward time is the time since the previous push.
struct Profile {
    last: Instant,
    forward_s: Vec<f64>,
    backward_s: Vec<f64>,
}

/// The record of one forward pass.
pub struct Tape {
    nodes: Vec<Node>,
    recording: bool,
    profile: Option<Profile>,
    /// The GPU the ops run on (their values live there), or None for the CPU.
    device: Option<Arc<GpuDevice>>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A tape that records operations for backward.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            recording: true,
            profile: None,
            device: None,
        }
    }

    /// This tape with its ops on `device` (None: the CPU).
    pub fn on(mut self, device: Option<Arc<GpuDevice>>) -> Self {
        self.device = device;
        self
    }

    /// The GPU the ops run on, None on the CPU.
    pub fn device(&self) -> Option<&Arc<GpuDevice>> {
        self.device.as_ref()
    }

    /// A recording tape that also times each op (`rest bench cpu --profile`).
    pub fn profiled() -> Self {
        Self {
            profile: Some(Profile {
                last: Instant::now(),
                forward_s: Vec::new(),
                backward_s: Vec::new(),
            }),
            ..Self::new()
        }
    }

    /// The times of every op pushed so far (empty unless `profiled`). Inputs are left out.
    pub fn op_times(&self) -> Vec<OpTime> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.name.is_empty())
            .map(|(i, n)| OpTime {
                name: n.name,
                shape: n.value.shape().to_vec(),
                forward_s: p.forward_s[i],
                backward_s: p.backward_s[i],
            })
            .collect()
    }

    /// Starts the clock of a profiled tape's next forward op.
    fn mark(&mut self, forward_s: f64) {
        if let Some(p) = &mut self.profile {
            let now = Instant::now();
            p.forward_s.push(forward_s);
            p.backward_s.push(0.0);
            p.last = now;
        }
    }

    fn since_mark(&self) -> f64 {
        self.profile
            .as_ref()
            .map_or(0.0, |p| p.last.elapsed().as_secs_f64())
    }

    /// A tape that records nothing: forward only, intermediate buffers freed early.
    pub fn no_grad() -> Self {
        Self {
            recording: false,
            ..Self::new()
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A constant input (needs no gradient), moved to the tape's device first.
    pub fn upload(&mut self, t: Tensor) -> Result<Var> {
        Ok(match &self.device {
            Some(d) => {
                let t = t.to_device(d)?;
                self.input(t)
            }
            None => self.input(t),
        })
    }

    /// A constant input (needs no gradient), where it is (`upload` moves it to the device).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.input_shared(Rc::new(t))
    }

    /// `input` for a tensor held elsewhere too (a benchmark's fixed batch), without a copy.
    pub fn input_shared(&mut self, t: Rc<Tensor>) -> Var {
        self.nodes.push(Node {
            name: "",
            value: t,
            requires_grad: false,
            backward: None,
            hint: None,
            inputs: Vec::new(),
        });
        self.mark(0.0);
        Var(self.nodes.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    /// Attaches `hint` to `v` for the ops that will consume it: a fused pair of ops meets this
    /// way (batch norm + ReLU tells the convolution after it where its input came from). A value
    /// has one hint, set by the op that made it.
    pub fn set_hint(&mut self, v: Var, hint: Rc<dyn Any>) {
        self.nodes[v.0].hint = Some(hint);
    }

    /// The hint attached to `v`, if it has one of type `T`.
    pub fn hint<T: 'static>(&self, v: Var) -> Option<Rc<T>> {
        self.nodes[v.0].hint.clone()?.downcast().ok()
    }

    /// Whether `v` gets a gradient (false for data, and for values computed from data only).
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// How many recorded ops took each node as an input.
    fn uses(&self) -> Vec<u32> {
        let mut uses = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.0] += 1;
            }
        }
        uses
    }

    /// A shared handle on a value, for closures that need it in backward.
    pub fn value_rc(&self, v: Var) -> Rc<Tensor> {
        Rc::clone(&self.nodes[v.0].value)
    }

    /// Whether the op producing a value from `inputs` (and possibly parameters) must record.
    pub fn needs_record(&self, inputs: &[Var], has_params: bool) -> bool {
        self.recording && (has_params || inputs.iter().any(|v| self.nodes[v.0].requires_grad))
    }

    /// Records the output of op `name`. `backward` is dropped when nothing needs a gradient.
    pub fn push(
        &mut self,
        name: &'static str,
        value: Tensor,
        inputs: &[Var],
        has_params: bool,
        backward: BackwardFn,
    ) -> Var {
        let record = self.needs_record(inputs, has_params);
        self.nodes.push(Node {
            name,
            value: Rc::new(value),
            requires_grad: record,
            backward: record.then_some(backward),
            hint: None,
            inputs: if record { inputs.to_vec() } else { Vec::new() },
        });
        let forward_s = self.since_mark();
        self.mark(forward_s);
        Var(self.nodes.len() - 1)
    }

    /// Back-propagates from `root`, seeded with gradient `seed` (1 for a scalar loss), adding
    /// parameter gradients into `grads`. Consumes the recorded closures.
    pub fn backward(
        &mut self,
        root: Var,
        seed: Tensor,
        params: &ParamStore,
        grads: &mut Grads,
    ) -> Result<()> {
        ensure!(self.recording, "backward on a no_grad tape");
        let requires_grad: Vec<bool> = self.nodes.iter().map(|n| n.requires_grad).collect();
        let mut node_grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
        let mut contributions = vec![0u32; self.nodes.len()];
        let uses = self.uses();
        node_grads[root.0] = Some(seed);
        for i in (0..=root.0).rev() {
            let Some(g) = node_grads[i].take() else {
                continue;
            };
            let Some(f) = self.nodes[i].backward.take() else {
                continue;
            };
            let mut ctx = BackwardCtx {
                params,
                grads,
                node_grads: &mut node_grads,
                requires_grad: &requires_grad,
                contributions: &mut contributions,
                uses: &uses,
                current: Var(i),
            };
            let start = self.profile.is_some().then(Instant::now);
            f(&g, &mut ctx)?;
            if let (Some(p), Some(t)) = (&mut self.profile, start) {
                p.backward_s[i] = t.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops;

    #[test]
    fn a_profiled_tape_times_each_op_once() {
        let store = ParamStore::default();
        let mut tape = Tape::profiled();
        let x = tape.input(Tensor::full(&[4, 3], -1.0));
        let y = ops::relu(&mut tape, x).unwrap();
        let z = ops::transpose01(&mut tape, y).unwrap();
        let mut grads = Grads::zeros(&store, false);
        tape.backward(z, Tensor::full(&[3, 4], 1.0), &store, &mut grads)
            .unwrap();
        let ops = tape.op_times();
        let names: Vec<_> = ops.iter().map(|o| (o.name, o.shape.clone())).collect();
        assert_eq!(names, [("relu", vec![4, 3]), ("transpose", vec![3, 4])]);
        assert!(ops
            .iter()
            .all(|o| o.forward_s >= 0.0 && o.backward_s >= 0.0));
        // An input needs no gradient: nothing recorded, nothing run backward.
        assert!(ops.iter().all(|o| o.backward_s == 0.0));
        // A plain tape keeps no times.
        let mut plain = Tape::new();
        let x = plain.input(Tensor::full(&[2], 1.0));
        ops::relu(&mut plain, x).unwrap();
        assert!(plain.op_times().is_empty());
    }
}
