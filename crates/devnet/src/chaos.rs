//! `devnet --chaos`: while the participants ping each other, one fault at a time is
//! injected into a random sequencer, domain-manager or mediator replica, devnet waits
//! until that replica is back and pings flow again, prints what it saw, and goes on.
//!
//! Faults come in seeded random rounds of nine: every fault kind against every component
//! kind once, each run of three holding every fault kind (see [`next_round`]); a domain
//! manager or mediator fault hits the active replica two times in three. Fault kinds:
//! - `kill`: SIGKILL, then the same command is started again after [`KILL_DOWNTIME`] (what a
//!   supervisor does after a crash);
//! - `pause`: SIGSTOP for 2–5 s (seeded), then SIGCONT (a hung process, sockets open);
//! - `restart`: SIGTERM, wait for the exit, start again (a rolling upgrade).
//!
//! The interruption of a fault is the time from its injection until the end of the first
//! approved ping that started after the injection (so it includes one ping round trip and
//! up to one ping interval even when the fault disturbs nothing).
//!
//! A component that exits without being told to is restarted as well, and fails the run.
//! See docs/devnet.md for the output and the exit code.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::net::{Devnet, STOP_GRACE, is_ready};
use crate::ping::{PingSetup, PingStats, parse_rtt_ms, ping};
use crate::procs::Kind;

/// How long a killed replica stays down before it is started again.
const KILL_DOWNTIME: Duration = Duration::from_secs(1);
/// Shortest and longest SIGSTOP.
const PAUSE_MIN: Duration = Duration::from_secs(2);
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long a faulted replica may take to be back (serving, or live with one active
/// replica in its pair).
const BACK_UP_BUDGET: Duration = Duration::from_secs(60);
/// How long after the replica is back a ping must have been approved.
const PINGS_BUDGET: Duration = Duration::from_secs(60);
/// How often state is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

/// What is done to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Pause,
    Restart,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Kill, Fault::Pause, Fault::Restart];

    fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Restart => "restart",
        }
    }
}

/// splitmix64: a tiny seeded generator, so that `--seed` reproduces a schedule with any
/// build (no dependency whose algorithm could change).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn duration_between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = (max - min).as_millis() as u64;
        min + Duration::from_millis(self.next_u64() % (span + 1))
    }
}

/// One ping and when it ran.
#[derive(Debug, Clone)]
struct PingRecord {
    started: Instant,
    finished: Instant,
    ok: bool,
    rtt_ms: Option<f64>,
}

type Pings = Arc<Mutex<Vec<PingRecord>>>;

fn lock(pings: &Pings) -> std::sync::MutexGuard<'_, Vec<PingRecord>> {
    pings.lock().unwrap_or_else(|p| p.into_inner())
}

/// One injected fault and what was observed.
#[derive(Debug, Clone)]
struct FaultRecord {
    n: usize,
    fault: Fault,
    component: String,
    kind: Kind,
    /// Back up and pings flowing again within the budgets.
    recovered: bool,
    /// From the injection until the first approved ping started after it.
    interruption: Option<Duration>,
}

/// For the `say!` macro in the pinger task.
struct Clock {
    started: Instant,
}

