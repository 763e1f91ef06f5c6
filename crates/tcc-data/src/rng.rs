//! A tiny counter-based random stream (splitmix64). Written here rather than
//! taken from `rand` so the data set can never change with a dependency
//! upgrade.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Random stream of one sample: determined by (seed, index) alone.
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64, index: u64) -> Self {
        Self::with_stream(0x5EED_0000_DA7A_0001, seed, index)
    }

    /// The stream of `(seed, index)` in the family `stream`: data sets with
    /// different `stream` constants draw unrelated samples for equal seeds.
    pub(crate) fn with_stream(stream: u64, seed: u64, index: u64) -> Self {
        Self {
            state: mix(mix(seed ^ stream).wrapping_add(index.wrapping_mul(GOLDEN))),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}
