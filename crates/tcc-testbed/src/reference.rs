//! Feature statistics of real held-out images, embedded in the binary.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};
use tcc_metrics::{FeatureStats, FEATURE_STATS_FORMAT};

use crate::error::{Result, TestbedError};
use crate::Testbed;

/// First index of `Dataset::new(HELDOUT_SEED)` used for the reference
/// statistics; indices below it are the classifier's accuracy set.
pub const REFERENCE_START: u64 = 10_000;

/// [`FeatureStats`] of `testbed`'s [`Classifier`](crate::Classifier)
/// features over real held-out inputs (see the `reference_stats` example
/// for which), embedded in the binary (written by `examples/reference_stats.rs`).
pub fn reference_stats(testbed: Testbed) -> Result<FeatureStats> {
    Ok(reference_stats_with_metadata(testbed)?.0)
}

/// The reference statistics and their metadata (`n`, `seed`, `start`,
/// `classifier_sha256`, ...).
pub fn reference_stats_with_metadata(
    testbed: Testbed,
) -> Result<(FeatureStats, BTreeMap<String, String>)> {
    stats_from_bytes(
        testbed.reference_bytes(),
        &format!("<embedded>/{}", testbed.reference_asset()),
    )
}

/// Parses the bytes of a file written by [`FeatureStats::save`]; `name`
/// labels errors.
pub fn stats_from_bytes(
    bytes: &[u8],
    name: &str,
) -> Result<(FeatureStats, BTreeMap<String, String>)> {
    let err = |message: String| TestbedError::File {
        path: name.into(),
        message,
    };
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let format = meta.remove("format");
    if format.as_deref() != Some(FEATURE_STATS_FORMAT) {
        return Err(err(format!(
            "format is {format:?}, expected {FEATURE_STATS_FORMAT:?}"
        )));
    }
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let get = |key: &str, dtype: Dtype, shape_ok: &dyn Fn(&[usize]) -> bool| {
        let t = st
            .tensor(key)
            .map_err(|_| err(format!("missing tensor `{key}`")))?;
        if t.dtype() != dtype || !shape_ok(t.shape()) {
            return Err(err(format!(
                "tensor `{key}` is {:?} {:?}, expected {dtype:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data().to_vec())
    };
    let n = get("n", Dtype::U64, &|s| s.is_empty())?;
    let sum = f64s(&get("sum", Dtype::F64, &|s| s.len() == 1)?);
    let d = sum.len();
    let outer = f64s(&get("sum_outer", Dtype::F64, &|s| s == [d, d])?);
    let n = u64::from_le_bytes(n.try_into().map_err(|_| err("bad `n`".into()))?);
    let stats = FeatureStats::from_parts(n, sum, outer).map_err(|e| err(e.to_string()))?;
    Ok((stats, meta))
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}
