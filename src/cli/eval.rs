//! `rest eval`: per-group accuracy of a saved checkpoint on a dataset's validation and test
//! splits, on the CPU or a GPU.

use super::device::choose_device;
use super::source::{load_splits, synthetic_train_of, DataSource};
use crate::checkpoint::Checkpoint;
use crate::metrics::{evaluate, GroupMetrics};
use crate::nn::Model;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint written by `rest train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset to evaluate on [default: the one the model was trained on]. Dataset: synthetic |
    /// cmnist | cifar10c | bffhq | folder:DIR (the debiasing folder layout).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Percentage of bias-conflicting training samples [default: the run's].
    #[arg(long, allow_negative_numbers = true)]
    pub ratio: Option<f64>,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = crate::data::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// auto | cpu | cuda[:N] | emu (env REST_DEVICE).
    #[arg(long, env = "REST_DEVICE", default_value = "auto")]
    pub device: String,
}

fn metrics_row(split: &str, m: &GroupMetrics) -> String {
    let (aligned, conflicting) = m.group_percentages();
    let (worst, label_bias) = m.worst_percentages();
    format!(
        "| {split} | {} | {:.2} | {aligned} | {conflicting} | {worst} | {label_bias} |\n",
        m.samples,
        100.0 * m.accuracy,
    )
}

/// `rest eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let dev = choose_device(&args.device, false)?;
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let ck = Checkpoint::load(&args.checkpoint)?;
    let source = DataSource {
        dataset: args
            .dataset
            .clone()
            .unwrap_or_else(|| ck.config.dataset.clone()),
        ratio: args.ratio.unwrap_or(ck.config.ratio),
        data_dir: args.data_dir.clone(),
    };
    let splits = load_splits(&source, ck.config.seed, synthetic_train_of(&ck.config))?;
    let mut mc = ck.config.model.clone();
    mc.in_channels = splits.test.channels;
    mc.num_classes = splits.test.num_classes;
    let mut model = Model::new(&mc, ck.config.seed)?;
    ck.restore_model(&mut model).with_context(|| {
        format!(
            "{} does not fit a model for {}",
            args.checkpoint.display(),
            source.dataset
        )
    })?;
    println!(
        "{} ({}, trained {}, density {:.4})",
        args.checkpoint.display(),
        ck.config.method(),
        crate::text::plural(ck.progress.epoch, "epoch"),
        crate::dst::global_density(&model)
    );
    let mut table = String::from("| split | samples | accuracy | aligned | conflicting | worst group | label × bias worst |\n|---|---|---|---|---|---|---|\n");
    // On a GPU device the model runs there (the optimiser state is not needed: zeros).
    if let Some(d) = dev.open()? {
        let momentum: Vec<Vec<f32>> = model
            .params
            .params
            .iter()
            .map(|p| vec![0.0; p.len()])
            .collect();
        model.to_device(&d, &momentum)?;
    }
    for (name, ds) in [("valid", &splits.valid), ("test", &splits.test)] {
        let spin = crate::progress::spinner(&format!("evaluating on {name} ({} images)", ds.len()));
        let m = evaluate(&mut model, ds, args.batch_size)?.0;
        spin.finish_and_clear();
        table += &metrics_row(name, &m);
    }
    print!("{table}");
    if crate::data::registry::test_split_is_unbiased(&source.dataset) {
        println!(
            "(the {} test split is unbiased: its accuracy is the unbiased accuracy)",
            source.dataset
        );
    }
    Ok(())
}
