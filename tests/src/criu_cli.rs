//! (being written)

use crate::suite::Report;
use crate::Config;

pub fn run(_cfg: &Config, _report: &mut Report, _selected: &dyn Fn(&str) -> bool) {}
