//! Run-time cache policies: the decision to compute or reuse is taken per
//! step while sampling, from the data, instead of being fixed in the plan.

use serde::{Deserialize, Serialize};

spelled_enum! {
    /// A data-dependent cache policy.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum DynamicPolicy {
        /// First-block cache (cache-dit's FBCache / DBCache with one front
        /// block, diffusers' `FirstBlockCache`): block 0 always runs; if the
        /// relative change of its residual since the last fully computed
        /// step is below the threshold, blocks 1.. add their residual delta
        /// cached at that step instead of running.
        FirstBlock = "first-block",
    }
}

/// A dynamic policy with its threshold and bounds, as a plan records it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DynamicSpec {
    pub policy: DynamicPolicy,
    /// Reuse when the policy's change indicator is strictly below this
    /// (>= 0; `inf` reuses whenever the bounds allow). Written `"inf"` in
    /// JSON, which has no infinity.
    #[serde(with = "threshold_serde")]
    pub threshold: f64,
    /// The first `warmup` steps always compute (step 0 always does).
    pub warmup: usize,
    /// The last `cutoff` steps always compute.
    pub cutoff: usize,
    /// At most this many reuse steps in a row; `None`: no limit.
    pub max_reuse: Option<usize>,
}

/// Default warm-up of a dynamic policy: the first step (nothing is cached
/// before it).
pub const DEFAULT_DYNAMIC_WARMUP: usize = 1;

impl DynamicSpec {
    /// Whether the bounds allow a reuse at `step` of `steps`, after
    /// `run` reuse steps in a row. The cache must also hold something, which
    /// only the executor knows.
    pub fn may_reuse(&self, step: usize, steps: usize, run: usize) -> bool {
        step >= self.warmup.max(1)
            && step + self.cutoff < steps
            && self.max_reuse.is_none_or(|m| run < m)
    }

    /// The reuse steps when every step the bounds allow reuses (the best
    /// case, and what an infinite threshold gives).
    pub fn most_reuses(&self, steps: usize) -> Vec<usize> {
        let mut run = 0;
        let mut out = Vec::new();
        for s in 0..steps {
            if self.may_reuse(s, steps, run) {
                out.push(s);
                run += 1;
            } else {
                run = 0;
            }
        }
        out
    }
}

/// A finite threshold as a number, an infinite one as the string `"inf"`.
mod threshold_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_infinite() && *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(*x)
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let x = match Repr::deserialize(d)? {
            Repr::Number(x) => x,
            Repr::Text(t) if t == "inf" => f64::INFINITY,
            Repr::Text(t) => {
                return Err(serde::de::Error::custom(format!(
                    "expected a threshold >= 0 or \"inf\", found \"{t}\""
                )))
            }
        };
        if x.is_nan() || x < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "expected a threshold >= 0, found {x}"
            )));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(warmup: usize, cutoff: usize, max_reuse: Option<usize>) -> DynamicSpec {
        DynamicSpec {
            policy: DynamicPolicy::FirstBlock,
            threshold: 0.1,
            warmup,
            cutoff,
            max_reuse,
        }
    }

    #[test]
    fn bounds_give_the_most_reuses() {
        assert_eq!(spec(2, 1, Some(3)).most_reuses(10), vec![2, 3, 4, 6, 7, 8]);
        assert_eq!(spec(0, 0, None).most_reuses(4), vec![1, 2, 3]);
        assert_eq!(spec(0, 0, Some(1)).most_reuses(5), vec![1, 3]);
        assert!(spec(1, 0, Some(0)).most_reuses(5).is_empty());
        assert!(spec(3, 3, None).most_reuses(5).is_empty());
    }

    #[test]
    fn infinite_thresholds_survive_json() {
        let mut s = spec(2, 1, None);
        s.threshold = f64::INFINITY;
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""threshold":"inf""#), "{text}");
        assert_eq!(serde_json::from_str::<DynamicSpec>(&text).unwrap(), s);
        let bad = text.replace(r#""inf""#, "-1.0");
        assert!(serde_json::from_str::<DynamicSpec>(&bad).is_err());
    }
}
