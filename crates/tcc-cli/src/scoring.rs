//! Scoring samples of the embedded testbed model: the testbed classifier's
//! predictions and features, against the real data's feature statistics.

use candle_core::{DType, Device, Tensor};
use tcc_eval::Scorer;
use tcc_metrics::FeatureStats;

use crate::common::CliError;

/// The testbed classifier and the real data's feature statistics.
pub struct TestbedScorer {
    classifier: tcc_testbed::Classifier,
    reference: FeatureStats,
}

impl TestbedScorer {
    /// The classifier on `device`, in f32 whatever the model's dtype: FD and
    /// accuracy then measure the samples, not the scorer's precision.
    pub fn new(device: &Device) -> Result<TestbedScorer, CliError> {
        let fail =
            |e: &dyn std::fmt::Display| CliError::Failure(format!("testbed classifier: {e}"));
        Ok(TestbedScorer {
            classifier: tcc_testbed::Classifier::load_embedded(device).map_err(|e| fail(&e))?,
            reference: tcc_testbed::reference_stats().map_err(|e| fail(&e))?,
        })
    }
}

impl Scorer for TestbedScorer {
    fn score(&self, x: &Tensor) -> Result<(Vec<f64>, Vec<usize>), String> {
        let go = || -> Result<(Vec<f64>, Vec<usize>), Box<dyn std::error::Error>> {
            let images = x.clamp(-1f32, 1f32)?;
            let (mut features, mut predicted) = (Vec::new(), Vec::new());
            let n = images.dim(0)?;
            let mut start = 0;
            while start < n {
                let len = 256.min(n - start);
                let chunk = images.narrow(0, start, len)?;
                let f = self.classifier.features(&chunk)?.to_dtype(DType::F64)?;
                features.extend(f.flatten_all()?.to_vec1::<f64>()?);
                predicted.extend(self.classifier.predict(&chunk)?);
                start += len;
            }
            Ok((features, predicted))
        };
        go().map_err(|e| e.to_string())
    }

    fn reference(&self) -> &FeatureStats {
        &self.reference
    }
}

impl TestbedScorer {
    /// Fréchet distance to real data and class accuracy of final samples
    /// `x` (`[n, 3, 32, 32]`) generated for `labels`.
    pub fn fd_and_accuracy(&self, x: &Tensor, labels: &[u32]) -> Result<(f64, f64), CliError> {
        let (features, predicted) = self.score(x).map_err(CliError::Failure)?;
        let mut stats = FeatureStats::new(self.reference.dim());
        let fail = |e: tcc_metrics::MetricsError| CliError::Failure(e.to_string());
        stats.add_batch(&features).map_err(fail)?;
        let fd = stats.frechet_distance(&self.reference).map_err(fail)?;
        let correct = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == **l as usize)
            .count();
        Ok((fd, correct as f64 / labels.len().max(1) as f64))
    }
}
