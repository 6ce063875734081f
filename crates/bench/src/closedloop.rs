//! Closed-loop maximum throughput: C connections, each sending its next request as soon as the
//! previous response has been read in full. Requests completed inside the measured window
//! (after the warm-up) count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::client::{Conn, Outcome, Target};
use crate::hist::Lat;

#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

#[derive(Debug, Clone)]
pub struct ClosedLoopResult {
    pub latency: Lat,
    pub outcome: Outcome,
    pub rps: f64,
}

pub async fn run(target: Arc<Target>, cfg: ClosedLoop) -> anyhow::Result<ClosedLoopResult> {
    let start = Instant::now();
    let window_start = start + cfg.warmup;
    let end = window_start + cfg.duration;
    let mut tasks = Vec::with_capacity(cfg.connections.max(1));
    for _ in 0..cfg.connections.max(1) {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target.addr);
            let mut lat = Lat::new()?;
            let mut outcome = Outcome::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = conn.unary(target.request()?).await;
                let done = Instant::now();
                if done < window_start || done > end {
                    continue;
                }
                match result {
                    Ok((status, _)) if status.is_success() => {
                        outcome.ok += 1;
                        lat.record(done - sent);
                    }
                    Ok((status, body)) => outcome.status(status, &body),
                    Err(e) => {
                        outcome.error(&e);
                        // A refused connection would otherwise spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            anyhow::Ok((lat, outcome))
        }));
    }
    let mut latency = Lat::new()?;
    let mut outcome = Outcome::default();
    for t in tasks {
        let (lat, o) = t.await.map_err(|e| anyhow!("worker failed: {e}"))??;
        latency.merge(&lat)?;
        outcome.merge(o);
    }
    let secs = cfg.duration.as_secs_f64();
    Ok(ClosedLoopResult {
        rps: if secs > 0.0 {
            outcome.ok as f64 / secs
        } else {
            0.0
        },
        latency,
        outcome,
    })
}
