//! Two controller processes, one lease: the leader allocates, the standby
//! waits; when the leader is SIGKILLed the standby takes over and carries on.
//! Run by e2e/suites/cluster.sh against a real kube-apiserver (KUBECONFIG).
//!
//!   leader_e2e run POOL IDENTITY COUNT OUT   wait to lead, then COUNT allocations (one line each to OUT)
//!   leader_e2e verify POOL OUT...            ids unique; transactions dense, each once; at most one recorded
//!                                            allocation unknown to the outputs (the killed leader's last)

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use csi_controller::leader::LeaderElector;
use csi_controller::{Allocator, Request};
use kube::api::Api;
use kube::Client;
use report::Report;
use thin_csi_api::ThinPool;

const LEASE: &str = "thin-csi-controller-test";
const LEASE_DURATION: Duration = Duration::from_secs(3);

async fn run(client: Client, pool: &str, identity: &str, count: usize, out: &str) -> Result<String, String> {
    let elector = LeaderElector::new(client.clone(), "default", LEASE, identity, LEASE_DURATION);
    if !elector.try_acquire_or_renew().await.map_err(|e| e.to_string())? {
        println!("STANDBY {identity}");
    }
    let leading = elector.lead().await;
    println!("LEADER {identity}");
    let alloc = Allocator::new(client);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(out).map_err(|e| e.to_string())?;
    for i in 0..count {
        if !*leading.borrow() {
            return Err(format!("lost the lease after {i} allocations"));
        }
        let a = alloc.allocate(pool, &[Request::CreateThin]).await.map_err(|e| e.to_string())?;
        let id = a.created[0];
        writeln!(file, "{} {id}", a.transaction.id()).map_err(|e| e.to_string())?;
    }
    Ok(format!("{identity} led and made {count} allocations"))
}

async fn verify(client: Client, pool: &str, outs: &[&str]) -> Result<String, String> {
    let mut txns = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for out in outs {
        for line in std::fs::read_to_string(out).map_err(|e| format!("{out}: {e}"))?.lines() {
            let (t, i) = line.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
            if !txns.insert(t.parse::<u64>().map_err(|_| "bad txn")?) || !ids.insert(i.to_string()) {
                return Err(format!("{line:?} handed out twice"));
            }
        }
    }
    let object = Api::<ThinPool>::all(client).get(pool).await.map_err(|e| e.to_string())?;
    let recorded: Vec<u64> = object.spec.pending_transactions.iter().map(|p| p.id).collect();
    let last = object.spec.last_assigned_transaction;
    if recorded != (1..=last).collect::<Vec<_>>() {
        return Err(format!("recorded transactions are not 1..={last} each once: {recorded:?}"));
    }
    let unknown: Vec<u64> = recorded.iter().copied().filter(|t| !txns.contains(t)).collect();
    if unknown.len() > 1 {
        return Err(format!("recorded but never reported by either controller: {unknown:?}"));
    }
    Ok(format!("{} allocations by two controllers, transactions 1..={last} dense, ids unique; {} recorded by the killed leader after its last report", txns.len(), unknown.len()))
}

#[tokio::main]
async fn main() -> ExitCode {
    report::install_panic_hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = match thin_csi_api::client::connect_default().await {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL kube client ({e})");
            return ExitCode::FAILURE;
        }
    };
    let (name, result) = match argv.as_slice() {
        ["run", pool, identity, count, out] => (format!("controller {identity}"), run(client, pool, identity, count.parse().unwrap_or(0), out).await),
        ["verify", pool, outs @ ..] => ("standby takes over from a killed leader".to_string(), verify(client, pool, outs).await),
        _ => {
            eprintln!("usage: see the header of e2e/suites/src/bin/leader_e2e.rs");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::default();
    report.check(&name, result);
    report.exit_code()
}
