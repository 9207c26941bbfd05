//! The end-to-end suite (`harness = false`): every workload on every flavor,
//! dumped and restored by crest; see the crate docs of `crest_tests`.
//!
//! `cargo test --release -p crest-tests --test e2e -- [FILTER...]` runs the
//! cases whose name (e.g. `signals[host,logfile]`) contains a filter.
//! `CREST_E2E_NOCHECKPOINT=1` runs the workloads without crest,
//! `CREST_BIN` picks the crest binary, `CREST_TEST_DIR` the work directory.

use std::process::ExitCode;

use crest_tests::suite::{self, Filter};
use crest_tests::Config;

fn main() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = Filter::from_args(std::env::args().skip(1));
    if cfg.checkpoint {
        println!(
            "e2e: crest {}, work directory {}",
            cfg.crest.display(),
            cfg.base.display()
        );
    } else {
        println!(
            "e2e: self-check (no crest), work directory {}",
            cfg.base.display()
        );
    }
    if suite::run(&cfg, &filter) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
