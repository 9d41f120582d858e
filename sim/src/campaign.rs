//! Many schedules: seeds derived from one campaign seed, run on several threads (each
//! schedule alone is single-threaded and deterministic), the first violation found (lowest
//! schedule index) re-run with tracing so it can be printed and replayed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rng::mix;
use crate::schedule::{run, Run};
use crate::source::PolicySource;

#[derive(Debug, Clone)]
pub struct Campaign {
    pub schedules: u64,
    pub seed: u64,
    pub threads: usize,
    /// Merged into every controller's config.
    pub extra: Value,
}

#[derive(Debug)]
pub struct Report {
    pub runs: u64,
    /// The violating schedule with the lowest index, re-run with its trace.
    pub failure: Option<Run>,
    pub liveness_checked: u64,
    pub steps: u64,
    pub calls: u64,
    pub elapsed: Duration,
}

/// The seed of schedule `i` of a campaign.
pub fn schedule_seed(campaign_seed: u64, i: u64) -> u64 {
    mix(campaign_seed ^ mix(i.wrapping_add(0xC0FF_EE00)))
}

pub fn campaign(source: &PolicySource, c: &Campaign) -> Report {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64, None::<(u64, Run)>));
    let threads = c.threads.max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= c.schedules {
                    return;
                }
                let r = run(schedule_seed(c.seed, i), source, &c.extra, false);
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                t.0 += 1;
                t.1 += u64::from(r.liveness_checked);
                t.2 += r.steps;
                t.3 += r.calls;
                if r.violation.is_some() {
                    stop.store(true, Ordering::Relaxed);
                    if t.4.as_ref().is_none_or(|(j, _)| i < *j) {
                        t.4 = Some((i, r));
                    }
                }
            });
        }
    });
    let (runs, live, steps, calls, failure) = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    let failure = failure.map(|(_, r)| run(r.seed, source, &c.extra, true));
    Report { runs, failure, liveness_checked: live, steps, calls, elapsed: start.elapsed() }
}

/// A failing schedule as printed: the violation, the setup, the trace (its last
/// `trace_lines` lines) and how to replay it.
pub fn describe_failure(r: &Run, policy: &str, trace_lines: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!("VIOLATION in schedule {:#018x}: {}\n", r.seed, r.violation.as_deref().unwrap_or("(none)")));
    s.push_str(&format!("setup: {}\n", r.summary));
    let skip = r.trace.len().saturating_sub(trace_lines);
    s.push_str(&format!("trace ({} lines{}):\n", r.trace.len(), if skip > 0 { ", the last shown" } else { "" }));
    if skip > 0 {
        s.push_str(&format!("  ... {skip} lines not shown (--replay prints them all)\n"));
    }
    for line in &r.trace[skip..] {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!("replay: cargo run -p sim -- --policy {policy} --replay {:#x}\n", r.seed));
    s
}
