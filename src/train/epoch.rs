//! The epoch loop: `Trainer::train` in named phases. Once per call: `prepare_output` (folder,
//! lock, config.json), the JTT phase, `announce`, `plan_run` (loader, weights, step count) and
//! `open_metrics`; per epoch: `train_epoch` (the batches through the step), `evaluate_epoch`
//! (validation, selection, test on a new best), `adjust_lr` (plateau), the metrics line
//! (`record_epoch`) and the checkpoints (`save_epoch`); at the end `finish` (summary.json).

use super::config::{Reweight, ReweightMode, RunOptions};
use super::report::{
    arch_name, keep_epochs_before, progress_bar, selection_score, EpochRecord, Summary,
};
use super::step::train_step;
use super::totals::{StepTotals, Totals};
use super::Trainer;
use crate::checkpoint;
use crate::data::loader::{batches, LoaderConfig};
use crate::device::Device;
use crate::dst::{self, PathChoice};
use crate::flops::FlopsReport;
use crate::metrics::GroupMetrics;
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

/// What stays fixed over the epochs of one `train` call.
struct RunPlan {
    loader: LoaderConfig,
    /// Per-sample training weights (label reweighting or JTT), if any.
    sample_weights: Option<Vec<f32>>,
    /// The weights act in the loss (else in the sampler, through `loader`).
    weighted_loss: bool,
    total_steps: u64,
}

/// What an epoch's training pass saw.
struct EpochPass {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    /// (correct, seen) of the aligned (group 0) and conflicting (group 1) samples.
    by_group: [(usize, usize); 2],
    train_secs: f64,
}

/// An epoch's evaluation: validation, and test when validation improved (`best`).
struct EpochEval {
    valid: GroupMetrics,
    test: Option<GroupMetrics>,
    best: bool,
}

