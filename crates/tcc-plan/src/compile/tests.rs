use std::path::{Path, PathBuf};

use super::*;
use crate::plan::Action;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_shipped_schedule_compiles() {
    let dir = repo_root().join("schedules");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sched") {
            let plan = compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render()));
            eprintln!("{}", path.display());
            for st in &plan.steps {
                let row: String = st
                    .actions
                    .iter()
                    .map(|blk| match blk[0] {
                        Action::Compute => 'C',
                        Action::Reuse { prior: true, .. } => 'P',
                        Action::Reuse { .. } => 'r',
                        Action::ReuseDelta { .. } => 'd',
                    })
                    .collect();
                eprintln!("  {:2} {:4} {row}", st.step, st.timestep);
            }
            n += 1;
        }
    }
    assert!(n >= 11);
}
