//! What the loss op reports about its batch, on either device: on the host at once (the CPU), or
//! still on the device (a GPU: reading the statistics back would make the host wait for the
//! whole step, so the trainer adds reports up there, `train::StepTotals`, and reads the sums
//! when it needs them).

use super::spec::StepStats;
use crate::device::gpu::alloc::{DeviceBuf, GpuDevice};
use crate::device::gpu::kernels::xent;
use crate::device::gpu::Buf;
use crate::tensor::Tensor;
use anyhow::{anyhow, Result};
use std::sync::Arc;

pub enum StepReport {
    Host(StepStats),
    Device(DeviceReport),
}

impl StepReport {
    /// The statistics on the host. A device report is read back: the host waits for the step.
    pub fn resolve(self) -> Result<StepStats> {
        match self {
            StepReport::Host(s) => Ok(s),
            StepReport::Device(d) => d.resolve(),
        }
    }
}

/// A GPU loss op's report, still on the device: the statistics buffer (`xent::XENT_STATS`
/// floats, `xent::XentStats`' layout) and the per-sample losses.
pub struct DeviceReport {
    /// The loss value [1], a view of the statistics buffer's first float.
    stats: Tensor,
    losses: Tensor,
    num_groups: usize,
}

impl DeviceReport {
    /// `stats`: the loss op's value, a view of its statistics buffer; `losses` [N].
    pub(super) fn new(stats: Tensor, losses: Tensor, num_groups: usize) -> Self {
        DeviceReport {
            stats,
            losses,
            num_groups,
        }
    }

    fn stats_dev(&self) -> Result<&DeviceBuf> {
        self.stats
            .on_device()
            .ok_or_else(|| anyhow!("a device report holds a host tensor"))
    }

    /// The whole statistics buffer (`xent::XENT_STATS` floats).
    pub fn stats_buf(&self) -> Result<&Buf> {
        Ok(self.stats_dev()?.buf())
    }

    /// The device it lives on.
    pub fn device(&self) -> Result<&Arc<GpuDevice>> {
        Ok(self.stats_dev()?.device())
    }

    /// Reads the statistics and the losses back (the host waits for the step).
    pub fn resolve(self) -> Result<StepStats> {
        let raw: Vec<f32> = self.device()?.gpu().read(self.stats_buf()?)?;
        let row = xent::XentStats::decode(&raw, self.num_groups);
        let groups: Vec<(f32, usize, usize)> = row
            .groups
            .iter()
            .map(|&(l, c, s)| (l, c.round() as usize, s.round() as usize))
            .collect();
        Ok(StepStats {
            loss: row.loss,
            losses: self.losses.to_host()?.into_vec(),
            correct: groups.iter().map(|g| g.1).sum(),
            groups,
        })
    }
}
