//! parley-loadgen: load generator for the Parley gateway (REST set-up, WebSocket traffic).
//!
//! Subcommands: `traffic` (one run at a fixed rate), `ramp` (increasing rates until the
//! latency target breaks: the max sustained throughput), `idle` (many idle connections,
//! gateway RSS per connection), `history` (keyset history pages), `search` (message search
//! by query class), `abuse` (one hostile account: gateway RSS under made-up channel ids, a
//! calm client's p99 beside a flood). Every run is bounded in count and time and targets
//! loopback unless `--allow-remote`. A human table goes to stdout, JSON to `--json`; the exit
//! status is 1 when delivery verification fails (or requests fail, or search pages fail
//! their checks).

mod abuse;
mod api;
mod history;
mod idle;
mod procfs;
mod search;
mod stats;
mod traffic;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "parley-loadgen", version, about)]
struct Cli {
    /// Gateway base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Allow a non-loopback target.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Write the report as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Hard limit on the whole command, seconds.
    #[arg(long, global = true, default_value_t = 900)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Clients send at a fixed rate; latency, throughput, delivery verification.
    Traffic(traffic::TrafficArgs),
    /// Traffic at increasing rates until p99 exceeds the target or throughput falls short.
    Ramp(RampArgs),
    /// Hold idle connections; gateway RSS per connection.
    Idle(idle::IdleArgs),
    /// Random `before=` history pages through the gateway.
    History(history::HistoryArgs),
    /// `GET /v1/search` with queries by class (file), checked; latency per class.
    Search(search::SearchArgs),
    /// One hostile account: made-up channel ids (gateway RSS), a frame flood beside a calm
    /// client (its ping p99).
    Abuse(abuse::AbuseArgs),
}

#[derive(clap::Args, Clone, Serialize)]
struct RampArgs {
    #[command(flatten)]
    traffic: traffic::TrafficArgs,
    /// Rates to try in order (msg/s). Stops when delivery verification fails, or
    /// `--overload-steps` steps after the first where the server falls behind (sustained <
    /// min-ratio of the rate) or answers errors (refusals for overload included).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,1500,2000,3000,4000,5000,6000,8000,10000"
    )]
    rates: Vec<f64>,
    /// A step passes when p99 of both ack and end-to-end latency is at most this.
    #[arg(long, default_value_t = 50.0)]
    p99_ms: f64,
    /// …and the server sustained at least this fraction of the target rate.
    #[arg(long, default_value_t = 0.95)]
    min_ratio: f64,
    /// Steps run past saturation, to show how overload is answered (goodput, refusals,
    /// latency of the accepted sends).
    #[arg(long, default_value_t = 2)]
    overload_steps: usize,
    /// `name=pid` (repeatable): a process whose CPU time (with its children's, e.g. a
    /// postmaster's backends) is reported per step, in µs per committed message.
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected name=pid, got {s:?}"))?;
    let pid = pid.parse().map_err(|_| format!("bad pid in {s:?}"))?;
    Ok((name.to_owned(), pid))
}

fn cpu_snapshot(watch: &[(String, u32)]) -> Vec<(String, Option<f64>)> {
    let mut v: Vec<(String, Option<f64>)> = watch
        .iter()
        .map(|(n, p)| (n.clone(), procfs::tree_cpu_secs(*p)))
        .collect();
    v.push(("loadgen".into(), procfs::tree_cpu_secs(std::process::id())));
    v.push(("machine".into(), procfs::machine_cpu_secs()));
    v
}

#[derive(Serialize)]
struct RampStep {
    rate: f64,
    passed: bool,
    why: String,
    /// CPU time per committed message over the whole step (set-up included), µs, of each
    /// watched process, this load generator and the whole machine.
    cpu_us_per_msg: std::collections::BTreeMap<String, f64>,
    report: traffic::TrafficReport,
}

#[derive(Serialize)]
struct RampReport {
    p99_ms: f64,
    min_ratio: f64,
    /// Highest throughput of a passing step.
    max_sustained_msgs_per_sec: Option<f64>,
    best_rate: Option<f64>,
    /// Highest throughput of any step without errors, whatever its latency.
    max_throughput_msgs_per_sec: f64,
    steps: Vec<RampStep>,
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, v: &T) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

