//! Checkpoints in safetensors: weights (a sparse layer as its active values plus their flat
//! positions, so a checkpoint shrinks with the density), optimiser momentum, batch-norm
//! statistics, in-time statistics, and in the metadata the run's configuration and progress
//! (epoch, step, learning rate, RNG state). Written atomically: a temporary file, fsync, rename.

use crate::nn::param::{ComputePath, ParamKind, Values};
use crate::nn::Model;
use crate::sparse::csr::SparseWeight;
use crate::sparse::topology::Fired;
use crate::train::config::{Progress, TrainConfig};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
const FORMAT: u32 = 1;
/// The metadata key of the checksum over the tensor data (see `checksum`).
const CHECKSUM_KEY: &str = "checksum";
/// What `checksum` values start with: the algorithm, so that another can follow.
const CHECKSUM_ALGO: &str = "fnv1a64-words:";

/// A checksum of a checkpoint's tensors, in name order: for each its name, dtype, shape and data
/// as FNV-1a over 64-bit little-endian words (the last word of a run zero-padded, its length
/// mixed in). Each step is a bijection of the running sum, so any one changed word (a flipped
/// byte, say) always changes the result.
pub fn checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        let words = bytes.chunks(8);
        for w in words {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ bytes.len() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    };
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in sorted {
        mix(name.as_bytes());
        mix(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        mix(&dims);
        mix(data);
    }
    format!("{CHECKSUM_ALGO}{h:016x}")
}

/// The element type a rest checkpoint stores tensor `name` as.
fn dtype_of(name: &str) -> Dtype {
    if name.starts_with("index.") {
        Dtype::U32
    } else if name.starts_with("fired.") {
        Dtype::U64
    } else {
        Dtype::F32
    }
}

/// The file `write_atomic` writes before it renames it to `path`: NAME.tmp beside it.
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    let mut name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} names no file", path.display()))?
        .to_os_string();
    name.push(".tmp");
    Ok(path.with_file_name(name))
}

/// Writes `bytes` to `path` so that a reader sees either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    let write = || -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    };
    let result = write();
    if result.is_err() {
        // Leave nothing half-written behind (the old file, if any, is untouched).
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct ParamMeta {
    name: String,
    shape: Vec<usize>,
    kind: ParamKind,
    /// None for a dense parameter.
    path: Option<ComputePath>,
}

/// What the model takes as input: images of `channels` × `height` × `width` (the training
/// split's), each pixel p (a u8) fed as (p / 255 − mean[c]) / std[c].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    config: TrainConfig,
    progress: Progress,
    params: Vec<ParamMeta>,
    bn_layers: usize,
    /// Absent in checkpoints written before it was recorded.
    #[serde(default)]
    input: Option<InputSpec>,
}

/// What the file states for readers other than rest, beside the run's metadata (see the README,
/// *Checkpoint format*).
const LAYOUT_NOTES: [(&str, &str); 4] = [
    (
        "index_layout",
        "index.NAME holds the active positions of weight NAME as flat row-major indices into its \
         shape (rest.params[].shape); param.NAME holds their values in that order",
    ),
    (
        "bn_layout",
        "bn.I is the I-th batch norm in parameter order: the I-th parameter of kind BnGamma",
    ),
    ("bn_eps", "1e-5"),
    (
        "input_scaling",
        "pixels are u8; the model takes (p / 255 - mean[c]) / std[c] with rest.input's mean \
         and std, images as [N, C, H, W]",
    ),
];

/// What a checkpoint saves of a run, borrowed from whoever trains it (the trainer hands this
/// plain struct over, so the checkpoint never reads the trainer).
pub struct RunState<'a> {
    pub config: &'a TrainConfig,
    pub progress: &'a Progress,
    pub model: &'a Model,
    /// Optimiser momentum, one buffer per parameter (`Sgd::buffers`).
    pub momentum: &'a [Vec<f32>],
    /// In-time statistics per weight layer (`SparseState::fired`); None for a dense run.
    pub fired: Option<&'a [Option<Fired>]>,
    pub input: InputSpec,
}

