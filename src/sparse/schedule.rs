//! Death-rate schedules for topology updates.

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum DecaySchedule {
    /// d_t = end + ½(start − end)(1 + cos(π t / T)) — the reference's cosine annealing.
    Cosine,
    /// d_t = start + (end − start) t / T.
    Linear,
    /// d_t = start.
    Constant,
}

/// Death rate at step `step` of `total` (clamped to [0, total]); `end` is 0.005 in the reference.
/// With `total == 0` the schedule is taken as finished (t/T = 1) for Cosine and Linear.
pub fn death_rate(start: f64, end: f64, step: u64, total: u64, schedule: DecaySchedule) -> f64 {
    let frac = if total == 0 {
        1.0
    } else {
        step.min(total) as f64 / total as f64
    };
    match schedule {
        DecaySchedule::Cosine => {
            end + 0.5 * (start - end) * (1.0 + (std::f64::consts::PI * frac).cos())
        }
        DecaySchedule::Linear => start + (end - start) * frac,
        DecaySchedule::Constant => start,
    }
}