async fn ramp(api: &api::Api, r: RampArgs, progress: bool) -> Result<(RampReport, bool)> {
    let mut steps = Vec::new();
    let mut verified = true;
    let mut saturated = 0;
    for &rate in &r.rates {
        let mut a = r.traffic.clone();
        a.rate = rate;
        let before = cpu_snapshot(&r.watch);
        let rep = traffic::run(api, a, progress).await?;
        let after = cpu_snapshot(&r.watch);
        let cpu_us_per_msg = before
            .into_iter()
            .zip(after)
            .filter_map(|((name, b), (_, a))| match (b, a) {
                (Some(b), Some(a)) if rep.acked > 0 => {
                    Some((name, (a - b) / rep.acked as f64 * 1e6))
                }
                _ => None,
            })
            .collect();
        // Steady state: the step's first `warmup` seconds (new users and channels) are
        // reported apart, not judged.
        let p99 = rep.steady_ack.p99_ms.max(rep.steady_e2e.p99_ms);
        let ratio = rep.throughput_msgs_per_sec / rate;
        let why = if !rep.verification.ok() {
            verified = false;
            "delivery verification FAILED".to_owned()
        } else if rep.errors > 0 || rep.unanswered > 0 {
            format!("{} errors, {} unanswered", rep.errors, rep.unanswered)
        } else if p99 > r.p99_ms {
            format!("p99 {p99:.1} ms > {} ms", r.p99_ms)
        } else if ratio < r.min_ratio {
            format!("sustained only {:.0}% of the target", ratio * 100.0)
        } else {
            String::new()
        };
        let passed = why.is_empty();
        // Latency may miss the target while the server still keeps up: carry on so the
        // report has the max sustained throughput too; once it falls behind or refuses,
        // a few more steps show overload, then stop.
        let keeps_up = rep.errors == 0 && ratio >= r.min_ratio;
        println!(
            "ramp {rate:>7.0} msg/s: {} — throughput {:.0} msg/s, steady ack p99 {:.1} ms, e2e p99 {:.1} ms (first {:.0}s: ack p99 {:.1} ms){}",
            if passed { "pass" } else { "FAIL" },
            rep.throughput_msgs_per_sec,
            rep.steady_ack.p99_ms,
            rep.steady_e2e.p99_ms,
            rep.config.warmup,
            rep.ack_first.p99_ms,
            if passed {
                String::new()
            } else {
                format!(" ({why})")
            }
        );
        steps.push(RampStep {
            rate,
            passed,
            why,
            cpu_us_per_msg,
            report: rep,
        });
        if !verified {
            break;
        }
        if !keeps_up {
            saturated += 1;
            if saturated > r.overload_steps {
                break;
            }
        }
    }
    let best = steps.iter().filter(|s| s.passed).max_by(|a, b| {
        a.report
            .throughput_msgs_per_sec
            .total_cmp(&b.report.throughput_msgs_per_sec)
    });
    if let Some(b) = best {
        println!("\nbest passing step ({} msg/s target):", b.rate);
        print!("{}", b.report.table());
    }
    let report = RampReport {
        p99_ms: r.p99_ms,
        min_ratio: r.min_ratio,
        max_sustained_msgs_per_sec: best.map(|b| b.report.throughput_msgs_per_sec),
        best_rate: best.map(|b| b.rate),
        max_throughput_msgs_per_sec: steps
            .iter()
            .filter(|s| s.report.errors == 0 && s.report.verification.ok())
            .map(|s| s.report.throughput_msgs_per_sec)
            .fold(0.0, f64::max),
        steps,
    };
    Ok((report, verified))
}

async fn run(cli: Cli) -> Result<bool> {
    let api = api::Api::new(&cli.url, cli.allow_remote)?;
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    match cli.cmd {
        Cmd::Traffic(a) => {
            let rep = traffic::run(&api, a, progress).await?;
            print!("{}", rep.table());
            write_json(&cli.json, &rep)?;
            Ok(rep.verification.ok())
        }
        Cmd::Ramp(r) => {
            let (rep, verified) = ramp(&api, r, progress).await?;
            write_json(&cli.json, &rep)?;
            Ok(verified)
        }
        Cmd::Idle(a) => {
            let rep = idle::run(&api, a, progress).await?;
            print!("{}", rep.table());
            write_json(&cli.json, &rep)?;
            Ok(rep.failed == 0)
        }
        Cmd::Abuse(a) => {
            let rep = abuse::run(&api, a).await?;
            print!("{}", rep.table());
            write_json(&cli.json, &rep)?;
            Ok(true)
        }
        Cmd::History(a) => {
            let rep = history::run(&api, a).await?;
            print!("{}", rep.table());
            write_json(&cli.json, &rep)?;
            Ok(rep.errors == 0 && rep.wrong_pages == 0)
        }
        Cmd::Search(a) => {
            let rep = search::run(&api, a).await?;
            print!("{}", rep.table());
            write_json(&cli.json, &rep)?;
            Ok(rep.ok())
        }
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let limit = Duration::from_secs(cli.timeout.clamp(1, 3600));
    let ok = tokio::time::timeout(limit, run(cli))
        .await
        .map_err(|_| anyhow::anyhow!("gave up after the --timeout of {}s", limit.as_secs()))??;
    if !ok {
        bail!("FAILED: delivery verification or requests failed (see above)");
    }
    Ok(())
}
