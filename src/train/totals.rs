//! The running sums of an epoch's step reports. A CPU step's report adds up on the host; a GPU
//! step's stays on the device and is added there (one 25-float accumulate launch, no host
//! wait), so a training step on a GPU never synchronises: the sums are read back when the
//! progress bar or the epoch's end asks for them.

use crate::device::gpu::alloc::DeviceBuf;
use crate::device::gpu::kernels::{elementwise, xent};
use crate::nn::ops::StepReport;
use anyhow::Result;
use std::time::{Duration, Instant};

/// What an epoch's steps add up to so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Σ lᵢ, the unweighted per-sample losses.
    pub loss_sum: f64,
    pub correct: usize,
    /// (correct, samples) of the aligned (group 0) and conflicting (group 1) samples.
    pub by_group: [(usize, usize); 2],
}

/// Sums of step reports, on the host and (for GPU steps) on the device.
#[derive(Default)]
pub struct StepTotals {
    host: Totals,
    /// `xent::XENT_STATS` floats summed over the device reports: per group Σ lᵢ, correct,
    /// samples (f32 sums: exact for counts below 2²⁴).
    device: Option<DeviceBuf>,
    last_read: Option<Instant>,
}

impl StepTotals {
    pub fn new() -> Self {
        Self {
            last_read: Some(Instant::now()),
            ..Self::default()
        }
    }

    /// Adds one step's report.
    pub fn add(&mut self, report: StepReport) -> Result<()> {
        match report {
            StepReport::Host(s) => {
                self.host.loss_sum += s.losses.iter().map(|&l| l as f64).sum::<f64>();
                self.host.correct += s.correct;
                for (acc, &(_, c, k)) in self.host.by_group.iter_mut().zip(&s.groups) {
                    acc.0 += c;
                    acc.1 += k;
                }
            }
            StepReport::Device(d) => {
                let dev = d.device()?;
                if self.device.is_none() {
                    self.device = Some(DeviceBuf::zeros(dev, xent::XENT_STATS)?);
                }
                let sums = self.device.as_ref().expect("just made");
                elementwise::acc(dev.gpu(), sums.buf(), d.stats_buf()?, xent::XENT_STATS)?;
            }
        }
        Ok(())
    }

    /// The totals so far; reads the device sums back (the host waits for the steps queued).
    pub fn read(&mut self) -> Result<Totals> {
        self.last_read = Some(Instant::now());
        let mut t = self.host;
        if let Some(sums) = &self.device {
            let row = xent::XentStats::decode(&sums.to_host()?, 2);
            for (g, &(l, c, k)) in row.groups.iter().enumerate() {
                t.loss_sum += l as f64;
                t.correct += c.round() as usize;
                t.by_group[g].0 += c.round() as usize;
                t.by_group[g].1 += k.round() as usize;
            }
        }
        Ok(t)
    }

    /// The totals when a read costs nothing (host reports only) or `every` has passed since the
    /// last one; else None.
    pub fn read_if_due(&mut self, every: Duration) -> Result<Option<Totals>> {
        let due = self.device.is_none() || self.last_read.is_none_or(|t| t.elapsed() >= every);
        if due {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }
}
