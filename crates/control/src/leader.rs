//! Leadership: which control-plane replica runs the background jobs.
//!
//! Every replica serves gRPC; only the leader runs jobs (retention, and later token refresh,
//! usage polling and the Kubernetes controller). An elector (the PostgreSQL advisory lock in
//! [`postgres`], the Kubernetes Lease in `poolgate_k8s::lease`, or nothing in standalone) drives
//! a `watch` flag; [`Leadership`] is the read side every job watches, and
//! [`run_while_leading`] starts a job when leadership is gained and cancels it the moment it is
//! lost. The election narrows who acts, it does not make writes safe on its own: a token
//! refresh still takes a row lock and swaps the refresh token with a compare-and-set.

pub mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// A job that ended on its own while we still lead is restarted after this long, doubling up
/// to [`RESTART_MAX`], so a job that fails at once does not spin.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Whether this replica leads now, and a way to wait for that to change. Cheap to clone.
///
/// When the elector behind it is gone (its [`LeaderFlag`] dropped), it reads as not leading.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    // `always()` keeps its sender here, so its channel never reads as "elector gone".
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::always()
    }
}

impl Leadership {
    /// Always leading: standalone, a single replica, or tests.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// Follows a flag some elector sets (`true` while we lead), such as the Kubernetes Lease
    /// elector's receiver. When its sender is dropped, leadership reads as lost.
    pub fn from_receiver(rx: watch::Receiver<bool>) -> Self {
        Leadership { rx, _fixed: None }
    }

    /// A flag to drive by hand and the leadership that follows it; starts not leading.
    pub fn channel() -> (LeaderFlag, Leadership) {
        let (tx, rx) = watch::channel(false);
        (LeaderFlag { tx }, Leadership::from_receiver(rx))
    }

