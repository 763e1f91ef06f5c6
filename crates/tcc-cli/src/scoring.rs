//! Scoring samples of an embedded testbed model: the testbed classifier's
//! predictions and features, against the real data's feature statistics.

use candle_core::{DType, Device, Tensor};
use tcc_eval::Scorer;
use tcc_metrics::FeatureStats;
use tcc_testbed::Testbed;

use crate::error::CliError;

/// A testbed's classifier and the real data's feature statistics.
pub struct TestbedScorer {
    testbed: Testbed,
    classifier: tcc_testbed::Classifier,
    reference: FeatureStats,
}

impl TestbedScorer {
    /// The scorer of the testbed whose model is `model` (`tiny`,
    /// `shapes160`), if it is one. The classifier runs on `device`, in f32
    /// whatever the model's dtype: FD and accuracy then measure the
    /// samples, not the scorer's precision.
    pub fn for_model(model: &str, device: &Device) -> Result<Option<TestbedScorer>, CliError> {
        let Some(testbed) = Testbed::from_name(model) else {
            return Ok(None);
        };
        let fail =
            |e: &dyn std::fmt::Display| CliError::Failure(format!("testbed classifier: {e}"));
        Ok(Some(TestbedScorer {
            testbed,
            classifier: tcc_testbed::Classifier::load_embedded(testbed, device)
                .map_err(|e| fail(&e))?,
            reference: tcc_testbed::reference_stats(testbed).map_err(|e| fail(&e))?,
        }))
    }
}

impl Scorer for TestbedScorer {
    fn score(&self, x: &Tensor) -> Result<(Vec<f64>, Vec<usize>), String> {
        let go = || -> Result<(Vec<f64>, Vec<usize>), Box<dyn std::error::Error>> {
            let images = self.testbed.clamp_to_data_range(x)?;
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
    /// `x` (the model's outputs) generated for `labels`.
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