/// Runs the ping phase with faults; returns the ping figures, `healthy` only when every
/// fault was recovered from, no component exited on its own, and at the end every
/// replica is back and pings flow both ways.
pub async fn run(net: &mut Devnet, args: &Args, cancel: &CancellationToken) -> PingStats {
    #[expect(clippy::disallowed_methods, reason = "a seed, not a timestamp")]
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut rng = Rng(seed);
    let interval = args.ping_interval();
    match args.duration {
        Some(d) => say!(
            net,
            "chaos: pinging every {interval:?} for {d:?}; a fault every {:?} after the previous one recovered; seed {seed} (repeat with --seed {seed})",
            args.chaos_interval
        ),
        None => say!(
            net,
            "chaos: pinging every {interval:?} until Ctrl-C; a fault every {:?} after the previous one recovered; seed {seed} (repeat with --seed {seed})",
            args.chaos_interval
        ),
    }

    let pings: Pings = Arc::default();
    let stop_pinger = CancellationToken::new();
    let pinger = tokio::spawn(ping_task(
        net.pinger(),
        net.participants
            .iter()
            .map(|p| (p.name.clone(), p.member.clone(), p.admin.clone()))
            .collect(),
        interval,
        args.ping_timeout,
        pings.clone(),
        stop_pinger.clone(),
        net.started,
    ));

    let phase_start = Instant::now();
    let end = args.duration.map(|d| phase_start + d);
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut bag: Vec<(Fault, Kind)> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = match end {
            Some(end) if now >= end => break,
            Some(end) => args.chaos_interval.min(end - now),
            None => args.chaos_interval,
        };
        if !supervise_for(net, wait, &mut unexpected, cancel).await {
            break;
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        if bag.is_empty() {
            bag = next_round(&mut rng);
        }
        let Some((fault, kind)) = bag.pop() else {
            break;
        };
        let Some(idx) = pick_replica(net, kind, &mut rng).await else {
            break;
        };
        let pause = rng.duration_between(PAUSE_MIN, PAUSE_MAX);
        let record = inject(
            net,
            faults.len() + 1,
            idx,
            fault,
            pause,
            &pings,
            &mut unexpected,
            // A fault in progress is seen through to its recovery (bounded by the budgets)
            // even after Ctrl-C, so that devnet never stops a domain it left broken; a
            // second Ctrl-C still exits at once.
            &CancellationToken::new(),
        )
        .await;
        faults.push(record);
    }

    if cancel.is_cancelled() {
        say!(net, "chaos: stop requested; checking the domain once more");
    }
    // Not cut short by Ctrl-C either (bounded by the budgets; a second Ctrl-C exits).
    let final_ok = final_check(net, &pings, &mut unexpected, &CancellationToken::new()).await;
    stop_pinger.cancel();
    let _ = pinger.await;

    let records = lock(&pings).clone();
    let stats = PingStats {
        ok: records.iter().filter(|r| r.ok).count(),
        failed: records.iter().filter(|r| !r.ok).count(),
        rtts_ms: records.iter().filter_map(|r| r.rtt_ms).collect(),
        healthy: false,
    };
    let all_recovered = faults.iter().all(|f| f.recovered);
    print_summary(
        net,
        seed,
        phase_start.elapsed(),
        &faults,
        &stats,
        &unexpected,
    );
    let mut problems = Vec::new();
    if !all_recovered {
        let which: Vec<String> = faults
            .iter()
            .filter(|f| !f.recovered)
            .map(|f| format!("fault {} ({} {})", f.n, f.fault.as_str(), f.component))
            .collect();
        problems.push(format!("not recovered from {}", which.join(", ")));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} component exit(s) nobody asked for: {}",
            unexpected.len(),
            unexpected.join("; ")
        ));
    }
    if !final_ok {
        problems.push("at the end the domain was not back (see above)".to_owned());
    }
    if faults.is_empty() {
        problems.push(
            "no fault was injected (run longer than --chaos-interval, e.g. --duration 2m)"
                .to_owned(),
        );
    }
    if problems.is_empty() {
        say!(
            net,
            "chaos: PASSED: {} faults, every one recovered from; every replica is back and pings flow both ways",
            faults.len()
        );
    } else {
        for p in &problems {
            eprintln!("devnet: chaos: error: {p}");
        }
        say!(net, "chaos: FAILED: {}", problems.join("; "));
    }
    PingStats {
        healthy: problems.is_empty(),
        ..stats
    }
}

/// Shuffles `v` in place (Fisher–Yates).
fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The next nine faults, to be taken from the end: every (fault kind, component kind)
/// pair once, in three sub-rounds that each hold every fault kind and every component
/// kind once (a shuffled Latin square), so any three consecutive faults of a sub-round
/// cover all three fault kinds.
fn next_round(rng: &mut Rng) -> Vec<(Fault, Kind)> {
    let mut kinds = [Kind::Sequencer, Kind::DomainManager, Kind::Mediator];
    let mut faults = Fault::ALL;
    shuffle(&mut kinds, rng);
    shuffle(&mut faults, rng);
    let mut round = Vec::with_capacity(9);
    for j in 0..3 {
        let mut sub: Vec<(Fault, Kind)> = (0..3).map(|i| (faults[i], kinds[(i + j) % 3])).collect();
        shuffle(&mut sub, rng);
        round.extend(sub);
    }
    round.reverse();
    round
}

