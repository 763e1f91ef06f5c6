//! Parse and compile arbitrary bytes as a schedule; render whatever
//! diagnostics come out. Nothing here may panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tcc_schedule::parse("fuzz.sched", text) {
        Ok(schedule) => {
            // What parses must print and parse back the same (compared as
            // printed text, which also holds for a NaN alpha).
            let printed = tcc_schedule::print(&schedule);
            let again = tcc_schedule::parse("fuzz.sched", &printed)
                .expect("a printed schedule parses");
            assert_eq!(tcc_schedule::print(&again), printed);
            // Model paths resolve against a directory that does not exist,
            // so the fuzzer never reads files it did not mean to.
            if let Err(d) = tcc_plan::compile(&schedule, Path::new("/nonexistent-fuzz-dir")) {
                let _ = d.render("fuzz.sched", text);
            }
        }
        Err(d) => {
            let _ = d.render("fuzz.sched", text);
        }
    }
});
