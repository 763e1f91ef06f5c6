//! Read arbitrary bytes as a priors file; whatever loads must save and
//! load back the same, and its folded form must be computable. Nothing
//! here may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcc_calib::PriorSet;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = PriorSet::from_bytes(data, "fuzz.safetensors") else {
        return;
    };
    for (site, prior) in &set.priors {
        let folded = prior.fold(set.alpha(site));
        assert_eq!(folded.m.len(), prior.dim * prior.dim);
    }
    // Values beyond f32 (after folding) may be refused; what is written
    // must read back as it was.
    if let Ok(bytes) = set.to_bytes() {
        let back = PriorSet::from_bytes(&bytes, "again.safetensors").expect("a saved set loads");
        assert_eq!(back.to_bytes().ok(), Some(bytes));
    }
});
