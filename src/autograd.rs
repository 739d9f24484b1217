//! A tape autograd: each operation computes its output eagerly and records a closure that, given
//! the gradient of its output, adds the gradients of its inputs (and of its parameters).
//!
//! Parameters live outside the tape in a `ParamStore` (values) and a `Grads` (their gradients),
//! so that backward closures read weights without copying them and the optimiser owns updates.
//! A tape lives for one step; `Tape::no_grad()` records nothing (evaluation).

use crate::nn::param::{Grads, ParamStore};
use crate::tensor::Tensor;
use std::rc::Rc;

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// What a backward closure sees: the parameter values, and where to add gradients.
pub struct BackwardCtx<'a> {
    pub params: &'a ParamStore,
    pub grads: &'a mut Grads,
    node_grads: &'a mut [Option<Tensor>],
    requires_grad: &'a [bool],
}

impl BackwardCtx<'_> {
    /// Whether input `v` needs a gradient (false for data and for values computed from data only).
    pub fn wants(&self, v: Var) -> bool {
        self.requires_grad[v.0]
    }

    /// Adds `g` to the gradient of input `v`.
    pub fn accumulate(&mut self, v: Var, g: Tensor) {
        if !self.requires_grad[v.0] {
            return;
        }
        match &mut self.node_grads[v.0] {
            Some(acc) => acc.add_assign(&g),
            slot @ None => *slot = Some(g),
        }
    }
}

type BackwardFn = Box<dyn FnOnce(&Tensor, &mut BackwardCtx)>;

struct Node {
    value: Rc<Tensor>,
    requires_grad: bool,
    backward: Option<BackwardFn>,
}

/// The record of one forward pass.
pub struct Tape {
    nodes: Vec<Node>,
    recording: bool,
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
        }
    }

    /// A tape that records nothing: forward only, intermediate buffers freed early.
    pub fn no_grad() -> Self {
        Self {
            nodes: Vec::new(),
            recording: false,
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A constant input (needs no gradient).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.nodes.push(Node {
            value: Rc::new(t),
            requires_grad: false,
            backward: None,
        });
        Var(self.nodes.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    /// A shared handle on a value, for closures that need it in backward.
    pub fn value_rc(&self, v: Var) -> Rc<Tensor> {
        Rc::clone(&self.nodes[v.0].value)
    }

    /// Whether the op producing a value from `inputs` (and possibly parameters) must record.
    pub fn needs_record(&self, inputs: &[Var], has_params: bool) -> bool {
        self.recording && (has_params || inputs.iter().any(|v| self.nodes[v.0].requires_grad))
    }

    /// Records an op's output. `backward` is dropped when nothing needs a gradient.
    pub fn push(
        &mut self,
        value: Tensor,
        inputs: &[Var],
        has_params: bool,
        backward: BackwardFn,
    ) -> Var {
        let record = self.needs_record(inputs, has_params);
        self.nodes.push(Node {
            value: Rc::new(value),
            requires_grad: record,
            backward: record.then_some(backward),
        });
        Var(self.nodes.len() - 1)
    }

    /// Back-propagates from `root`, seeded with gradient `seed` (1 for a scalar loss), adding
    /// parameter gradients into `grads`. Consumes the recorded closures.
    pub fn backward(&mut self, root: Var, seed: Tensor, params: &ParamStore, grads: &mut Grads) {
        assert!(self.recording, "backward on a no_grad tape");
        let requires_grad: Vec<bool> = self.nodes.iter().map(|n| n.requires_grad).collect();
        let mut node_grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
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
            };
            f(&g, &mut ctx);
        }
    }
}
