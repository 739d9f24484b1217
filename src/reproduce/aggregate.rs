//! Results of finished runs → mean ± std over seeds per (method, ratio, density): results.md and
//! results.csv.

use super::grid::METHODS;
use super::runner::{Failure, FAILED, SUMMARY};
use crate::text::plural;
use crate::train::{Summary, TrainConfig};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One finished run, reduced to what the tables need.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub key: String,
    /// The run's folder.
    pub dir: PathBuf,
    /// Its whole training configuration: runs averaged into one row must agree on it, seed aside.
    pub config: TrainConfig,
    pub dataset: String,
    pub method: String,
    pub ratio: f64,
    /// The asked-for density (1 for dense runs).
    pub density: f64,
    pub epochs: usize,
    pub seed: u64,
    /// Test accuracies in percent (see `metrics`): over the whole test split (the unbiased
    /// accuracy where that split is unbiased), its aligned and conflicting samples, the lower of
    /// those two, and the label × bias worst group where its groups are large enough.
    pub accuracy: f64,
    pub aligned: f64,
    pub conflicting: f64,
    pub worst_group: f64,
    pub label_bias_worst: Option<f64>,
    /// The metric definitions of its summary (`metrics::METRICS_VERSION`).
    pub metrics_version: u32,
    pub inference_flops: f64,
    pub train_flops: f64,
    pub wall_seconds: f64,
}

impl RunResult {
    pub fn from_summary(key: &str, dir: &Path, s: &Summary) -> Self {
        Self {
            key: key.into(),
            dir: dir.to_path_buf(),
            config: s.config.clone(),
            dataset: s.config.dataset.clone(),
            method: s.config.method().into(),
            ratio: s.config.ratio,
            density: s.config.sparse.as_ref().map_or(1.0, |c| c.density),
            epochs: s.config.epochs,
            seed: s.config.seed,
            accuracy: 100.0 * s.test.accuracy,
            aligned: 100.0 * s.test.aligned_accuracy,
            conflicting: 100.0 * s.test.conflicting_accuracy,
            worst_group: 100.0 * s.test.worst_group_accuracy,
            label_bias_worst: s.test.label_bias_worst_accuracy.map(|x| 100.0 * x),
            metrics_version: s.test.metrics_version,
            inference_flops: s.inference_flops_per_image,
            train_flops: s.train_flops_total,
            wall_seconds: s.wall_seconds,
        }
    }
}

/// The runs folders of a results directory: `DIR/runs` when it exists, else DIR itself.
fn runs_folder(dir: &Path) -> PathBuf {
    let r = dir.join("runs");
    if r.is_dir() {
        r
    } else {
        dir.to_path_buf()
    }
}

/// What `load` found under the results folders.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Finished runs, sorted by key.
    pub runs: Vec<RunResult>,
    /// Recorded failures of runs that did not finish, sorted by key.
    pub failures: Vec<Failure>,
    /// Files that could not be used, each with the reason (reported, not fatal).
    pub skipped: Vec<(PathBuf, String)>,
}

/// A summary.json that can be aggregated.
fn read_summary(path: &Path) -> Result<Summary> {
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("not JSON")?;
    // serde_json writes a NaN or infinite loss as null. Such a run diverged: its accuracies
    // (of a model predicting garbage) are not results, so it is skipped rather than averaged.
    for split in ["valid", "test"] {
        if v.get(split)
            .and_then(|m| m.get("loss"))
            .is_some_and(|l| l.is_null())
        {
            bail!("its {split} loss is not finite (null): the run diverged");
        }
    }
    serde_json::from_value(v).context("not a run summary")
}

