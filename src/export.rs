//! `rest export --format torch`: a checkpoint as a dense PyTorch state dict in safetensors, under
//! the reference models' parameter names and shapes, so that `load_state_dict` takes it as it is
//! (the README gives the matching PyTorch CNN; ResNet-18 is torchvision's `resnet18`).

use crate::checkpoint::{write_atomic, Checkpoint};
use crate::nn::param::ParamKind;
use crate::nn::{Arch, Model};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A dense state dict for PyTorch's `load_state_dict` (safetensors, float32).
    Torch,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  rest export --checkpoint runs/DIR/best.safetensors --format torch model.safetensors\n\nIn Python:  from safetensors.torch import load_file; model.load_state_dict(load_file(\"model.safetensors\"))"
)]
pub struct ExportArgs {
    /// A checkpoint written by `rest train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::Torch)]
    pub format: ExportFormat,
    /// The file to write (safetensors; written atomically).
    #[arg(value_name = "OUT", required_unless_present = "out")]
    pub out_positional: Option<PathBuf>,
    /// The file to write (the same as the positional OUT).
    #[arg(long, value_name = "OUT", conflicts_with = "out_positional")]
    pub out: Option<PathBuf>,
}

/// One tensor of the state dict: name, dtype, shape, little-endian bytes.
pub type StateTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The model's dense state dict in PyTorch's names and order: every parameter (sparse weights
/// rebuilt dense, zeros where inactive), and per batch norm its running statistics and
/// `num_batches_tracked` (the steps trained, an int64 scalar as PyTorch keeps it).
pub fn state_dict(model: &Model, steps: u64) -> Result<Vec<StateTensor>> {
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut out = Vec::new();
    let mut bn = model.bn.iter();
    for p in &model.params.params {
        out.push((
            p.name.clone(),
            Dtype::F32,
            p.shape.clone(),
            f32s(&p.to_dense()),
        ));
        // A batch norm's statistics follow its bias, as in PyTorch's state dict.
        if p.kind == ParamKind::BnBeta {
            let prefix = p.name.strip_suffix(".bias").unwrap_or(&p.name);
            let stats = bn
                .next()
                .context("the model has more batch-norm parameters than statistics")?;
            let c = stats.mean.len();
            out.push((
                format!("{prefix}.running_mean"),
                Dtype::F32,
                vec![c],
                f32s(&stats.mean),
            ));
            out.push((
                format!("{prefix}.running_var"),
                Dtype::F32,
                vec![c],
                f32s(&stats.var),
            ));
            out.push((
                format!("{prefix}.num_batches_tracked"),
                Dtype::I64,
                vec![],
                (steps as i64).to_le_bytes().to_vec(),
            ));
        }
    }
    ensure!(
        bn.next().is_none(),
        "the model has batch-norm statistics without parameters"
    );
    Ok(out)
}

/// The metadata written with the state dict: what PyTorch needs beside the weights.
fn metadata(ck: &Checkpoint, model: &Model) -> Result<HashMap<String, String>> {
    let spec = crate::predict::input_of(ck, model.config.in_channels);
    let (h, w) = if spec.height > 0 {
        (spec.height, spec.width)
    } else {
        (32, 32)
    };
    let layers: Vec<serde_json::Value> = model
        .weight_geometry(h, w)
        .into_iter()
        .map(|g| {
            serde_json::json!({
                "name": g.name, "kernel": g.k, "stride": g.stride, "padding": g.pad,
            })
        })
        .collect();
    let arch = match model.config.arch {
        Arch::Cnn => {
            "cnn: 3 × (conv k4 s2 p1 no bias, BatchNorm2d, ReLU), global average pool, Linear"
        }
        Arch::Resnet18 => {
            "resnet18: torchvision's ResNet-18 (BasicBlock [2, 2, 2, 2]) at this width"
        }
    };
    let mut m = HashMap::new();
    m.insert("format".into(), "rest-torch-state-dict 1".into());
    m.insert("arch".into(), arch.into());
    m.insert("width".into(), model.config.width.to_string());
    m.insert("in_channels".into(), model.config.in_channels.to_string());
    m.insert("num_classes".into(), model.config.num_classes.to_string());
    m.insert("layers".into(), serde_json::to_string(&layers)?);
    m.insert("bn_eps".into(), crate::nn::ops::BN_EPS.to_string());
    m.insert(
        "input_size".into(),
        if spec.height > 0 {
            format!("{}x{}", spec.height, spec.width)
        } else {
            "unknown (checkpoint predates it)".into()
        },
    );
    m.insert(
        "input_scaling".into(),
        "x[n, c] = (pixel / 255 - mean[c]) / std[c], pixels u8, images [N, C, H, W]".into(),
    );
    m.insert("mean".into(), serde_json::to_string(&spec.mean)?);
    m.insert("std".into(), serde_json::to_string(&spec.std)?);
    m.insert("dataset".into(), ck.config.dataset.clone());
    Ok(m)
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let out = match (&args.out, &args.out_positional) {
        (Some(o), _) | (None, Some(o)) => o,
        (None, None) => bail!("name the file to write: rest export ... OUT.safetensors"),
    };
    let spin = crate::progress::spinner(&format!("exporting {}", args.checkpoint.display()));
    let ck = Checkpoint::load(&args.checkpoint)?;
    let model = crate::predict::model_of(&ck)
        .with_context(|| format!("{}: cannot build its model", args.checkpoint.display()))?;
    let tensors = state_dict(&model, ck.progress.step)?;
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("building the state dict")?;
    let bytes = safetensors::serialize(views, Some(metadata(&ck, &model)?))
        .context("serialising the state dict")?;
    write_atomic(out, &bytes)?;
    spin.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB): model.load_state_dict(safetensors.torch.load_file(...))",
        out.display(),
        tensors.len(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}
