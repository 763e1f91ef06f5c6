//! Class accuracy of predictions against labels.

use serde::{Deserialize, Serialize};

use crate::error::{check_len, MetricsError, Result};

/// Correct / total counts per label; mergeable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accuracy {
    correct: Vec<u64>,
    total: Vec<u64>,
}

impl Accuracy {
    /// Empty counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one prediction for a sample whose true class is `label`.
    pub fn add(&mut self, predicted: usize, label: usize) {
        if self.total.len() <= label {
            self.total.resize(label + 1, 0);
            self.correct.resize(label + 1, 0);
        }
        self.total[label] += 1;
        if predicted == label {
            self.correct[label] += 1;
        }
    }

    /// Records paired predictions and labels.
    pub fn add_batch(&mut self, predicted: &[usize], labels: &[usize]) -> Result<()> {
        check_len(
            "accuracy: predictions vs labels",
            labels.len(),
            predicted.len(),
        )?;
        for (&p, &l) in predicted.iter().zip(labels) {
            self.add(p, l);
        }
        Ok(())
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: &Accuracy) {
        let n = self.total.len().max(other.total.len());
        self.total.resize(n, 0);
        self.correct.resize(n, 0);
        for (i, (&c, &t)) in other.correct.iter().zip(&other.total).enumerate() {
            self.correct[i] += c;
            self.total[i] += t;
        }
    }

    /// Number of predictions recorded.
    pub fn n(&self) -> u64 {
        self.total.iter().sum()
    }

    /// Fraction correct over all samples (NaN when empty).
    pub fn accuracy(&self) -> f64 {
        self.correct.iter().sum::<u64>() as f64 / self.n() as f64
    }

    /// Fraction correct among samples of class `label` (NaN when there are none).
    pub fn class_accuracy(&self, label: usize) -> f64 {
        match (self.correct.get(label), self.total.get(label)) {
            (Some(&c), Some(&t)) if t > 0 => c as f64 / t as f64,
            _ => f64::NAN,
        }
    }
}

/// Index of the largest of each row of `logits` (row-major, `num_classes`
/// columns); ties go to the lower index. NaN logits are an error.
pub fn argmax_rows<T: Copy + Into<f64>>(logits: &[T], num_classes: usize) -> Result<Vec<usize>> {
    if num_classes == 0 || !logits.len().is_multiple_of(num_classes) {
        return Err(MetricsError::Invalid(format!(
            "argmax: {} logits are not rows of {num_classes} classes",
            logits.len()
        )));
    }
    logits
        .chunks_exact(num_classes)
        .map(|row| {
            let mut best = (0, f64::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                let v: f64 = v.into();
                if v.is_nan() {
                    return Err(MetricsError::NonFinite {
                        what: "argmax: logits",
                    });
                }
                if v > best.1 || i == 0 {
                    best = (i, v);
                }
            }
            Ok(best.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_merges() {
        let mut a = Accuracy::new();
        a.add_batch(&[0, 1, 2, 2], &[0, 1, 1, 2]).unwrap();
        assert_eq!(a.n(), 4);
        assert_eq!(a.accuracy(), 0.75);
        assert_eq!(a.class_accuracy(1), 0.5);
        assert!(a.class_accuracy(7).is_nan());
        let mut b = Accuracy::new();
        b.add(5, 5);
        b.merge(&a);
        assert_eq!(b.n(), 5);
        assert_eq!(b.accuracy(), 0.8);
        assert!(a.add_batch(&[0], &[]).is_err());
    }

    #[test]
    fn argmax() {
        let rows = argmax_rows(&[0.1f32, 0.9, 0.0, 2.0, 2.0, -1.0], 3).unwrap();
        assert_eq!(rows, vec![1, 0]);
        assert!(argmax_rows(&[0.1f32, f32::NAN], 2).is_err());
        assert!(argmax_rows(&[0.1f32; 5], 2).is_err());
    }
}
