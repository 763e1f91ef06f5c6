//! What a dynamic plan (a run-time policy) actually did: the steps each
//! batch computed and the MACs of what ran against full computation.

use tcc_plan::{human_macs, Plan};

/// The reuse steps of every batch of a run, in batch order.
#[derive(Clone, Debug, Default)]
pub struct Realised {
    /// (first sample, samples, steps that reused the policy's blocks).
    pub batches: Vec<(usize, usize, Vec<usize>)>,
}

impl Realised {
    /// MACs of what ran (the policy's probe included) and of full
    /// computation, over every sample.
    pub fn macs(&self, plan: &Plan) -> (u128, u128) {
        let (mut ran, mut all) = (0u128, 0u128);
        for (_, len, reuse) in &self.batches {
            let (r, full) = tcc_eval::realised_macs(plan, reuse);
            ran += r as u128 * *len as u128;
            all += full as u128 * *len as u128;
        }
        (ran, all)
    }

    /// Lines for the report: per batch the steps that computed every
    /// block, then the realised speedup (full MACs / MACs that ran).
    pub fn lines(&self, plan: &Plan) -> Vec<String> {
        let n = plan.steps.len();
        let mut out = Vec::new();
        for (start, len, reuse) in &self.batches {
            let computed: Vec<String> = (0..n)
                .filter(|s| !reuse.contains(s))
                .map(|s| s.to_string())
                .collect();
            out.push(format!(
                "  samples {start}..{}: computed {} of {n} steps ({})",
                start + len,
                computed.len(),
                computed.join(", ")
            ));
        }
        let (ran, all) = self.macs(plan);
        let speedup = if ran > 0 {
            all as f64 / ran as f64
        } else {
            1.0
        };
        let per_sample = |m: u128| {
            let samples: usize = self.batches.iter().map(|b| b.1).sum();
            human_macs((m / samples.max(1) as u128).min(u64::MAX as u128) as u64)
        };
        out.push(format!(
            "  realised {} MACs per sample of full computation's {}: speedup {speedup:.2}x",
            per_sample(ran),
            per_sample(all)
        ));
        out
    }
}
