//! `thin-faults [--len N] [--faults F] [--replicas R] [--replica-len N2] [--replica-faults F2]
//! [--pass R:N:F]... [--only TEXT] [--max-states S] [--no-reduce] [--mutate NAME]`:
//! explores every scenario of up to N CSI requests with up to F faults per
//! path (with two controller replicas: up to N2 requests, F2 faults) and
//! prints `FAULTS: explored N paths, M states, V violations`. Each `--pass
//! R:N:F` (repeatable) runs R replicas, N requests, F faults, in place of
//! the passes the other flags give. `--time-budget S`: no scenario starts
//! after S seconds; those not run are listed (SKIP) and the run fails. `--no-reduce` turns
//! the state reductions off (lib.rs docs); `--mutate` puts a known defect
//! back (`Mutation`), for showing that the search finds it.

use std::io::Write as _;
use std::process::ExitCode;

use thin_faults::{explore, scenarios, Config, Mutation};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let len = arg("--len", 3);
    let mut paths = 0u64;
    let mut states = 0u64;
    let mut violations = 0usize;
    let mut checks = 0usize;
    let mut failed = 0usize;
    let started = std::time::Instant::now();
    // Seconds after which no new scenario starts (the rest are listed as SKIP).
    let budget = args.iter().position(|a| a == "--time-budget").and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    let mut skipped = 0usize;
    let mutation = args.iter().position(|a| a == "--mutate").and_then(|i| args.get(i + 1)).map(|m| Mutation::parse(m).unwrap_or_else(|| panic!("unknown mutation {m}; one of {:?}", Mutation::ALL)));
    let faults = arg("--faults", 2);
    let mut passes: Vec<(u8, usize, u8)> = args
        .windows(2)
        .filter(|w| w[0] == "--pass")
        .map(|w| {
            let v: Vec<usize> = w[1].split(':').map(|x| x.parse().expect("--pass R:N:F")).collect();
            assert!(v.len() == 3, "--pass R:N:F");
            (v[0] as u8, v[1], v[2] as u8)
        })
        .collect();
    if passes.is_empty() {
        // Two racing replicas multiply the state space: their scenarios may be shorter.
        passes = [(1u8, len, faults as u8), (2, arg("--replica-len", len), arg("--replica-faults", faults) as u8)].into_iter().filter(|p| p.0 <= arg("--replicas", 2) as u8).collect();
    }
    for (replicas, len, max_faults) in passes {
        let cfg = Config {
            max_faults,
            replicas,
            max_states: arg("--max-states", Config::default().max_states),
            reduce: !args.iter().any(|a| a == "--no-reduce"),
            mutation,
            ..Config::default()
        };
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
        for ops in scenarios(len).into_iter().filter(|ops| only.as_ref().is_none_or(|o| format!("{ops:?}").contains(o.as_str()))) {
            // A long run prints each scenario as it ends (stdout to a file is block-buffered).
            let _ = std::io::stdout().flush();
            if budget.is_some_and(|b| started.elapsed().as_secs() >= b) {
                skipped += 1;
                println!("SKIP {ops:?} replicas={replicas} faults<={max_faults}: not started within --time-budget");
                continue;
            }
            let t0 = std::time::Instant::now();
            let r = explore(&ops, &cfg);
            let secs = t0.elapsed().as_secs_f64();
            paths += r.paths;
            states += r.states;
            violations += r.violations.len();
            checks += 1;
            let name = format!("{ops:?} replicas={replicas} faults<={}", cfg.max_faults);
            if r.violations.is_empty() && !r.truncated {
                println!("PASS {name}: {} paths, {} states ({secs:.1} s)", r.paths, r.states);
                if std::env::var_os("FAULTS_DEBUG").is_some() {
                    eprintln!("  revisits {}", r.revisits);
                }
            } else {
                failed += 1;
                if r.truncated {
                    println!("FAIL {name}: state limit reached after {} states", r.states);
                }
                for v in &r.violations {
                    println!("FAIL {name}: {}", v.what);
                    for step in &v.path {
                        println!("    {step}");
                    }
                }
            }
        }
    }
    if skipped > 0 {
        println!("FAIL faults: {skipped} scenarios not run within the time budget");
        failed += 1;
        checks += 1;
    }
    println!("FAULTS: explored {paths} paths, {states} states, {violations} violations ({:.1} s)", started.elapsed().as_secs_f64());
    println!("faults: {} passed, {failed} failed", checks - failed);
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