/// Every finished run and every recorded failure under the given results folders (their union;
/// a key found twice is taken from the first folder that has it readable). A file that cannot
/// be used is listed in `skipped` and does not stop the others; only an unreadable folder is an
/// error.
pub fn load(dirs: &[PathBuf]) -> Result<Loaded> {
    let mut done: BTreeMap<String, RunResult> = BTreeMap::new();
    let mut failed: BTreeMap<String, Failure> = BTreeMap::new();
    let mut skipped = Vec::new();
    for dir in dirs {
        let folder = runs_folder(dir);
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot read results folder {}", folder.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        paths.sort();
        for p in paths {
            let key = p.file_name().unwrap().to_string_lossy().to_string();
            let summary = p.join(SUMMARY);
            let failure = p.join(FAILED);
            if done.contains_key(&key) {
                continue;
            }
            if summary.is_file() {
                match read_summary(&summary) {
                    Ok(s) => {
                        failed.remove(&key);
                        done.insert(key.clone(), RunResult::from_summary(&key, &p, &s));
                    }
                    Err(e) => skipped.push((summary, format!("{e:#}"))),
                }
            } else if failure.is_file() {
                let f = std::fs::read_to_string(&failure)
                    .context("cannot read it")
                    .and_then(|t| {
                        serde_json::from_str::<Failure>(&t).context("not a failure record")
                    });
                match f {
                    Ok(f) => {
                        failed.entry(key).or_insert(f);
                    }
                    Err(e) => skipped.push((failure, format!("{e:#}"))),
                }
            }
        }
    }
    Ok(Loaded {
        runs: done.into_values().collect(),
        failures: failed.into_values().collect(),
        skipped,
    })
}

/// Mean and sample standard deviation (n − 1; 0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

/// One row of the tables: the runs of one (dataset, ratio, method, density, epochs) over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub dataset: String,
    pub method: String,
    pub ratio: f64,
    pub density: f64,
    pub epochs: usize,
    pub seeds: Vec<u64>,
    /// Whole test split (named "unbiased" in the tables where that split is unbiased).
    pub accuracy: (f64, f64),
    pub aligned: (f64, f64),
    pub conflicting: (f64, f64),
    pub worst_group: (f64, f64),
    /// None unless every run of the row has it.
    pub label_bias_worst: Option<(f64, f64)>,
    /// The oldest metric definitions among the row's runs.
    pub metrics_version: u32,
    pub inference_flops: f64,
    pub train_flops: f64,
    pub wall_seconds: f64,
}

fn method_rank(m: &str) -> usize {
    METHODS
        .iter()
        .position(|x| *x == m)
        .unwrap_or(METHODS.len())
}

/// What names a row of the tables: dataset, method, ratio, density, epochs.
pub type RowKey = (String, String, f64, f64, usize);

/// The row a run with this configuration is averaged into.
pub fn row_key(c: &TrainConfig) -> RowKey {
    (
        c.dataset.clone(),
        c.method().into(),
        c.ratio,
        c.sparse.as_ref().map_or(1.0, |s| s.density),
        c.epochs,
    )
}

/// A row's name in messages: "rest, ratio 1 %, density 0.05, 3 epochs".
pub fn describe_row((dataset, method, ratio, density, epochs): &RowKey) -> String {
    format!(
        "{dataset} {method}, ratio {ratio} %, density {density}, {}",
        plural(*epochs, "epoch")
    )
}

/// Where two training configurations differ, seed aside, field by field as their JSON names them:
/// `model.width: 8 vs 16`. Empty when they are the same run but for the seed. Every field of
/// `TrainConfig` counts, including ones added later.
pub fn config_differences(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let without_seed = |c: &TrainConfig| {
        // Through the text, as summary.json has it: `to_value` would widen an f32 lr of 0.01 to
        // 0.009999999776482582.
        let text = serde_json::to_string(c).expect("a TrainConfig always serialises");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("it reads back");
        if let Some(o) = v.as_object_mut() {
            o.remove("seed");
        }
        v
    };
    let mut out = Vec::new();
    json_differences("", Some(&without_seed(a)), Some(&without_seed(b)), &mut out);
    out
}

fn json_differences(
    path: &str,
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if let (Some(Value::Object(x)), Some(Value::Object(y))) = (a, b) {
        let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
        names.sort();
        names.dedup();
        for n in names {
            let p = if path.is_empty() {
                n.clone()
            } else {
                format!("{path}.{n}")
            };
            json_differences(&p, x.get(n), y.get(n), out);
        }
    } else if a != b {
        let show = |v: Option<&Value>| v.map_or("not set".to_string(), |v| v.to_string());
        out.push(format!("{path}: {} vs {}", show(a), show(b)));
    }
}

