//! Test helpers for statistical assertions (compiled only for tests).

/// Pearson's chi-square statistic of `counts` against a uniform expectation.
pub fn chi_square_uniform(counts: &[u32]) -> f64 {
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    let expected = vec![total / counts.len() as f64; counts.len()];
    chi_square(counts, &expected)
}

/// Pearson's chi-square statistic of `counts` against expected proportions `weights`.
pub fn chi_square_weighted(counts: &[u32], weights: &[u32]) -> f64 {
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    let wsum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let expected: Vec<f64> = weights.iter().map(|&w| total * f64::from(w) / wsum).collect();
    chi_square(counts, &expected)
}

fn chi_square(counts: &[u32], expected: &[f64]) -> f64 {
    counts.iter().zip(expected).map(|(&c, &e)| (f64::from(c) - e).powi(2) / e).sum()
}
