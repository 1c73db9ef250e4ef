//! Security gates: strict parsing of stage results and the verdicts drawn from them. Pure code.

pub mod results;
pub mod verdict;

pub use results::StageResults;
pub use verdict::{GateContext, GateVerdict, RunOutcome, judge};