/// Runs averaged into one row must be the same training configuration over different seeds: a
/// row that mixes, say, two widths (folders of two grids collected together), or that holds one
/// seed twice (the same run in two folders under two names), would be a wrong mean. An error
/// names two such runs and what differs.
pub fn check_rows(runs: &[RunResult]) -> Result<()> {
    for (i, r) in runs.iter().enumerate() {
        let row = row_key(&r.config);
        let Some(first) = runs[..i].iter().find(|q| row_key(&q.config) == row) else {
            continue;
        };
        let diffs = config_differences(&first.config, &r.config);
        if !diffs.is_empty() {
            bail!(
                "runs {} and {} would be averaged into one row of the tables ({}), but they were \
                 trained with different settings: {}. Collect the folders of one grid at a time \
                 (a grid with other settings needs its own --results folder)",
                first.dir.display(),
                r.dir.display(),
                describe_row(&row),
                diffs.join(", ")
            );
        }
        if let Some(twin) = runs[..i]
            .iter()
            .find(|q| row_key(&q.config) == row && q.config.seed == r.config.seed)
        {
            bail!(
                "runs {} and {} are the same run ({}, seed {}, same settings) found twice; \
                 averaging both would count that seed twice. Keep one of the two folders",
                twin.dir.display(),
                r.dir.display(),
                describe_row(&row),
                r.config.seed
            );
        }
    }
    Ok(())
}

/// Groups runs over seeds; rows sorted by dataset, ratio, method (table order), density. An error
/// when runs of one row differ in more than the seed (see `check_rows`).
pub fn aggregate(runs: &[RunResult]) -> Result<Vec<Row>> {
    check_rows(runs)?;
    let mut groups: Vec<Vec<&RunResult>> = Vec::new();
    for r in runs {
        match groups
            .iter_mut()
            .find(|g| row_key(&g[0].config) == row_key(&r.config))
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|g| {
            let col = |f: fn(&RunResult) -> f64| g.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let mut seeds: Vec<u64> = g.iter().map(|r| r.seed).collect();
            seeds.sort_unstable();
            Row {
                dataset: g[0].dataset.clone(),
                method: g[0].method.clone(),
                ratio: g[0].ratio,
                density: g[0].density,
                epochs: g[0].epochs,
                seeds,
                accuracy: mean_std(&col(|r| r.accuracy)),
                aligned: mean_std(&col(|r| r.aligned)),
                conflicting: mean_std(&col(|r| r.conflicting)),
                worst_group: mean_std(&col(|r| r.worst_group)),
                label_bias_worst: g
                    .iter()
                    .map(|r| r.label_bias_worst)
                    .collect::<Option<Vec<f64>>>()
                    .map(|v| mean_std(&v)),
                metrics_version: g.iter().map(|r| r.metrics_version).min().unwrap_or(0),
                inference_flops: mean_std(&col(|r| r.inference_flops)).0,
                train_flops: mean_std(&col(|r| r.train_flops)).0,
                wall_seconds: mean_std(&col(|r| r.wall_seconds)).0,
            }
        })
        .collect();
    // Ratio first, then method, then density (descending, dense first).
    rows.sort_by(|a, b| {
        a.dataset
            .cmp(&b.dataset)
            .then(a.ratio.total_cmp(&b.ratio))
            .then(a.epochs.cmp(&b.epochs))
            .then(method_rank(&a.method).cmp(&method_rank(&b.method)))
            .then(b.density.total_cmp(&a.density))
    });
    Ok(rows)
}

fn pm((m, s): (f64, f64)) -> String {
    format!("{m:.2} ± {s:.2}")
}

/// `accuracy` is over the whole test split (the unbiased accuracy where that split is unbiased);
/// `label_bias_worst` is empty where its groups are too small; `metrics_version` as in `metrics`.
pub const CSV_HEADER: &str = "dataset,method,ratio,density,epochs,seeds,accuracy_mean,accuracy_std,aligned_mean,aligned_std,conflicting_mean,conflicting_std,worst_group_mean,worst_group_std,label_bias_worst_mean,label_bias_worst_std,inference_flops_per_image,train_flops,wall_seconds,metrics_version";