/// A replica of `kind` to fault: a random sequencer; for the active-passive kinds the
/// active replica two times in three (its failover is what there is to watch), else
/// the passive one.
async fn pick_replica(net: &Devnet, kind: Kind, rng: &mut Rng) -> Option<usize> {
    let of_kind: Vec<usize> = net
        .components
        .iter()
        .enumerate()
        .filter(|(_, c)| c.kind == kind)
        .map(|(i, _)| i)
        .collect();
    if of_kind.is_empty() {
        return None;
    }
    if kind == Kind::Sequencer {
        return Some(of_kind[rng.below(of_kind.len())]);
    }
    let mut active = Vec::new();
    let mut passive = Vec::new();
    for &i in &of_kind {
        if is_ready(&net.components[i].ops).await {
            active.push(i);
        } else {
            passive.push(i);
        }
    }
    let want_active = rng.below(3) < 2;
    let pool = match (want_active, active.is_empty(), passive.is_empty()) {
        (true, false, _) | (false, false, true) => active,
        (_, _, false) => passive,
        _ => of_kind,
    };
    Some(pool[rng.below(pool.len())])
}

/// Pings both ways every `interval` until `stop`, recording every ping; prints failures.
async fn ping_task(
    setup: PingSetup,
    participants: Vec<(String, String, String)>,
    interval: Duration,
    timeout: Duration,
    pings: Pings,
    stop: CancellationToken,
    started: Instant,
) {
    let clock = Clock { started };
    if participants.len() < 2 {
        return;
    }
    'rounds: loop {
        for (from, to) in [(0usize, 1usize), (1, 0)] {
            if stop.is_cancelled() {
                break 'rounds;
            }
            let (from_name, _, admin) = &participants[from];
            let (to_name, to_member, _) = &participants[to];
            let t = Instant::now();
            let result = tokio::select! {
                r = ping(&setup, admin, to_member, timeout) => r,
                _ = stop.cancelled() => break 'rounds,
            };
            let record = PingRecord {
                started: t,
                finished: Instant::now(),
                ok: result.is_ok(),
                rtt_ms: result.as_deref().ok().and_then(parse_rtt_ms),
            };
            lock(&pings).push(record);
            if let Err(e) = result {
                let e = e.lines().next().unwrap_or_default().to_owned();
                say!(clock, "    ping {from_name} -> {to_name} FAILED: {e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Sleeps `wait` while watching for components that exit on their own (restarting them);
/// false when a stop was requested.
async fn supervise_for(
    net: &mut Devnet,
    wait: Duration,
    unexpected: &mut Vec<String>,
    cancel: &CancellationToken,
) -> bool {
    let until = Instant::now() + wait;
    loop {
        restart_unexpected(net, None, unexpected);
        let now = Instant::now();
        if now >= until {
            return !cancel.is_cancelled();
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(POLL.min(until - now)) => {}
        }
    }
}

/// Restarts every component except `except` that exited although nobody stopped it, and
/// records it.
fn restart_unexpected(net: &mut Devnet, except: Option<usize>, unexpected: &mut Vec<String>) {
    let started = net.started;
    let clock = Clock { started };
    for (i, comp) in net.components.iter_mut().enumerate() {
        if Some(i) == except {
            continue;
        }
        let Some(status) = comp.exited() else {
            continue;
        };
        say!(
            clock,
            "chaos: {} exited on its own ({status}); last log lines of {}:\n{}",
            comp.name,
            comp.log.display(),
            comp.log_tail(10)
        );
        unexpected.push(format!("{} ({status})", comp.name));
        match comp.respawn() {
            Ok(()) => say!(
                clock,
                "chaos: started {} again (pid {})",
                comp.name,
                comp.pid()
            ),
            Err(e) => say!(clock, "chaos: cannot start {} again: {e:#}", comp.name),
        }
    }
}

/// Injects `fault` into component `idx`, waits until it is back and a ping started after
/// the injection was approved, and prints one line about it.
#[allow(clippy::too_many_arguments)]
async fn inject(
    net: &mut Devnet,
    n: usize,
    idx: usize,
    fault: Fault,
    pause: Duration,
    pings: &Pings,
    unexpected: &mut Vec<String>,
    cancel: &CancellationToken,
) -> FaultRecord {
    let (name, kind, ops) = {
        let c = &net.components[idx];
        (c.name.clone(), c.kind, c.ops.clone())
    };
    let role = kind.role(is_ready(&ops).await);
    let old_pid = net.components[idx].pid();
    let mut record = FaultRecord {
        n,
        fault,
        component: name.clone(),
        kind,
        recovered: false,
        interruption: None,
    };
    let injected = Instant::now();
    let action = match fault {
        Fault::Kill => {
            let comp = &mut net.components[idx];
            match comp.kill_now() {
                Ok(_) => {
                    tokio::time::sleep(KILL_DOWNTIME).await;
                    comp.respawn().map(|()| {
                        format!(
                            "SIGKILL, started again after {KILL_DOWNTIME:?} (pid {})",
                            comp.pid()
                        )
                    })
                }
                Err(e) => Err(e),
            }
        }
        Fault::Pause => {
            let comp = &mut net.components[idx];
            match comp.signal("STOP") {
                Ok(()) => {
                    tokio::time::sleep(pause).await;
                    comp.signal("CONT")
                        .map(|()| format!("SIGSTOP for {:.1} s, SIGCONT", pause.as_secs_f64()))
                }
                Err(e) => Err(e),
            }
        }
        Fault::Restart => {
            let comp = &mut net.components[idx];
            let t = Instant::now();
            let (status, killed) = comp.stop(STOP_GRACE).await;
            let stopped = t.elapsed();
            match comp.respawn() {
                Ok(()) if killed => Ok(format!(
                    "SIGTERM, did not exit within {STOP_GRACE:?} (killed), started again (pid {})",
                    comp.pid()
                )),
                Ok(()) => Ok(format!(
                    "SIGTERM, exited in {:.1} s ({}), started again (pid {})",
                    stopped.as_secs_f64(),
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    comp.pid()
                )),
                Err(e) => Err(e),
            }
        }
    };
    let action = match action {
        Ok(a) => a,
        Err(e) => {
            say!(
                net,
                "fault {n}: {} {name} ({role}, pid {old_pid}) could not be injected: {e:#}",
                fault.as_str()
            );
            return record;
        }
    };

    // Back up?
    let back = wait_back_up(net, idx, unexpected, cancel).await;
    let back_after = injected.elapsed();
    if let Err(e) = &back {
        say!(
            net,
            "fault {n}: {} {name} ({role}, pid {old_pid}): {action}; NOT back within {BACK_UP_BUDGET:?}: {e}",
            fault.as_str()
        );
        return record;
    }
    // Pings flowing again?
    let deadline = Instant::now() + PINGS_BUDGET;
    let resumed = loop {
        if let Some(r) = lock(pings)
            .iter()
            .find(|r| r.ok && r.started >= injected)
            .cloned()
        {
            break Some(r);
        }
        if Instant::now() >= deadline || cancel.is_cancelled() {
            break None;
        }
        restart_unexpected(net, None, unexpected);
        tokio::time::sleep(POLL).await;
    };
    let failed = |until: Instant| {
        lock(pings)
            .iter()
            .filter(|r| !r.ok && r.finished >= injected && r.finished <= until)
            .count()
    };
    match resumed {
        Some(r) => {
            let interruption = r.finished.saturating_duration_since(injected);
            record.recovered = true;
            record.interruption = Some(interruption);
            say!(
                net,
                "fault {n}: {} {name} ({role}, pid {old_pid}): {action}; back after {:.1} s; pings interrupted {:.1} s ({} failed)",
                fault.as_str(),
                back_after.as_secs_f64(),
                interruption.as_secs_f64(),
                failed(r.finished)
            );
        }
        None => say!(
            net,
            "fault {n}: {} {name} ({role}, pid {old_pid}): {action}; back after {:.1} s; NO ping approved within {PINGS_BUDGET:?} ({} failed)",
            fault.as_str(),
            back_after.as_secs_f64(),
            failed(Instant::now())
        ),
    }
    record
}

/// Waits until component `idx` is back: a sequencer serving (gRPC health over TLS), a
/// domain manager or mediator live with exactly one active replica of its kind.
async fn wait_back_up(
    net: &mut Devnet,
    idx: usize,
    unexpected: &mut Vec<String>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let deadline = Instant::now() + BACK_UP_BUDGET;
    loop {
        if cancel.is_cancelled() {
            return Err("stop requested".into());
        }
        if let Some(status) = net.components[idx].exited() {
            return Err(format!(
                "exited ({status}); last log lines of {}:\n{}",
                net.components[idx].log.display(),
                net.components[idx].log_tail(10)
            ));
        }
        restart_unexpected(net, Some(idx), unexpected);
        match component_up(net, idx).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether component `idx` is up (see [`wait_back_up`]).
async fn component_up(net: &Devnet, idx: usize) -> Result<(), String> {
    let comp = &net.components[idx];
    match comp.kind {
        Kind::Sequencer => domain_testkit::process::wait_for_health(
            &comp.grpc,
            net.tls.clone(),
            "",
            Duration::from_millis(500),
        )
        .await
        .map_err(|e| format!("{e:#}")),
        Kind::Participant => domain_testkit::process::wait_for_health(
            &comp.grpc,
            None,
            "",
            Duration::from_millis(500),
        )
        .await
        .map_err(|e| format!("{e:#}")),
        Kind::DomainManager | Kind::Mediator => {
            let live = format!("{}/health/live", comp.ops);
            if !domain_probe::get(&live, Duration::from_secs(1))
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return Err(format!("{} is not live", comp.name));
            }
            let mut active = Vec::new();
            for c in net.components.iter().filter(|c| c.kind == comp.kind) {
                if is_ready(&c.ops).await {
                    active.push(c.name.clone());
                }
            }
            if active.len() == 1 {
                Ok(())
            } else {
                Err(format!(
                    "{} active {}s: {active:?}",
                    active.len(),
                    comp.kind
                ))
            }
        }
    }
}

/// At the end: every component up and one ping approved each way, started now.
async fn final_check(
    net: &mut Devnet,
    pings: &Pings,
    unexpected: &mut Vec<String>,
    cancel: &CancellationToken,
) -> bool {
    let mut ok = true;
    for idx in 0..net.components.len() {
        if let Err(e) = wait_back_up(net, idx, unexpected, cancel).await {
            say!(
                net,
                "chaos: at the end {} is not back: {e}",
                net.components[idx].name
            );
            ok = false;
        }
    }
    // One approved ping in each direction, started after this point. The pinger
    // alternates directions, so two approved pings in a row started after `from` cover
    // both.
    let from = Instant::now();
    let deadline = from + PINGS_BUDGET;
    loop {
        let approved = lock(pings)
            .iter()
            .filter(|r| r.ok && r.started >= from)
            .count();
        if approved >= 2 {
            say!(
                net,
                "chaos: at the end every replica is back and pings flow ({} s to two approved pings)",
                format_args!("{:.1}", from.elapsed().as_secs_f64())
            );
            return ok;
        }
        if Instant::now() >= deadline {
            say!(
                net,
                "chaos: at the end pings do not flow: {approved} approved within {PINGS_BUDGET:?}"
            );
            return false;
        }
        restart_unexpected(net, None, unexpected);
        tokio::time::sleep(POLL).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `min / median / max` of `v` (sorted here), or `-`.
fn spread(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    format!(
        "{} / {} / {}",
        secs(v[0]),
        secs(v[v.len() / 2]),
        secs(v[v.len() - 1])
    )
}

/// The table at the end: faults by component kind and fault kind, how many were
/// recovered from, interruptions, pings.
fn print_summary(
    net: &Devnet,
    seed: u64,
    elapsed: Duration,
    faults: &[FaultRecord],
    pings: &PingStats,
    unexpected: &[String],
) {
    let recovered = faults.iter().filter(|f| f.recovered).count();
    say!(
        net,
        "chaos summary: {} faults in {:.0} s (seed {seed}), {recovered} recovered from",
        faults.len(),
        elapsed.as_secs_f64()
    );
    let mut rows = vec![vec![
        "component".to_string(),
        "kill".into(),
        "pause".into(),
        "restart".into(),
        "total".into(),
        "recovered".into(),
        "interruption min / median / max".into(),
    ]];
    let row = |label: &str, fs: &[&FaultRecord]| {
        let count = |k: Fault| fs.iter().filter(|f| f.fault == k).count().to_string();
        vec![
            label.to_string(),
            count(Fault::Kill),
            count(Fault::Pause),
            count(Fault::Restart),
            fs.len().to_string(),
            fs.iter().filter(|f| f.recovered).count().to_string(),
            spread(fs.iter().filter_map(|f| f.interruption).collect()),
        ]
    };
    let mut by_kind: BTreeMap<&str, Vec<&FaultRecord>> = BTreeMap::new();
    for k in [Kind::Sequencer, Kind::DomainManager, Kind::Mediator] {
        by_kind.insert(k.as_str(), Vec::new());
    }
    for f in faults {
        by_kind.entry(f.kind.as_str()).or_default().push(f);
    }
    for (label, fs) in &by_kind {
        rows.push(row(label, fs));
    }
    rows.push(row("total", &faults.iter().collect::<Vec<_>>()));
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                // Numbers right-aligned, names and spreads left-aligned.
                if i == 0 || i == r.len() - 1 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        println!("    {}", line.trim_end());
    }
    println!("    pings: {} ok, {} failed", pings.ok, pings.failed);
    let mut interruptions: Vec<(Duration, &FaultRecord)> = faults
        .iter()
        .filter_map(|f| f.interruption.map(|i| (i, f)))
        .collect();
    interruptions.sort_by_key(|(d, _)| *d);
    match interruptions.last() {
        Some((d, f)) => {
            println!(
                "    longest interruption: {} (fault {}: {} {})",
                secs(*d),
                f.n,
                f.fault.as_str(),
                f.component
            );
            println!(
                "    median interruption: {}",
                secs(interruptions[interruptions.len() / 2].0)
            );
        }
        None => {
            println!("    longest interruption: -");
            println!("    median interruption: -");
        }
    }
    println!("    unexpected exits: {}", unexpected.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let mut a = Rng(42);
        let mut b = Rng(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng(7);
        for _ in 0..1000 {
            assert!(r.below(6) < 6);
            let d = r.duration_between(PAUSE_MIN, PAUSE_MAX);
            assert!((PAUSE_MIN..=PAUSE_MAX).contains(&d));
        }
    }

    #[test]
    fn rounds_cover_every_pair_and_every_fault_kind_per_three() {
        let mut rng = Rng(3);
        for _ in 0..50 {
            let round = next_round(&mut rng);
            assert_eq!(round.len(), 9);
            for f in Fault::ALL {
                for k in [Kind::Sequencer, Kind::DomainManager, Kind::Mediator] {
                    assert_eq!(round.iter().filter(|p| **p == (f, k)).count(), 1);
                }
            }
            for sub in round.chunks(3) {
                for f in Fault::ALL {
                    assert!(sub.iter().any(|(g, _)| *g == f), "{sub:?}");
                }
            }
        }
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(vec![]), "-");
        assert_eq!(
            spread(vec![
                Duration::from_millis(3000),
                Duration::from_millis(1000),
                Duration::from_millis(2000)
            ]),
            "1.0 s / 2.0 s / 3.0 s"
        );
    }
}
