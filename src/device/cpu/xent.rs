//! Fused reweighted softmax cross-entropy over logits [N, K].

/// Per-sample loss l_i = −log softmax(logits_i)[label_i] (numerically stable), the weighted mean
/// L = Σ w_i·l_i / Σ w_i (returned), and dlogits = ∂L/∂logits = w_i/Σw · (softmax_i − onehot_i).
/// Weights must be ≥ 0 with a positive sum. Labels must be < k.
pub fn cross_entropy(
    n: usize,
    k: usize,
    logits: &[f32],
    labels: &[u32],
    weights: &[f32],
    losses: &mut [f32],
    dlogits: &mut [f32],
) -> f32 {
    assert_eq!(logits.len(), n * k, "cross_entropy: logits length");
    assert_eq!(dlogits.len(), n * k, "cross_entropy: dlogits length");
    assert_eq!(labels.len(), n, "cross_entropy: labels length");
    assert_eq!(weights.len(), n, "cross_entropy: weights length");
    assert_eq!(losses.len(), n, "cross_entropy: losses length");
    assert!(
        weights.iter().all(|&w| w >= 0.0),
        "cross_entropy: negative sample weight"
    );
    let wsum: f64 = weights.iter().map(|&w| w as f64).sum();
    assert!(
        wsum > 0.0,
        "cross_entropy: sample weights sum to {wsum}, need > 0"
    );
    if k == 0 {
        return 0.0;
    }
    let mut total = 0f64;
    for i in 0..n {
        let row = &logits[i * k..][..k];
        let drow = &mut dlogits[i * k..][..k];
        let label = labels[i] as usize;
        assert!(
            label < k,
            "cross_entropy: label {label} of sample {i} is not below {k} classes"
        );
        // log-sum-exp shifted by the row maximum so no exp overflows.
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let mut sum = 0f64;
        for (d, &v) in drow.iter_mut().zip(row) {
            let e = (v - mx).exp();
            *d = e;
            sum += e as f64;
        }
        let loss = mx as f64 + sum.ln() - row[label] as f64;
        losses[i] = loss as f32;
        total += weights[i] as f64 * loss;
        // dL/dlogits_i = w_i/Σw · (softmax_i − onehot_i).
        let scale = weights[i] as f64 / wsum;
        let (scale32, norm) = (scale as f32, (scale / sum) as f32);
        for d in drow.iter_mut() {
            *d *= norm;
        }
        drow[label] -= scale32;
    }
    (total / wsum) as f32
}
