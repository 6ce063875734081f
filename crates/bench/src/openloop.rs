//! Open-loop, fixed-rate load: request `i` is due at `start + i / rate` whatever happened to
//! the earlier ones, and its latency is measured from its scheduled send (so a stall is
//! charged to every request it delayed, including those waiting for a free connection: no
//! coordinated omission). A dedicated OS thread keeps the schedule with `nanosleep` (tokio's
//! timer has 1 ms granularity, too coarse at 1,000 req/s) and hands each request, when due, to
//! a fixed set of connection workers.
//!
//! Two clocks are kept: from the moment the scheduler thread dispatched the request (the
//! primary figure), and from the ideal due time. They differ by how late the scheduler thread
//! itself woke up, which on a machine whose cores the servers share is the generator's own
//! error, not the server's latency; both are reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::{Mutex, mpsc};

use crate::client::{Conn, Outcome, Target};
use crate::hist::Lat;

#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    pub rate: f64,
    pub duration: Duration,
    /// Sent at the same rate before the measured part; not recorded.
    pub warmup: Duration,
    /// Connections (and workers): enough that a stall of one never holds back the schedule.
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct OpenLoopResult {
    /// From the scheduled send (as dispatched) to the last byte of the response.
    pub latency: Lat,
    /// From the ideal due time (adds the scheduler thread's wake-up lateness).
    pub from_due: Lat,
    /// From the moment the request was written to the last byte (what a closed-loop tool sees).
    pub service: Lat,
    /// How late the scheduler thread handed requests over (the generator's own error).
    pub lateness: Lat,
    pub outcome: Outcome,
    /// Measured requests per second actually completed.
    pub achieved_rate: f64,
}

struct Job {
    due: Instant,
    dispatched: Instant,
    measured: bool,
}

struct WorkerResult {
    latency: Lat,
    from_due: Lat,
    service: Lat,
    outcome: Outcome,
}

pub async fn run(target: Arc<Target>, cfg: OpenLoop) -> anyhow::Result<OpenLoopResult> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(anyhow!("the rate must be positive"));
    }
    let period_ns = (1e9 / cfg.rate).max(1.0);
    let warm = (cfg.rate * cfg.warmup.as_secs_f64()).round() as u64;
    let measured = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));

    let mut workers = Vec::with_capacity(cfg.connections.max(1));
    for _ in 0..cfg.connections.max(1) {
        workers.push(tokio::spawn(worker(target.clone(), rx.clone())));
    }
    // Let the workers park on the queue before the clock starts.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let start = Instant::now() + Duration::from_millis(5);
    let scheduler = std::thread::Builder::new()
        .name("bench-schedule".into())
        .spawn(move || -> anyhow::Result<Lat> {
            let mut lateness = Lat::new()?;
            for i in 0..warm + measured {
                let due = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let dispatched = Instant::now();
                lateness.record(dispatched.saturating_duration_since(due));
                if tx
                    .send(Job {
                        due,
                        dispatched,
                        measured: i >= warm,
                    })
                    .is_err()
                {
                    break;
                }
            }
            Ok(lateness)
        })
        .context("cannot start the scheduler thread")?;

    let mut latency = Lat::new()?;
    let mut from_due = Lat::new()?;
    let mut service = Lat::new()?;
    let mut outcome = Outcome::default();
    for w in workers {
        let r = w.await.map_err(|e| anyhow!("worker failed: {e}"))??;
        latency.merge(&r.latency)?;
        from_due.merge(&r.from_due)?;
        service.merge(&r.service)?;
        outcome.merge(r.outcome);
    }
    let ended = Instant::now();
    let lateness = scheduler
        .join()
        .map_err(|_| anyhow!("the scheduler thread panicked"))??;
    let measured_start = start + Duration::from_nanos((warm as f64 * period_ns) as u64);
    let elapsed = ended
        .saturating_duration_since(measured_start)
        .as_secs_f64();
    Ok(OpenLoopResult {
        latency,
        from_due,
        service,
        lateness,
        achieved_rate: if elapsed > 0.0 {
            outcome.ok as f64 / elapsed
        } else {
            0.0
        },
        outcome,
    })
}

async fn worker(
    target: Arc<Target>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
) -> anyhow::Result<WorkerResult> {
    let mut conn = Conn::new(target.addr);
    let mut r = WorkerResult {
        latency: Lat::new()?,
        from_due: Lat::new()?,
        service: Lat::new()?,
        outcome: Outcome::default(),
    };
    loop {
        let job = { rx.lock().await.recv().await };
        let Some(job) = job else { break };
        let req = target.request()?;
        let sent = Instant::now();
        let result = conn.unary(req).await;
        let done = Instant::now();
        if !job.measured {
            continue;
        }
        match result {
            Ok((status, _)) if status.is_success() => {
                r.outcome.ok += 1;
                r.latency
                    .record(done.saturating_duration_since(job.dispatched));
                r.from_due.record(done.saturating_duration_since(job.due));
                r.service.record(done.saturating_duration_since(sent));
            }
            Ok((status, body)) => r.outcome.status(status, &body),
            Err(e) => r.outcome.error(&e),
        }
    }
    Ok(r)
}
