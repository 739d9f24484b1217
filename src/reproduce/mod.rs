//! `rest reproduce`: the paper's experiment grids. Expands methods × conflict ratios × densities ×
//! seeds with the reference hyper-parameters, runs each as a child `rest train` (resuming and
//! skipping what is there, recording failures), or emits a Slurm array job for them, then writes
//! results.md, results.csv and PNG plots from whatever runs have finished.

pub mod aggregate;
pub mod font;
pub mod grid;
pub mod plot;
pub mod runner;
pub mod slurm;

use crate::checkpoint::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use grid::{GridConfig, RunSpec};
use runner::{Exec, Outcome};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  rest reproduce cmnist --quick                 (about 15 minutes on a laptop CPU)\n  rest reproduce cmnist --ratios 1 --densities 0.01,0.05 --seeds 41,42,43 --workers 2\n  rest reproduce cifar10c --emit-slurm cifar.sbatch   (then: sbatch cifar.sbatch)\n  rest reproduce cifar10c --collect results/cifar10c other-machine/results/cifar10c"
)]
pub struct ReproduceArgs {
    /// cmnist | cifar10c | bffhq (synthetic: the built-in set, to try the pipeline without data).
    /// Also spelt `--dataset NAME`, as in the other commands.
    #[arg(value_name = "DATASET", required_unless_present = "dataset_flag")]
    pub dataset_positional: Option<String>,
    /// The dataset, as the positional DATASET.
    #[arg(
        long = "dataset",
        value_name = "DATASET",
        conflicts_with = "dataset_positional"
    )]
    pub dataset_flag: Option<String>,
    /// The reduced CMNIST grid: all four methods, ratio 1 %, densities 0.05 and 0.01, seed 41,
    /// 2 epochs, ΔT 100 (about 15 minutes on a 2-core CPU). Explicit flags override its choices.
    #[arg(long)]
    pub quick: bool,
    /// Methods, comma-separated: vanilla,reweight (dense) and sparse,rest (over the densities).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Bias-conflicting percentages; default: the dataset's (0.5,1,2,5; BFFHQ 0.5).
    #[arg(long, value_delimiter = ',')]
    pub ratios: Option<Vec<f64>>,
    /// Densities of the sparse methods; default: the paper's 14 (0.0005 … 0.9).
    #[arg(long, value_delimiter = ',')]
    pub densities: Option<Vec<f64>>,
    /// Seeds; default 41,42,43.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Epochs per run; default 100 (the paper's).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// λ for every ratio, instead of the reference's pairing 0.5→10, 1→30, 2→50, 5→80.
    // Here and on --lr, a negative number is taken as the value (not as a flag), so that the
    // check of the runs' options can say what is wrong with it.
    #[arg(long, allow_negative_numbers = true)]
    pub upweight: Option<f32>,
    /// Model width; default 64.
    #[arg(long)]
    pub width: Option<usize>,
    /// Learning rate; default 0.01 (CMNIST CNN) or 0.001 (ResNet-18).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Steps between topology updates (ΔT); default 1000 (the paper's), 100 with --quick so that
    /// its short runs still update the topology a few times.
    #[arg(long)]
    pub update_every: Option<u64>,
    /// Samples in the synthetic training split (synthetic dataset only).
    #[arg(long)]
    pub synthetic_train: Option<usize>,
    /// Runs at once (each a child process).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Results folder; default results/<dataset> (results/cmnist-quick with --quick).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Where the children find datasets (passed on as `rest train --data-dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write a Slurm array-job script for the grid (one task per run) instead of running it.
    #[arg(long, value_name = "FILE")]
    pub emit_slurm: Option<PathBuf>,
    /// Extra `#SBATCH` option for --emit-slurm, e.g. --sbatch=--time=24:00:00 (repeatable).
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Build results.md, results.csv and plots from these results folders (their runs/ united)
    /// instead of running anything; written to --results (default: the first folder).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    pub collect: Vec<PathBuf>,
    /// Run only the grid's run number N (0-based; what a Slurm array task does).
    #[arg(long, value_name = "N")]
    pub task_index: Option<usize>,
    /// List the runs and their commands, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl ReproduceArgs {
    /// The dataset, however it was spelt (clap requires one of the two).
    pub fn dataset(&self) -> &str {
        self.dataset_flag
            .as_deref()
            .or(self.dataset_positional.as_deref())
            .unwrap_or_default()
    }

    /// The grid with defaults and `--quick` applied.
    pub fn grid(&self) -> Result<GridConfig> {
        let p = grid::preset(self.dataset())?;
        if self.quick {
            ensure!(
                self.dataset() == "cmnist",
                "--quick is the reduced Colored MNIST grid: use it with cmnist"
            );
        }
        let (methods, ratios, densities, seeds, epochs) = if self.quick {
            (
                grid::METHODS.map(String::from).to_vec(),
                vec![1.0],
                vec![0.05, 0.01],
                vec![41],
                2,
            )
        } else {
            (
                grid::METHODS.map(String::from).to_vec(),
                p.ratios.clone(),
                grid::PAPER_DENSITIES.to_vec(),
                vec![41, 42, 43],
                p.epochs,
            )
        };
        let g = GridConfig {
            dataset: self.dataset().to_string(),
            methods: self.methods.clone().unwrap_or(methods),
            ratios: self.ratios.clone().unwrap_or(ratios),
            densities: self.densities.clone().unwrap_or(densities),
            seeds: self.seeds.clone().unwrap_or(seeds),
            epochs: self.epochs.unwrap_or(epochs),
            upweight: self.upweight,
            width: self.width.unwrap_or(p.width),
            lr: self.lr.unwrap_or(p.lr),
            model: p.model.into(),
            batch_size: self.batch_size,
            update_every: self
                .update_every
                .unwrap_or(if self.quick { 100 } else { 1000 }),
            synthetic_train: self.synthetic_train,
        };
        ensure!(
            g.synthetic_train.is_none() || g.dataset == "synthetic",
            "--synthetic-train is for the synthetic dataset"
        );
        g.validate()?;
        Ok(g)
    }

    pub fn results_dir(&self) -> PathBuf {
        if let Some(r) = &self.results {
            return r.clone();
        }
        if let Some(first) = self.collect.first() {
            return first.clone();
        }
        PathBuf::from(if self.quick {
            format!("results/{}-quick", self.dataset())
        } else {
            format!("results/{}", self.dataset())
        })
    }
}

