//! What a dynamic plan (a run-time policy) decided while it was evaluated:
//! per step, how many samples computed it, and the MACs of what ran
//! against full computation's, as sums that shards add up exactly.

use serde::{Deserialize, Serialize};
use tcc_plan::{Plan, PlanCost};

/// The MACs per sample of a dynamic plan's run that reused (blocks 1.. or
/// whatever the policy skips) at `reuse_steps`, and of full computation:
/// [`PlanCost::of_run`], the static plan of those decisions plus what the
/// policy's probe costs at a reuse step (TeaCache's adaLN of block 0).
pub fn realised_macs(plan: &Plan, reuse_steps: &[usize]) -> (u64, u64) {
    let cost = PlanCost::of_run(plan, reuse_steps);
    (cost.total, cost.full_total)
}

/// The decisions of a dynamic plan over some samples (one seed set, or a
/// shard's share of it). A batch decides together: each of its samples
/// counts the batch's decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionSums {
    /// Per step: the samples whose batch computed it.
    pub computed: Vec<u64>,
    /// The samples counted.
    pub samples: u64,
    /// MACs that ran, over every sample.
    pub macs: u128,
    /// MACs full computation takes for the same samples.
    pub full_macs: u128,
}

impl DecisionSums {
    pub fn new(steps: usize) -> DecisionSums {
        DecisionSums {
            computed: vec![0; steps],
            ..DecisionSums::default()
        }
    }

    /// Counts a batch of `samples` samples of `plan` that reused at
    /// `reuse_steps` and computed every other step.
    pub fn add_batch(&mut self, plan: &Plan, samples: usize, reuse_steps: &[usize]) {
        for (k, c) in self.computed.iter_mut().enumerate() {
            if !reuse_steps.contains(&k) {
                *c += samples as u64;
            }
        }
        let (ran, full) = realised_macs(plan, reuse_steps);
        self.samples += samples as u64;
        self.macs += ran as u128 * samples as u128;
        self.full_macs += full as u128 * samples as u128;
    }

    /// Adds the sums of other samples of the same plan.
    pub fn merge(&mut self, other: &DecisionSums) -> Result<(), String> {
        if other.computed.len() != self.computed.len() {
            return Err(format!(
                "cannot merge the decisions of {} steps with those of {}",
                other.computed.len(),
                self.computed.len()
            ));
        }
        for (a, b) in self.computed.iter_mut().zip(&other.computed) {
            *a += b;
        }
        self.samples += other.samples;
        self.macs += other.macs;
        self.full_macs += other.full_macs;
        Ok(())
    }

    /// The mean number of steps a sample computed.
    pub fn computed_steps(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        self.computed.iter().sum::<u64>() as f64 / self.samples as f64
    }

    /// Full computation's MACs over the MACs that ran.
    pub fn speedup(&self) -> f64 {
        if self.macs == 0 {
            return 1.0;
        }
        self.full_macs as f64 / self.macs as f64
    }

    /// The report of these sums.
    pub fn report(&self) -> DecisionReport {
        DecisionReport {
            samples: self.samples,
            computed: self.computed.clone(),
            computed_steps: self.computed_steps(),
            realised_speedup: self.speedup(),
        }
    }
}

/// What a dynamic variant decided over every evaluated sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionReport {
    pub samples: u64,
    /// Per step: the samples whose batch computed it.
    pub computed: Vec<u64>,
    /// Mean steps computed per sample.
    pub computed_steps: f64,
    /// Full computation's MACs over the MACs that ran.
    pub realised_speedup: f64,
}

impl DecisionReport {
    /// Per step: the share of samples that computed it.
    pub fn shares(&self) -> Vec<f64> {
        let n = self.samples.max(1) as f64;
        self.computed.iter().map(|&c| c as f64 / n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dynamic: &str) -> Plan {
        let text = format!(
            "[model]\nname = \"tiny\"\n[sampler]\nsteps = 6\n[dynamic]\npolicy = \"first-block\"\n{dynamic}"
        );
        let s = tcc_schedule::parse("d.sched", &text).unwrap();
        tcc_plan::compile(&s, std::path::Path::new("")).unwrap()
    }

    #[test]
    fn batches_count_per_sample_and_shards_add_up_exactly() {
        let p = plan("threshold = 0.1\n");
        let mut whole = DecisionSums::new(6);
        whole.add_batch(&p, 3, &[2, 3]);
        whole.add_batch(&p, 2, &[]);
        assert_eq!(whole.computed, [5, 5, 2, 2, 5, 5]);
        assert_eq!(whole.samples, 5);
        assert_eq!(whole.computed_steps(), (4.0 * 3.0 + 6.0 * 2.0) / 5.0);
        let (ran, full) = realised_macs(&p, &[2, 3]);
        assert!(ran < full);
        assert_eq!(realised_macs(&p, &[]), (full, full));
        assert_eq!(whole.macs, 3 * ran as u128 + 2 * full as u128);
        assert_eq!(whole.full_macs, 5 * full as u128);
        let want = (5 * full) as f64 / (3 * ran + 2 * full) as f64;
        assert_eq!(whole.speedup(), want);

        let (mut a, mut b) = (DecisionSums::new(6), DecisionSums::new(6));
        a.add_batch(&p, 3, &[2, 3]);
        b.add_batch(&p, 2, &[]);
        a.merge(&b).unwrap();
        assert_eq!(a, whole);
        assert!(a.merge(&DecisionSums::new(5)).is_err());
    }

    #[test]
    fn nothing_reused_is_speedup_one() {
        let p = plan("threshold = 0\n");
        let mut s = DecisionSums::new(6);
        s.add_batch(&p, 4, &[]);
        assert_eq!(s.speedup(), 1.0);
        assert_eq!(s.computed_steps(), 6.0);
        assert_eq!(DecisionSums::new(6).speedup(), 1.0);
    }
}
