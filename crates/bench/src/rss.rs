//! What `/proc` says about the processes of a run: resident memory (`VmRSS` now, `VmHWM` the
//! peak since start) and CPU time, to tell how much of the machine other processes took while
//! the benchmark ran (the usual source of noisy tails on a shared 2-core machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

pub fn read(pid: u32) -> anyhow::Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status(&text).ok_or_else(|| anyhow!("{path} has no VmRSS/VmHWM"))
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Samples VmRSS every 50 ms until stopped; keeps the largest value seen.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_kb.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(mem) = read(pid) {
                    m.fetch_max(mem.rss_kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Sampler { stop, max_kb, task }
    }

    /// The largest VmRSS seen, in kB, and the VmHWM at the end.
    pub async fn finish(self, pid: u32) -> anyhow::Result<Mem> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let now = read(pid)?;
        Ok(Mem {
            rss_kb: self.max_kb.load(Ordering::Relaxed).max(now.rss_kb),
            hwm_kb: now.hwm_kb,
        })
    }
}

/// CPU ticks (user + system, all threads) a process has used, from `/proc/PID/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `pid` and all its descendants (nginx's workers, for one).
fn with_descendants(pid: u32, out: &mut Vec<u32>) {
    if out.contains(&pid) || out.len() > 4096 {
        return;
    }
    out.push(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            with_descendants(child, out);
        }
    }
}

/// (all ticks, idle ticks) of the whole machine, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: guest time is already in user.
    let total = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Shares of the machine's CPU over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Busy, all processes.
    pub busy: f64,
    /// Busy in the benchmark's own processes (generator, mock, nginx, poolgate).
    pub own: f64,
}

impl CpuShare {
    /// What other processes on the machine took.
    pub fn foreign(&self) -> f64 {
        (self.busy - self.own).max(0.0)
    }
}

/// Measures CPU use from `start` to `finish`.
#[derive(Debug, Clone)]
pub struct CpuWatch {
    pids: Vec<u32>,
    machine: Option<(u64, u64)>,
    own: u64,
}

impl CpuWatch {
    /// `pids` (with their descendants) and this process are "own".
    pub fn start(pids: &[u32]) -> CpuWatch {
        let mut all = Vec::new();
        with_descendants(std::process::id(), &mut all);
        for p in pids {
            with_descendants(*p, &mut all);
        }
        let own = all.iter().filter_map(|p| process_ticks(*p)).sum();
        CpuWatch {
            pids: all,
            machine: machine_ticks(),
            own,
        }
    }

    pub fn finish(&self) -> Option<CpuShare> {
        let (t0, i0) = self.machine?;
        let (t1, i1) = machine_ticks()?;
        let total = t1.checked_sub(t0).filter(|t| *t > 0)? as f64;
        let idle = i1.saturating_sub(i0) as f64;
        let own: u64 = self.pids.iter().filter_map(|p| process_ticks(*p)).sum();
        Some(CpuShare {
            busy: (1.0 - idle / total).clamp(0.0, 1.0),
            own: (own.saturating_sub(self.own) as f64 / total).clamp(0.0, 1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tpoolgate\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Mem {
                rss_kb: 40960,
                hwm_kb: 51200
            })
        );
        assert_eq!(parse_status("Name:\tkthread\n"), None);
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
        assert_eq!(mb(2048), 2.0);
    }

    #[test]
    fn cpu_of_own_work_counts_as_own() {
        let me = std::process::id();
        assert!(process_ticks(me).is_some());
        let mut family = Vec::new();
        with_descendants(me, &mut family);
        assert_eq!(family.first(), Some(&me));
        let w = CpuWatch::start(&[]);
        // Burn ~300 ms of CPU in this process: it must show up as own, not foreign.
        let until = std::time::Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let share = w.finish().unwrap();
        assert!(share.own > 0.0, "{share:?}");
        assert!(share.busy >= share.own * 0.5, "{share:?}");
        assert!((0.0..=1.0).contains(&share.foreign()));
    }
}