pub fn render_csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let seeds: Vec<String> = r.seeds.iter().map(|x| x.to_string()).collect();
        let (lb_mean, lb_std) = r
            .label_bias_worst
            .map_or((String::new(), String::new()), |(m, s)| {
                (format!("{m:.4}"), format!("{s:.4}"))
            });
        s += &format!(
            "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{lb_mean},{lb_std},{:.6e},{:.6e},{:.2},{}\n",
            r.dataset,
            r.method,
            r.ratio,
            r.density,
            r.epochs,
            seeds.join(" "),
            r.accuracy.0,
            r.accuracy.1,
            r.aligned.0,
            r.aligned.1,
            r.conflicting.0,
            r.conflicting.1,
            r.worst_group.0,
            r.worst_group.1,
            r.inference_flops,
            r.train_flops,
            r.wall_seconds,
            r.metrics_version
        );
    }
    s
}

pub fn render_markdown(rows: &[Row], failures: &[Failure], plots: &[String]) -> String {
    let mut s = String::from(
        "# Results\n\nTest accuracy (%) at the best validation epoch, mean ± sample std over seeds \
         (± 0.00 for a single seed). *unbiased*: accuracy over the whole test split, where that \
         split is unbiased (Colored MNIST, Corrupted CIFAR-10; elsewhere *accuracy*); *worst \
         group*: the lower of the aligned and conflicting accuracies, as the reference; *label × \
         bias worst*: the lowest (label, bias attribute) group, n/a unless every such group has \
         at least 20 test samples. Best epoch: highest validation accuracy, or highest validation \
         worst group when reweighting. Inference FLOPs per image at the final topology; training \
         FLOPs and wall time are means per run.\n",
    );
    let mut current: Option<(String, f64, usize)> = None;
    for r in rows {
        let head = (r.dataset.clone(), r.ratio, r.epochs);
        if current.as_ref() != Some(&head) {
            let accuracy = if crate::data::registry::test_split_is_unbiased(&r.dataset) {
                "unbiased"
            } else {
                "accuracy"
            };
            s += &format!(
                "\n## {}, {} % bias-conflicting, {}\n\n\
                 | method | density | seeds | {accuracy} | aligned | conflicting | worst group | label × bias worst | inference MFLOPs/img | train FLOPs | wall s |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|\n",
                r.dataset,
                r.ratio,
                plural(r.epochs, "epoch")
            );
            current = Some(head);
        }
        let old = if r.metrics_version < crate::metrics::METRICS_VERSION {
            " ¹"
        } else {
            ""
        };
        s += &format!(
            "| {}{old} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3e} | {:.1} |\n",
            r.method,
            r.density,
            r.seeds.len(),
            pm(r.accuracy),
            pm(r.aligned),
            pm(r.conflicting),
            pm(r.worst_group),
            r.label_bias_worst.map_or("n/a".into(), pm),
            r.inference_flops / 1e6,
            r.train_flops,
            r.wall_seconds
        );
    }
    if rows.is_empty() {
        s += "\nNo finished runs yet.\n";
    }
    if rows
        .iter()
        .any(|r| r.metrics_version < crate::metrics::METRICS_VERSION)
    {
        s += "\n¹ Runs written before the metric definitions above (metrics version 1): their \
              best epoch was selected on the lowest (label, bias attribute) validation group \
              when reweighting; their worst group is recomputed from aligned and conflicting.\n";
    }
    if !plots.is_empty() {
        s += "\n## Plots\n\n";
        for p in plots {
            s += &format!("![{p}]({p})\n");
        }
    }
    if !failures.is_empty() {
        s += &format!(
            "\n## Failed runs ({})\n\nEach run's folder has failed.json (exit code or signal, command, end of its standard error) and stderr.log; run the grid again to retry.\n\n",
            failures.len()
        );
        for f in failures {
            s += &format!("- `{}`: {}", f.key, f.how());
            let last = f.stderr_tail.trim().lines().last().unwrap_or("");
            if !last.is_empty() {
                s += &format!(" — {}", last.replace('|', "\\|"));
            }
            s.push('\n');
        }
    }
    s
}