/// `rest reproduce` arguments that rebuild exactly this grid into `results`.
pub fn grid_args(g: &GridConfig, results: &Path, data_dir: Option<&Path>) -> Vec<String> {
    let join = |v: Vec<String>| v.join(",");
    let mut a = vec![
        g.dataset.clone(),
        "--methods".into(),
        join(g.methods.clone()),
        "--ratios".into(),
        join(g.ratios.iter().map(|&x| grid::num(x)).collect()),
    ];
    if !g.densities.is_empty() {
        a.extend([
            "--densities".into(),
            join(g.densities.iter().map(|&x| grid::num(x)).collect()),
        ]);
    }
    a.extend([
        "--seeds".into(),
        join(g.seeds.iter().map(|x| x.to_string()).collect()),
        "--epochs".into(),
        g.epochs.to_string(),
        "--width".into(),
        g.width.to_string(),
        "--lr".into(),
        grid::num(g.lr),
        "--batch-size".into(),
        g.batch_size.to_string(),
        "--update-every".into(),
        g.update_every.to_string(),
    ]);
    if let Some(u) = g.upweight {
        a.extend(["--upweight".into(), format!("{u}")]);
    }
    if let Some(n) = g.synthetic_train {
        a.extend(["--synthetic-train".into(), n.to_string()]);
    }
    if let Some(d) = data_dir {
        a.extend(["--data-dir".into(), d.display().to_string()]);
    }
    a.extend(["--results".into(), results.display().to_string()]);
    a
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// The runs under `sources` (see `aggregate::load`); each file that could not be used is reported
/// on stderr.
pub fn load_reported(sources: &[PathBuf]) -> Result<aggregate::Loaded> {
    let loaded = aggregate::load(sources)?;
    for (path, why) in &loaded.skipped {
        eprintln!("skipped {}: {why}", path.display());
    }
    Ok(loaded)
}

/// "; N unreadable file(s) skipped, see above" when there were any.
fn skipped_note(loaded: &aggregate::Loaded) -> String {
    match loaded.skipped.len() {
        0 => String::new(),
        n => format!("; {n} unreadable file(s) skipped, see above"),
    }
}

/// Writes results.md, results.csv and the plots for the `loaded` runs, into `out`.
pub fn write_reports(loaded: &aggregate::Loaded, out: &Path) -> Result<()> {
    let (runs, failures) = (&loaded.runs, &loaded.failures);
    let rows = aggregate::aggregate(runs)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut plots = Vec::new();
    let mut panels: Vec<(String, f64)> =
        rows.iter().map(|r| (r.dataset.clone(), r.ratio)).collect();
    panels.dedup();
    for (dataset, ratio) in &panels {
        let r = grid::num(*ratio);
        for (name, fig) in [
            (
                format!("conflicting-vs-density-{dataset}-r{r}.png"),
                plot::conflicting_vs_density(&rows, dataset, *ratio),
            ),
            (
                format!("accuracy-vs-train-flops-{dataset}-r{r}.png"),
                plot::accuracy_vs_flops(&rows, dataset, *ratio),
            ),
        ] {
            write_atomic(&out.join(&name), &plot::render(&fig)?)?;
            plots.push(name);
        }
    }
    write_atomic(
        &out.join("results.csv"),
        aggregate::render_csv(&rows).as_bytes(),
    )?;
    write_atomic(
        &out.join("results.md"),
        aggregate::render_markdown(&rows, failures, &plots).as_bytes(),
    )?;
    Ok(())
}

/// Before running a grid into `results`: a finished run there that would share a table row with
/// a run of the grid but was trained with other settings (another --width, say) would make the
/// tables fail once the grid is done (see `aggregate::check_rows`), so it is an error now.
fn check_results_folder(specs: &[RunSpec], results: &Path) -> Result<()> {
    if !results.join("runs").is_dir() {
        return Ok(());
    }
    // Unreadable files are reported when the tables are built.
    let loaded = aggregate::load(&[results.to_path_buf()])?;
    for spec in specs {
        let config = spec.train_config()?;
        let row = aggregate::row_key(&config);
        for done in loaded
            .runs
            .iter()
            .filter(|r| aggregate::row_key(&r.config) == row)
        {
            let diffs = aggregate::config_differences(&done.config, &config);
            if !diffs.is_empty() {
                bail!(
                    "{} already holds run {}, trained with other settings than this grid's run \
                     {} of the same row of the tables ({}): {}. Give this grid its own \
                     --results folder, or remove that run",
                    results.display(),
                    done.dir.display(),
                    spec.key(),
                    aggregate::describe_row(&row),
                    diffs.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// What `rest reproduce` does.
pub fn run(args: &ReproduceArgs) -> Result<()> {
    let results = args.results_dir();
    ensure!(
        args.workers >= 1,
        "--workers must be at least 1 (the number of runs at once)"
    );
    if !args.collect.is_empty() {
        ensure!(
            args.emit_slurm.is_none() && args.task_index.is_none(),
            "--collect builds tables from finished runs: it does not go with --emit-slurm or --task-index"
        );
        let loaded = load_reported(&args.collect)?;
        if loaded.runs.is_empty() {
            let folders: Vec<String> = args
                .collect
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            bail!(
                "no finished runs in {}: --collect reads <folder>/runs/<key>/summary.json, one \
                 per finished run, as `rest reproduce` writes them (found {} failed run(s){}); \
                 nothing was written",
                folders.join(", "),
                loaded.failures.len(),
                skipped_note(&loaded)
            );
        }
        write_reports(&loaded, &results)?;
        println!(
            "{} ({} failed{}) from {}: {}",
            crate::text::plural(loaded.runs.len(), "finished run"),
            loaded.failures.len(),
            skipped_note(&loaded),
            crate::text::plural(args.collect.len(), "folder"),
            results.join("results.md").display()
        );
        return Ok(());
    }
    let g = args.grid()?;
    let specs = g.expand()?;
    let exe = std::env::current_exe().context("cannot find the rest executable")?;
    let exec = Exec {
        exe: exe.clone(),
        data_dir: args.data_dir.clone(),
        workers: args.workers,
        progress: !args.quiet,
    };
    // Not per Slurm task: the grid was checked when its script was written.
    if args.task_index.is_none() || args.dry_run {
        check_results_folder(&specs, &results)?;
    }
    if args.dry_run {
        for (i, s) in specs.iter().enumerate() {
            let dir = runner::run_dir(&results, &s.key());
            let cmd = runner::command_for(s, &dir, runner::state(&dir), &exec);
            println!("{i}\t{:?}\t{}", runner::state(&dir), cmd.join(" "));
        }
        println!("{}", crate::text::plural(specs.len(), "run"));
        return Ok(());
    }
    if let Some(file) = &args.emit_slurm {
        ensure!(
            !file.is_dir(),
            "--emit-slurm {} is a directory: give the script's file name, e.g. {}",
            file.display(),
            file.join(format!("{}.sbatch", g.dataset)).display()
        );
        let results = absolute(&results)?;
        let data_dir = args.data_dir.as_deref().map(absolute).transpose()?;
        std::fs::create_dir_all(results.join("slurm"))
            .with_context(|| format!("cannot create {}", results.display()))?;
        write_grid_listing(&specs, &results)?;
        let text = slurm::script(
            &exe,
            &grid_args(&g, &results, data_dir.as_deref()),
            specs.len(),
            &results,
            &format!("rest-{}", g.dataset),
            &args.sbatch,
        );
        write_atomic(file, text.as_bytes())?;
        println!(
            "{}: a Slurm array of {} into {}\nsubmit: sbatch {0}\nthen:   {} reproduce {} --collect {2}",
            file.display(),
            crate::text::plural(specs.len(), "run"),
            results.display(),
            exe.display(),
            g.dataset
        );
        return Ok(());
    }
    if let Some(i) = args.task_index {
        ensure!(
            i < specs.len(),
            "--task-index {i} is outside the grid of {} runs",
            specs.len()
        );
        let spec = &specs[i];
        let key = spec.key();
        let outcome = runner::run_one(spec, &results, &exec)?;
        println!("run {i} ({key}): {outcome:?}");
        if outcome == Outcome::Failed {
            let dir = runner::run_dir(&results, &key);
            let how = runner::failure_how(&dir).map_or(String::new(), |h| format!(", {h}"));
            bail!(
                "run {key} failed{how}: see {}",
                dir.join(runner::FAILED).display()
            );
        }
        return Ok(());
    }
    eprintln!(
        "{} into {} ({} at once)",
        crate::text::plural(specs.len(), "run"),
        results.display(),
        exec.workers
    );
    let outcomes = runner::run_grid(&specs, &results, &exec)?;
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    let loaded = load_reported(std::slice::from_ref(&results))?;
    write_reports(&loaded, &results)?;
    println!(
        "{} trained, {} resumed, {} skipped (already done), {} failed; {} in {}{}",
        count(Outcome::Trained),
        count(Outcome::Resumed),
        count(Outcome::Skipped),
        count(Outcome::Failed),
        crate::text::plural(loaded.runs.len(), "finished run"),
        results.join("results.md").display(),
        skipped_note(&loaded)
    );
    let failed: Vec<PathBuf> = specs
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Outcome::Failed)
        .map(|(s, _)| runner::run_dir(&results, &s.key()))
        .collect();
    if !failed.is_empty() {
        let mut list: Vec<String> = failed
            .iter()
            .take(3)
            .map(|dir| {
                let file = dir.join(runner::FAILED).display().to_string();
                match runner::failure_how(dir) {
                    Some(how) => format!("{file}: {how}"),
                    None => file,
                }
            })
            .collect();
        if failed.len() > 3 {
            list.push(format!("and {} more", failed.len() - 3));
        }
        bail!(
            "{} of {} failed: why is in {} ({}; {} lists all {}); once the cause is fixed, run \
             the same command again to retry {}",
            failed.len(),
            crate::text::plural(specs.len(), "run"),
            if failed.len() == 1 {
                "its failed.json"
            } else {
                "their failed.json"
            },
            list.join("; "),
            results.join("results.md").display(),
            crate::text::plural(loaded.failures.len(), "recorded failure"),
            if failed.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// `<results>/grid.json`: the runs of an emitted array, task index → key and configuration.
fn write_grid_listing(specs: &[RunSpec], results: &Path) -> Result<()> {
    let list: Vec<serde_json::Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"task": i, "key": s.key(), "spec": s}))
        .collect();
    write_atomic(
        &results.join("grid.json"),
        serde_json::to_string_pretty(&list)?.as_bytes(),
    )
}