impl Trainer<'_> {
    /// Trains to the configured number of epochs (or `stop_after_epochs` more), writing
    /// metrics.jsonl, checkpoints and, at the end, summary.json under `opts.out`.
    pub fn train(&mut self, opts: &RunOptions) -> Result<Option<Summary>> {
        let _lock = self.prepare_output(opts)?;
        if self.config.reweight == Reweight::Jtt && self.progress.jtt_weights.is_none() {
            self.progress.jtt_weights = Some(self.jtt_phase(opts)?);
        }
        if !opts.quiet && self.progress.epoch == 0 {
            self.announce();
        }
        let plan = self.plan_run();
        let mut rng = Rng::from_state(self.progress.topology_rng);
        let stop_at = opts
            .stop_after_epochs
            .map(|n| self.progress.epoch + n)
            .unwrap_or(usize::MAX);
        let mut metrics_file = self.open_metrics(opts)?;
        while self.progress.epoch < self.config.epochs && self.progress.epoch < stop_at {
            let epoch = self.progress.epoch;
            let t0 = Instant::now();
            let pass = self.train_epoch(&plan, &mut rng, opts, t0)?;
            let eval = self.evaluate_epoch(epoch)?;
            self.adjust_lr(eval.valid.loss, opts);
            let best = eval.best;
            self.record_epoch(epoch, pass, eval, &mut metrics_file, opts)?;
            self.progress.epoch += 1;
            self.progress.wall_seconds += t0.elapsed().as_secs_f64();
            self.progress.topology_rng = rng.state();
            self.save_epoch(best, opts)?;
        }
        if self.progress.epoch < self.config.epochs {
            return Ok(None);
        }
        self.finish(opts).map(Some)
    }

    /// Creates and locks the output folder and writes config.json; the lock lives as long as
    /// the returned guard.
    fn prepare_output(&self, opts: &RunOptions) -> Result<crate::run_lock::RunLock> {
        ensure!(
            !opts.out.exists() || opts.out.is_dir(),
            "the output folder {} is a file",
            opts.out.display()
        );
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("cannot create output directory {}", opts.out.display()))?;
        let lock = crate::run_lock::RunLock::acquire(&opts.out)?;
        checkpoint::write_atomic(
            &opts.out.join("config.json"),
            serde_json::to_string_pretty(&self.config)?.as_bytes(),
        )?;
        Ok(lock)
    }

    /// JTT's first phase: a plain run of `jtt_epochs` epochs; its training errors get λ.
    fn jtt_phase(&mut self, opts: &RunOptions) -> Result<Vec<f32>> {
        let mut cfg = self.config.clone();
        cfg.reweight = Reweight::Off;
        cfg.epochs = self.config.jtt_epochs;
        let mut first = Trainer::new_on(cfg, self.splits, self.device)?;
        let sub = RunOptions {
            out: opts.out.join("jtt-phase1"),
            quiet: opts.quiet,
            stop_after_epochs: None,
        };
        first.train(&sub)?;
        let (_, correct) = first.evaluate_here(&self.splits.train)?;
        let errors = correct.iter().filter(|c| !**c).count();
        if !opts.quiet {
            eprintln!(
                "jtt: {} of {} training samples misclassified after {}; upweighting them by {}",
                errors,
                correct.len(),
                crate::text::plural(self.config.jtt_epochs, "epoch"),
                self.config.upweight
            );
        }
        Ok(correct
            .iter()
            .map(|&c| if c { 1.0 } else { self.config.upweight })
            .collect())
    }

    /// The first lines of a fresh run: method, model, stored parameters, the masked layers.
    fn announce(&self) {
        eprintln!(
            "method {}: {} on {}, {} parameters stored",
            self.config.method(),
            arch_name(&self.model.config),
            self.config.dataset,
            self.model.params.stored_len()
        );
        if self.sparse.is_some() {
            let how = match (self.device, self.config.sparse.as_ref().map(|s| s.compute)) {
                (Device::Cpu, Some(PathChoice::Auto | PathChoice::Calibrate)) => {
                    "compute path from this machine's calibration, timed once and stored: \
                     --sparse-compute calibrate times it again"
                }
                (Device::Cpu, _) => "compute path as --sparse-compute asks",
                _ => "the GPU runs them on its sparse kernels",
            };
            eprintln!("masked layers ({how}):");
            eprint!("{}", dst::describe(&self.model));
        }
    }

    /// The loader, the sample weights and where they act, and the run's total step count.
    fn plan_run(&self) -> RunPlan {
        let weighted_loss = self.config.reweight_mode == ReweightMode::Loss;
        let sample_weights = self.sample_weights();
        let loader = LoaderConfig {
            batch_size: self.config.batch_size,
            shuffle: true,
            drop_last: false,
            augment: self.config.augment,
            sample_weights: if weighted_loss {
                None
            } else {
                sample_weights.clone()
            },
            seed: self.config.seed,
        };
        RunPlan {
            loader,
            sample_weights,
            weighted_loss,
            total_steps: self.steps_per_epoch() * self.config.epochs as u64,
        }
    }

    /// metrics.jsonl, opened for appending after dropping the lines of epochs not yet saved.
    fn open_metrics(&self, opts: &RunOptions) -> Result<File> {
        let metrics_path = opts.out.join("metrics.jsonl");
        keep_epochs_before(&metrics_path, self.progress.epoch)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.out.join("metrics.jsonl"))
            .with_context(|| format!("cannot open {}", opts.out.join("metrics.jsonl").display()))
    }

    /// One pass over the training split: every batch through the step of the training device
    /// (and the topology update on its steps), with the progress bar.
    fn train_epoch(
        &mut self,
        plan: &RunPlan,
        rng: &mut Rng,
        opts: &RunOptions,
        t0: Instant,
    ) -> Result<EpochPass> {
        self.place_on_device()?;
        let epoch = self.progress.epoch;
        let (loader, sample_weights, weighted_loss, total_steps) = (
            &plan.loader,
            &plan.sample_weights,
            plan.weighted_loss,
            plan.total_steps,
        );
        let bar = progress_bar(
            self.steps_per_epoch(),
            epoch,
            self.config.epochs,
            opts.quiet,
        );
        let mut seen = 0usize;
        // Loss, accuracy and per-group sums; on a GPU they stay there until read (at most once
        // a second for the progress bar, and at the end).
        let mut totals = StepTotals::new();
        for batch in batches(&self.splits.train, loader, epoch as u64) {
            let n = batch.len();
            if n < 2 {
                continue; // batch norm cannot train on one sample
            }
            let train = &self.splits.train;
            let groups: Vec<u32> = batch
                .indices
                .iter()
                .zip(&batch.labels)
                .map(|(&i, &label)| (train.bias[i] as u32 != label) as u32)
                .collect();
            let weights: Vec<f32> = match (sample_weights, weighted_loss) {
                (Some(w), true) => batch.indices.iter().map(|&i| w[i]).collect(),
                _ => vec![1.0; n],
            };
            let update = self
                .sparse
                .as_ref()
                .is_some_and(|s| s.is_update_step(self.progress.step, total_steps));
            let step = self.progress.step;
            let (stats, grads) = train_step(
                &mut self.model,
                &mut self.opt,
                batch.images,
                &batch.labels,
                &weights,
                Some(&groups),
                update,
            )?;
            let update_report = if update {
                let s = self
                    .sparse
                    .as_mut()
                    .expect("update step without sparse state");
                Some(s.update(
                    &mut self.model,
                    &mut self.opt,
                    &grads,
                    step,
                    total_steps,
                    rng,
                )?)
            } else {
                None
            };
            totals.add(stats)?;
            seen += n;
            if let Some((ustats, rate)) = update_report {
                if !opts.quiet {
                    bar.suspend(|| eprintln!("step {}: topology update, death rate {:.4}, {} weights pruned and regrown", step, rate, ustats.pruned));
                }
            }
            self.progress.step += 1;
            self.progress.images_seen += n as u64;
            if let Some(t) = totals.read_if_due(Duration::from_secs(1))? {
                check_finite(&t, seen, epoch, self.progress.step)?;
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    t.loss_sum / seen as f64,
                    t.correct as f64 / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64()
                ));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let t = totals.read()?;
        check_finite(&t, seen, epoch, self.progress.step)?;
        let Totals {
            loss_sum,
            correct,
            by_group,
        } = t;
        let train_secs = t0.elapsed().as_secs_f64();
        Ok(EpochPass {
            loss_sum,
            correct,
            seen,
            by_group,
            train_secs,
        })
    }

    /// Validation on the training device (the host model refreshed first on a GPU), the
    /// selection score, and the test split when validation improved.
    fn evaluate_epoch(&mut self, epoch: usize) -> Result<EpochEval> {
        // On a GPU device the host model is refreshed once per epoch, here: evaluation runs
        // on the GPU model, while checkpoints, density, in-time statistics and the FLOPs
        // report read the host copy (weights, momentum, BN statistics, sparse structure).
        self.sync_host()?;
        let (valid, _) = self.evaluate_here(&self.splits.valid)?;
        // A finite training loss can still come with overflowing logits on held-out data;
        // such a run's accuracies mean nothing, and its summary could not hold the loss.
        ensure!(
            valid.loss.is_finite(),
            "training diverged at epoch {epoch}: the validation loss is {}; try a lower --lr",
            valid.loss
        );
        // Selection as the reference: the validation worst group (the lower of aligned and
        // conflicting) when reweighting, overall validation accuracy otherwise. Ties go to
        // the higher overall accuracy; the 1e-6 weight keeps that a tie-break only.
        let score = selection_score(self.config.reweight, &valid);
        let best = score > self.progress.best_score;
        let test = if best {
            Some(self.evaluate_here(&self.splits.test)?.0)
        } else {
            None
        };
        if let Some(t) = test.as_ref().filter(|t| !t.loss.is_finite()) {
            bail!(
                "training diverged at epoch {epoch}: the test loss is {}; try a lower --lr",
                t.loss
            );
        }
        if best {
            self.progress.best_score = score;
            self.progress.best_epoch = epoch;
            self.progress.best_valid = Some(valid.clone());
            self.progress.best_test = test.clone();
        }
        Ok(EpochEval { valid, test, best })
    }

    /// ReduceLROnPlateau on the validation loss.
    fn adjust_lr(&mut self, valid_loss: f64, opts: &RunOptions) {
        let factor = self.progress.plateau.observe(valid_loss);
        if factor != 1.0 {
            self.progress.lr *= factor;
            self.opt.lr = self.progress.lr;
            // (the GPU model takes the learning rate with every step)
            if !opts.quiet {
                eprintln!(
                    "validation loss has not improved for {} epochs: learning rate now {:e}",
                    self.progress.plateau.patience + 1,
                    self.progress.lr
                );
            }
        }
    }

    /// The epoch's metrics line, and its line on the terminal.
    fn record_epoch(
        &self,
        epoch: usize,
        pass: EpochPass,
        eval: EpochEval,
        metrics_file: &mut File,
        opts: &RunOptions,
    ) -> Result<()> {
        let EpochPass {
            loss_sum,
            correct,
            seen,
            by_group,
            train_secs,
        } = pass;
        let EpochEval { valid, test, best } = eval;
        let record = EpochRecord {
            epoch,
            step: self.progress.step,
            lr: self.progress.lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            train_aligned_accuracy: (by_group[0].1 > 0)
                .then(|| by_group[0].0 as f64 / by_group[0].1 as f64),
            train_conflicting_accuracy: (by_group[1].1 > 0)
                .then(|| by_group[1].0 as f64 / by_group[1].1 as f64),
            images_per_second: seen as f64 / train_secs,
            density: dst::global_density(&self.model),
            fired_fraction: self.sparse.as_ref().map(|s| s.fired_fraction(&self.model)),
            valid,
            test,
            best,
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&record)?)?;
        if !opts.quiet {
            eprintln!(
                "epoch {:>3}/{}: loss {:.4} train acc {:.3} | valid acc {:.3} aligned {:.3} conflicting {:.3} worst group {:.3}{} | {:.0} img/s",
                epoch + 1,
                self.config.epochs,
                record.train_loss,
                record.train_accuracy,
                record.valid.accuracy,
                record.valid.aligned_accuracy,
                record.valid.conflicting_accuracy,
                record.valid.worst_group_accuracy,
                if best { " (best)" } else { "" },
                record.images_per_second
            );
        }
        Ok(())
    }

    /// The epoch's checkpoints (best first, then last).
    fn save_epoch(&self, best: bool, opts: &RunOptions) -> Result<()> {
        // best before last: a run stopped between the two repeats this epoch on resume and
        // writes the same best again, while the other order could leave a stale best file
        // behind a last one that already names this epoch as the best.
        if best {
            self.checkpoint().save(&opts.out.join(checkpoint::BEST))?;
        }
        self.checkpoint().save(&opts.out.join(checkpoint::LAST))?;
        Ok(())
    }

    /// The FLOPs report and summary.json of a finished run.
    fn finish(&self, opts: &RunOptions) -> Result<Summary> {
        let (h, w) = (self.splits.train.height, self.splits.train.width);
        let update_every = self
            .sparse
            .as_ref()
            .filter(|s| !s.config.fix)
            .map(|s| s.config.update_every);
        let flops = FlopsReport::new(&self.model, h, w, update_every);
        let summary = Summary {
            method: self.config.method().into(),
            config: self.config.clone(),
            best_epoch: self.progress.best_epoch,
            valid: self.progress.best_valid.clone().unwrap_or_default(),
            test: self.progress.best_test.clone().unwrap_or_default(),
            density: dst::global_density(&self.model),
            inference_flops_per_image: flops.sparse_inference,
            dense_inference_flops_per_image: flops.dense_inference,
            train_flops_per_image: flops.sparse_train,
            dense_train_flops_per_image: flops.dense_train,
            train_flops_total: flops.sparse_train * self.progress.images_seen as f64,
            wall_seconds: self.progress.wall_seconds,
            compute_paths: dst::compute_paths(&self.model),
            device: self.device.to_string(),
        };
        checkpoint::write_atomic(
            &opts.out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        if !opts.quiet {
            eprint!("{}", flops.render());
        }
        Ok(summary)
    }
}

/// Fails a run whose mean training loss so far is not finite.
fn check_finite(t: &Totals, seen: usize, epoch: usize, step: u64) -> Result<()> {
    let loss = t.loss_sum / seen.max(1) as f64;
    if !loss.is_finite() {
        bail!("training diverged at epoch {epoch}, step {step} (loss {loss}); try a lower --lr");
    }
    Ok(())
}
