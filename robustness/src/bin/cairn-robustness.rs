//! `cairn-robustness`: long robustness runs. Runs every nemesis (or the ones named) in turn with
//! seeds from `--seed` on, for `--minutes` in total, printing one summary line per run and saving
//! the history of every failing run (with its seed) to replay with `--check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_robustness::committed::Committed;
use cairn_robustness::nemesis::Nemesis;
use cairn_robustness::run::{self, Plan, Report};
use cairn_robustness::traffic::Profile;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Runs Cairn clusters under faults and checks every history (needs root)")]
struct Args {
    /// Total time to run for, across all runs.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// The first run's seed; each later run takes the next.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 60)]
    run_seconds: u64,
    /// Nemeses to cycle through (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    nemesis: Vec<Nemesis>,
    /// Traffic profiles to cycle through (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    profile: Vec<Profile>,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Runs every member with this planted bug (a self-test: the runs must fail).
    #[arg(long, value_parser = ["stale-reads", "ack-before-sync"])]
    planted: Option<String>,
    /// Where failing runs' histories go.
    #[arg(long, default_value = "robustness-failures")]
    save_to: PathBuf,
    /// Checks a saved report's history again instead of running anything.
    #[arg(long)]
    check: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run_all(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("cairn-robustness: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run_all(args: Args) -> anyhow::Result<bool> {
    if let Some(path) = &args.check {
        let saved: Report = serde_json::from_slice(&std::fs::read(path)?)
            .with_context(|| format!("{} is not a saved report", path.display()))?;
        let committed = Committed::new(saved.final_revision, saved.committed);
        let report = run::check(saved.plan, saved.history, &committed);
        println!("{}", report.summary());
        return Ok(report.passed());
    }
    let nemeses = if args.nemesis.is_empty() {
        Nemesis::ALL.to_vec()
    } else {
        args.nemesis
    };
    let profiles = if args.profile.is_empty() {
        vec![Profile::Kv, Profile::Kubernetes, Profile::Leases]
    } else {
        args.profile
    };
    let member = member_program()?;
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut all_passed = true;
    let mut n = 0usize;
    while n == 0 || Instant::now() < deadline {
        let nemesis = nemeses[n % nemeses.len()];
        let profile = profiles[(n / nemeses.len()) % profiles.len()];
        let mut plan = Plan::new(
            &member,
            nemesis,
            profile,
            args.seed + n as u64,
            Duration::from_secs(args.run_seconds),
        );
        plan.members = args.members;
        plan.planted = args.planted.clone();
        let report = run::run(plan)?;
        println!("{}", report.summary());
        if !report.passed() {
            all_passed = false;
            let path = report.save(&args.save_to)?;
            for problem in &report.problems {
                eprintln!("{problem}");
            }
            eprintln!("history saved to {}", path.display());
        }
        n += 1;
    }
    Ok(all_passed)
}

/// The member program built with this one (`cairn-member`, beside it). `cargo run` builds only
/// the program it runs, so a member much older than this program is refused: it would test old
/// code. (Built together, the two are linked seconds apart, in either order.)
fn member_program() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's own path")?;
    let member = me.with_file_name("cairn-member");
    let built = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified());
    let member_built = built(&member).with_context(|| {
        format!(
            "cannot find the member program {} (build it: cargo build -p cairn-robustness)",
            member.display()
        )
    })?;
    let me_built = built(&me).context("cannot read this program's build time")?;
    if me_built.duration_since(member_built).unwrap_or_default() > Duration::from_secs(30) {
        anyhow::bail!(
            "{} is older than this program; build both: cargo build -p cairn-robustness",
            member.display()
        );
    }
    Ok(member)
}
