//! `sim`: run a campaign of seeded schedules against a policy plugin, or replay one.
//!
//! ```text
//! cargo run -p sim -- --policy vtc-quorum --schedules 10000 --seed 7
//! cargo run -p sim -- --policy vtc-quorum --replay 0x1234abcd   # one schedule, full trace
//! cargo run -p sim -- --policy ./libmy_policy.so --config '{"threshold": {"count": 3}}'
//! ```
//!
//! Exit status: 0 no violation, 1 a violation (its trace and replay command are printed),
//! 2 the policy could not be loaded or the arguments are wrong.

use std::process::ExitCode;

use clap::Parser;
use sim::{campaign, describe_failure, run, Campaign, PolicySource};

#[derive(Parser, Debug)]
#[command(name = "sim", about = "Deterministic simulator for quorum-recovery policies")]
struct Args {
    /// The policy plugin: a name (libgw_NAME.so next to this program or in its deps
    /// directory, or in $SIM_PLUGIN_DIR) or a path to the library.
    #[arg(long, default_value = "vtc-quorum")]
    policy: String,
    /// How many schedules to run.
    #[arg(long, default_value_t = 1000)]
    schedules: u64,
    /// The campaign seed (decimal or 0x-hex).
    #[arg(long, default_value = "1", value_parser = parse_u64)]
    seed: u64,
    /// Run one schedule (its seed, as printed for a failure) and print its whole trace.
    #[arg(long, value_parser = parse_u64)]
    replay: Option<u64>,
    /// Worker threads (default: the available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// JSON merged into every controller's config.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Trace lines printed for a failure.
    #[arg(long, default_value_t = 600)]
    trace_lines: usize,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let extra: serde_json::Value = match serde_json::from_str(&args.config) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            eprintln!("sim: --config must be a JSON object");
            return ExitCode::from(2);
        }
    };
    let source = match PolicySource::load(&args.policy) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.replay {
        let r = run(seed, &source, &extra, true);
        for line in &r.trace {
            println!("{line}");
        }
        println!("setup: {}", r.summary);
        return match &r.violation {
            Some(v) => {
                println!("VIOLATION in schedule {seed:#018x}: {v}");
                ExitCode::from(1)
            }
            None => {
                println!("schedule {seed:#018x}: no violation ({} steps, {} policy calls)", r.steps, r.calls);
                ExitCode::SUCCESS
            }
        };
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let c = Campaign { schedules: args.schedules, seed: args.seed, threads, extra };
    println!("sim: policy {}; {} schedules from seed {:#x} on {threads} threads", source.name(), c.schedules, c.seed);
    let report = campaign(&source, &c);
    match &report.failure {
        Some(f) => {
            print!("{}", describe_failure(f, &args.policy, args.trace_lines));
            println!("after {} schedules ({:.1} s)", report.runs, report.elapsed.as_secs_f64());
            ExitCode::from(1)
        }
        None => {
            println!(
                "no violation in {} schedules (liveness checked in {}); {} steps, {} policy calls, {:.1} s",
                report.runs,
                report.liveness_checked,
                report.steps,
                report.calls,
                report.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
    }
}
