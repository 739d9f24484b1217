//! Dense training of the CMNIST CNN on the built-in synthetic biased set learns.

use rest::data::synthetic::{generate, SyntheticConfig};
use rest::nn::{Arch, ModelConfig};
use rest::train::{Reweight, ReweightMode, RunOptions, TrainConfig, Trainer};

pub fn dense_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        dataset: "synthetic".into(),
        ratio: 1.0,
        model: ModelConfig {
            arch: Arch::Cnn,
            width: 16,
            in_channels: 3,
            num_classes: 10,
        },
        epochs,
        batch_size: 64,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        sparse: None,
        reweight: Reweight::Off,
        upweight: 80.0,
        reweight_mode: ReweightMode::Sampler,
        jtt_epochs: 1,
        augment: rest::data::loader::Augment::None,
        seed: 41,
        synthetic_train: None,
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rest-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn dense_cnn_learns_the_aligned_group() {
    let splits = generate(&SyntheticConfig {
        train: 2000,
        valid: 500,
        test: 500,
        conflict_ratio: 0.01,
        seed: 7,
    })
    .unwrap();
    let mut t = Trainer::new(dense_config(3), &splits).unwrap();
    let out = tmp("learns");
    let s = t
        .train(&RunOptions {
            out: out.clone(),
            quiet: true,
            stop_after_epochs: None,
        })
        .unwrap()
        .unwrap();
    assert!(
        s.test.aligned_accuracy > 0.9,
        "aligned test accuracy {}",
        s.test.aligned_accuracy
    );
    // The metrics file has one JSON line per epoch.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    let _ = std::fs::remove_dir_all(out);
}