/// A run's whole state, as saved.
pub struct Checkpoint {
    pub config: TrainConfig,
    pub progress: Progress,
    /// None for checkpoints written before it was recorded.
    pub input: Option<InputSpec>,
    params: Vec<ParamMeta>,
    tensors: HashMap<String, (Vec<usize>, Vec<u8>)>,
    bn_layers: usize,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Takes a copy of a run's state.
    pub fn capture(t: RunState<'_>) -> Self {
        let mut tensors = HashMap::new();
        let mut params = Vec::new();
        for (i, p) in t.model.params.params.iter().enumerate() {
            let path = match &p.values {
                Values::Dense(_) => None,
                Values::Sparse(sw, path) => {
                    tensors.insert(
                        format!("index.{}", p.name),
                        (vec![sw.nnz()], u32_bytes(&sw.positions())),
                    );
                    Some(*path)
                }
            };
            tensors.insert(
                format!("param.{}", p.name),
                (vec![p.len()], f32_bytes(p.data())),
            );
            tensors.insert(
                format!("momentum.{}", p.name),
                (vec![p.len()], f32_bytes(&t.momentum[i])),
            );
            params.push(ParamMeta {
                name: p.name.clone(),
                shape: p.shape.clone(),
                kind: p.kind,
                path,
            });
        }
        for (i, bn) in t.model.bn.iter().enumerate() {
            tensors.insert(
                format!("bn.{i}.running_mean"),
                (vec![bn.mean.len()], f32_bytes(&bn.mean)),
            );
            tensors.insert(
                format!("bn.{i}.running_var"),
                (vec![bn.var.len()], f32_bytes(&bn.var)),
            );
        }
        if let Some(fired) = t.fired {
            for (li, f) in fired.iter().enumerate() {
                if let Some(f) = f {
                    let bytes: Vec<u8> = f.words().iter().flat_map(|w| w.to_le_bytes()).collect();
                    tensors.insert(format!("fired.{li}"), (vec![f.words().len()], bytes));
                }
            }
        }
        Self {
            config: t.config.clone(),
            progress: t.progress.clone(),
            input: Some(t.input),
            params,
            tensors,
            bn_layers: t.model.bn.len(),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = Meta {
            format: FORMAT,
            config: self.config.clone(),
            progress: self.progress.clone(),
            params: self.params.clone(),
            bn_layers: self.bn_layers,
            input: self.input.clone(),
        };
        let mut info: HashMap<String, String> = LAYOUT_NOTES
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect();
        info.insert("rest".to_string(), serde_json::to_string(&meta)?);
        info.insert(CHECKSUM_KEY.to_string(), self.checksum());
        let mut views = Vec::new();
        for (name, (shape, bytes)) in &self.tensors {
            let dtype = dtype_of(name);
            views.push((
                name.clone(),
                TensorView::new(dtype, shape.clone(), bytes).context("checkpoint tensor")?,
            ));
        }
        let bytes = safetensors::serialize(views, Some(info)).context("serialising checkpoint")?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint {} is truncated or not a safetensors file: {e}",
                path.display()
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            anyhow::anyhow!("checkpoint {}: unreadable header: {e}", path.display())
        })?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("rest"))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is a safetensors file but not a rest checkpoint (no 'rest' metadata)",
                    path.display()
                )
            })?;
        let meta: Meta = serde_json::from_str(json)
            .with_context(|| format!("checkpoint {}: unreadable metadata", path.display()))?;
        ensure!(
            meta.format == FORMAT,
            "checkpoint {} has format {}, this rest reads format {}",
            path.display(),
            meta.format,
            FORMAT
        );
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            ensure!(
                view.dtype() == dtype_of(&name),
                "checkpoint {}: tensor {name} is {:?}, a rest checkpoint stores it as {:?}",
                path.display(),
                view.dtype(),
                dtype_of(&name)
            );
            tensors.insert(name, (view.shape().to_vec(), view.data().to_vec()));
        }
        let ck = Self {
            config: meta.config,
            progress: meta.progress,
            input: meta.input,
            params: meta.params,
            tensors,
            bn_layers: meta.bn_layers,
        };
        // Checkpoints written before checksums were recorded have none, and still load.
        if let Some(want) = header.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
            let got = ck.checksum();
            ensure!(
                *want == got,
                "checkpoint {} is damaged: its tensor data does not match the checksum recorded \
                 when it was written ({want}, the data gives {got})",
                path.display()
            );
        }
        Ok(ck)
    }

    /// The checksum of the tensors as they are held (see [`checksum`]).
    fn checksum(&self) -> String {
        checksum(
            self.tensors
                .iter()
                .map(|(n, (shape, b))| (n.as_str(), dtype_of(n), shape.as_slice(), b.as_slice())),
        )
    }

    /// The saved parameters' names and full shapes, in model order.
    pub fn param_shapes(&self) -> Vec<(&str, &[usize])> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), p.shape.as_slice()))
            .collect()
    }

    fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (_, b) = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("checkpoint lacks tensor {name}"))?;
        ensure!(
            b.len() == 4 * len,
            "checkpoint tensor {name} has {} values, expected {len}",
            b.len() / 4
        );
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ensure!(
            v.iter().all(|x| x.is_finite()),
            "checkpoint tensor {name} holds a value that is not finite (NaN or infinity)"
        );
        Ok(v)
    }

    /// Puts the saved weights and statistics into `model` (which must have the same
    /// architecture), keeping each saved sparse topology.
    pub fn restore_model(&self, model: &mut Model) -> Result<()> {
        ensure!(
            model.params.params.len() == self.params.len() && model.bn.len() == self.bn_layers,
            "checkpoint is for another model ({} parameters, this model has {})",
            self.params.len(),
            model.params.params.len()
        );
        for (p, m) in model.params.params.iter_mut().zip(&self.params) {
            ensure!(
                p.name == m.name && p.shape == m.shape,
                "checkpoint is for another model: parameter {} {:?} where this model has {} {:?}",
                m.name,
                m.shape,
                p.name,
                p.shape
            );
            p.values = match m.path {
                None => Values::Dense(self.f32s(&format!("param.{}", m.name), p.numel())?),
                Some(path) => {
                    let (shape, b) =
                        self.tensors
                            .get(&format!("index.{}", m.name))
                            .ok_or_else(|| {
                                anyhow::anyhow!("checkpoint lacks the index of {}", m.name)
                            })?;
                    let nnz = shape.first().copied().unwrap_or(0);
                    ensure!(
                        b.len() == 4 * nnz,
                        "checkpoint index of {} is damaged",
                        m.name
                    );
                    let pos: Vec<u32> = b
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let numel = p.numel() as u32;
                    if pos.windows(2).any(|w| w[0] >= w[1])
                        || pos.last().is_some_and(|&l| l >= numel)
                    {
                        bail!(
                            "checkpoint index of {} is not sorted or out of range",
                            m.name
                        );
                    }
                    let (rows, cols) = p.matrix_dims();
                    Values::Sparse(
                        SparseWeight::from_positions(
                            rows,
                            cols,
                            &pos,
                            self.f32s(&format!("param.{}", m.name), nnz)?,
                        ),
                        path,
                    )
                }
            };
        }
        for (i, bn) in model.bn.iter_mut().enumerate() {
            bn.mean = self.f32s(&format!("bn.{i}.running_mean"), bn.mean.len())?;
            bn.var = self.f32s(&format!("bn.{i}.running_var"), bn.var.len())?;
            ensure!(
                bn.var.iter().all(|&v| v >= 0.0),
                "checkpoint tensor bn.{i}.running_var holds a negative variance"
            );
        }
        Ok(())
    }

    /// Restores a run's model, optimiser momentum and in-time statistics (`fired`, sparse runs);
    /// the caller takes `progress` (and its learning rate) from the checkpoint itself.
    pub fn restore_run(
        &self,
        model: &mut Model,
        momentum: &mut [Vec<f32>],
        fired: Option<&mut [Option<Fired>]>,
    ) -> Result<()> {
        self.restore_model(model)?;
        for (i, p) in model.params.params.iter().enumerate() {
            momentum[i] = self.f32s(&format!("momentum.{}", p.name), p.len())?;
        }
        if let Some(fired) = fired {
            for (li, id) in model.params.weight_ids().into_iter().enumerate() {
                let p = model.params.get(id);
                fired[li] = match p.sparse() {
                    None => None,
                    Some(sw) => {
                        let (_, b) = self.tensors.get(&format!("fired.{li}")).ok_or_else(|| {
                            anyhow::anyhow!("checkpoint lacks in-time statistics of {}", p.name)
                        })?;
                        let words = b
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect();
                        Some(Fired::from_words(sw.rows, sw.cols, words)?)
                    }
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stated_batch_norm_epsilon_is_the_one_used() {
        let (_, eps) = LAYOUT_NOTES.iter().find(|n| n.0 == "bn_eps").unwrap();
        assert_eq!(eps.parse::<f32>().unwrap(), crate::nn::ops::BN_EPS);
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("rest-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The destination is a directory: the rename fails after the temporary file is written.
        let target = dir.join("out");
        std::fs::create_dir_all(&target).unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")]);
        // A name without an extension gets NAME.tmp while it is written, and the file lands.
        let file = dir.join("plain");
        write_atomic(&file, b"abc").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