    /// The underlying flag, for code that takes a plain `watch::Receiver<bool>` (the
    /// Kubernetes controller). It never closes for [`Leadership::always`].
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow() && self.rx.has_changed().is_ok()
    }

    /// Resolves once this replica leads (at once if it does). Never resolves when the elector
    /// is gone.
    pub async fn wait_until_leading(&self) {
        let mut rx = self.rx.clone();
        loop {
            if *rx.borrow_and_update() && rx.has_changed().is_ok() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once this replica does not lead (at once if it does not), or the elector is
    /// gone.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        loop {
            if !*rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves at the next change of leadership; returns whether we lead after it. When the
    /// elector is gone it returns `false` once and then never resolves again.
    async fn changed(&self, last: bool) -> bool {
        let mut rx = self.rx.clone();
        loop {
            let now = *rx.borrow_and_update() && rx.has_changed().is_ok();
            if now != last {
                return now;
            }
            if rx.changed().await.is_err() {
                if last {
                    return false;
                }
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The elector's side of a [`Leadership`]. Dropping it clears the flag first, so an elector
/// that ends or panics never leaves anyone believing it still leads.
#[derive(Debug)]
pub struct LeaderFlag {
    tx: watch::Sender<bool>,
}

impl LeaderFlag {
    /// Sets whether we lead; returns whether that changed anything.
    pub fn set(&self, leading: bool) -> bool {
        self.tx.send_if_modified(|v| {
            let changed = *v != leading;
            *v = leading;
            changed
        })
    }

    pub fn get(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> Leadership {
        Leadership::from_receiver(self.tx.subscribe())
    }
}

impl Drop for LeaderFlag {
    fn drop(&mut self) {
        self.tx.send_replace(false);
    }
}

/// Aborts the task when dropped, so cancelling a supervisor cancels its job too.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `start()` as a task whenever `leadership` is held: the task starts when leadership is
/// gained, is aborted the moment it is lost (this waits for the cancellation, not for a tick of
/// the job), and starts afresh when leadership comes back. A job that ends on its own (or
/// panics) while we still lead is restarted after a backoff of 1 s doubling to 30 s: jobs are
/// meant to run for as long as we lead.
///
/// Runs until dropped; dropping it aborts the job.
pub async fn run_while_leading<F, Fut>(leadership: Leadership, job: &'static str, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        leadership.wait_until_leading().await;
        let mut backoff = RESTART_MIN;
        loop {
            tracing::debug!(job, "leading: starting the job");
            let mut task = AbortOnDrop(tokio::spawn(start()));
            tokio::select! {
                biased;
                _ = leadership.lost() => {
                    task.0.abort();
                    // Returns once the job is cancelled, at its next await point.
                    let _ = (&mut task.0).await;
                    tracing::info!(job, "leadership lost: job stopped");
                    break;
                }
                r = &mut task.0 => {
                    match r {
                        Err(e) if e.is_panic() => tracing::error!(
                            job,
                            restart_in = ?backoff,
                            "job panicked; restarting it"
                        ),
                        _ => tracing::warn!(job, restart_in = ?backoff, "job ended; restarting it"),
                    }
                }
            }
            tokio::select! {
                biased;
                _ = leadership.lost() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESTART_MAX);
        }
    }
}

/// Keeps the `poolgate_control_leader` gauge in step with `leadership` and logs each
/// transition. Runs until dropped.
pub(crate) async fn track(leadership: Leadership, metrics: Arc<Metrics>, node: String) {
    let mut leading = leadership.is_leader();
    metrics.set_leader(leading);
    if leading {
        tracing::info!(node = %node, "this replica leads: background jobs run here");
    } else {
        tracing::info!(node = %node, "this replica does not lead (yet): background jobs wait");
    }
    loop {
        leading = leadership.changed(leading).await;
        metrics.set_leader(leading);
        if leading {
            tracing::info!(node = %node, "leadership gained: starting background jobs");
        } else {
            tracing::warn!(node = %node, "leadership lost: background jobs stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn always_leads_and_never_loses() {
        let l = Leadership::always();
        assert!(l.is_leader());
        l.wait_until_leading().await;
        let lost = tokio::time::timeout(Duration::from_millis(50), l.lost()).await;
        assert!(lost.is_err(), "always() must never report lost");
        assert!(Leadership::default().is_leader());
    }

    #[tokio::test]
    async fn a_dropped_flag_reads_as_lost() {
        let (flag, l) = Leadership::channel();
        assert!(!l.is_leader());
        assert!(flag.set(true));
        assert!(!flag.set(true));
        assert!(l.is_leader());
        let lost = tokio::spawn({
            let l = l.clone();
            async move { l.lost().await }
        });
        drop(flag);
        tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .unwrap()
            .unwrap();
        assert!(!l.is_leader());
        // A gone elector never leads again.
        let wait = tokio::time::timeout(Duration::from_millis(50), l.wait_until_leading()).await;
        assert!(wait.is_err());
    }

    /// A job that counts starts and records, through a guard, when it is cancelled.
    fn counting_job(
        starts: Arc<AtomicUsize>,
        stops: Arc<AtomicUsize>,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move || {
            let (starts, stops) = (starts.clone(), stops.clone());
            Box::pin(async move {
                struct Stopped(Arc<AtomicUsize>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                starts.fetch_add(1, Ordering::SeqCst);
                let _guard = Stopped(stops);
                // Long enough that only cancellation can end it in these tests.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn jobs_start_on_gain_stop_at_once_on_loss_and_restart() {
        let (flag, l) = Leadership::channel();
        let starts = Arc::new(AtomicUsize::new(0));
        let stops = Arc::new(AtomicUsize::new(0));
        let sup = tokio::spawn(run_while_leading(
            l,
            "test",
            counting_job(starts.clone(), stops.clone()),
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "not leading: no job");

        flag.set(true);
        until("the job to start", || starts.load(Ordering::SeqCst) == 1).await;
        assert_eq!(stops.load(Ordering::SeqCst), 0);

        // Lost: the hour-long job is cancelled right away, not at its next tick.
        let t = std::time::Instant::now();
        flag.set(false);
        until("the job to stop", || stops.load(Ordering::SeqCst) == 1).await;
        assert!(t.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            1,
            "no restart while not leading"
        );

        flag.set(true);
        until("the job to restart", || starts.load(Ordering::SeqCst) == 2).await;

        // Dropping the supervisor cancels the job too.
        sup.abort();
        let _ = sup.await;
        until("the job to stop with its supervisor", || {
            stops.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_ends_is_restarted_with_backoff() {
        let (flag, l) = Leadership::channel();
        flag.set(true);
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        let sup = tokio::spawn(run_while_leading(l, "short", move || {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
            }
        }));
        // Starts at 0 s, then after 1 s, 2 s (t=3 s), 4 s (t=7 s).
        tokio::time::sleep(Duration::from_millis(7_500)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        flag.set(false);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4, "no restarts once lost");
        sup.abort();
    }

    #[tokio::test]
    async fn tracking_sets_the_gauge() {
        let (flag, l) = Leadership::channel();
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(track(l, metrics.clone(), "n1".into()));
        let gauge = |m: &Metrics| {
            m.encode()
                .unwrap()
                .lines()
                .find(|l| l.starts_with("poolgate_control_leader "))
                .map(str::to_string)
        };
        until("gauge 0", || {
            gauge(&metrics).as_deref() == Some("poolgate_control_leader 0")
        })
        .await;
        flag.set(true);
        until("gauge 1", || {
            gauge(&metrics).as_deref() == Some("poolgate_control_leader 1")
        })
        .await;
        drop(flag);
        until("gauge 0 after the elector is gone", || {
            gauge(&metrics).as_deref() == Some("poolgate_control_leader 0")
        })
        .await;
        task.abort();
    }
}
