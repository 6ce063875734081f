//! Leader election on a PostgreSQL advisory lock, for deployments without Kubernetes (compose,
//! VMs).
//!
//! The elector keeps one connection of its own (never one from the store's pool: a pooled
//! connection is recycled and shared, and a session lock must live exactly as long as the
//! session that took it). It asks for `pg_try_advisory_lock(LEADER_LOCK)` every retry interval
//! and, once it holds the lock, runs `SELECT 1` every health interval with a timeout. Leadership
//! is reported lost the moment the connection breaks or a health query fails or is late; the
//! server releases the lock when the session ends, so another replica takes over at its next
//! try. The session also sets `idle_session_timeout`, so a leader that freezes (or is cut off)
//! loses the lock on the server side even when its socket looks alive.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::{AbortOnDrop, LeaderFlag, Leadership};

/// The advisory lock key: the ASCII of a short name, like the store's own locks, so it is
/// recognisable in `pg_locks`. Locks are per database: one database, one leader.
pub const LEADER_LOCK: i64 = i64::from_be_bytes(*b"pg_leadr");

/// `application_name` of the elector's session, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "poolgate-leader-election";

/// Timing of the PostgreSQL elector.
#[derive(Debug, Clone)]
pub struct PgElectorConfig {
    /// How often a replica that does not lead tries to take the lock (and reconnects after a
    /// failure).
    pub retry_interval: Duration,
    /// How often the leader checks its session with `SELECT 1`.
    pub health_interval: Duration,
    /// How long a connect, lock attempt or health query may take before it counts as failed.
    pub query_timeout: Duration,
    /// The server ends the session (releasing the lock) after this long without a query, so a
    /// frozen leader cannot hold the lock forever. Needs PostgreSQL 14+; ignored by older
    /// servers.
    pub idle_session_timeout: Duration,
}

impl Default for PgElectorConfig {
    fn default() -> Self {
        PgElectorConfig {
            retry_interval: Duration::from_secs(3),
            health_interval: Duration::from_secs(2),
            query_timeout: Duration::from_secs(2),
            idle_session_timeout: Duration::from_secs(10),
        }
    }
}

impl PgElectorConfig {
    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        let ms = Duration::from_millis;
        if self.retry_interval < ms(10) || self.health_interval < ms(10) {
            return Err("the retry and health intervals must be at least 10ms".into());
        }
        if self.query_timeout < ms(10) {
            return Err("the query timeout must be at least 10ms".into());
        }
        // The server must not end a healthy session between two health queries.
        if self.idle_session_timeout <= self.health_interval + self.query_timeout {
            return Err(
                "the idle session timeout must exceed the health interval plus the query timeout"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A running PostgreSQL elector. [`PgElector::shutdown`] releases the lock; dropping it
/// without that stops the elector and closes its connection, which releases the lock too.
pub struct PgElector {
    leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgElector")
            .field("leading", &self.leadership.is_leader())
            .finish_non_exhaustive()
    }
}

impl PgElector {
    /// Starts electing on the database `pg` points at. `identity` names this replica in logs.
    pub fn spawn(
        pg: &tokio_postgres::Config,
        identity: impl Into<String>,
        config: PgElectorConfig,
    ) -> Result<PgElector, String> {
        config.validate()?;
        let mut pg = pg.clone();
        pg.application_name(APPLICATION_NAME)
            .connect_timeout(config.query_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let (flag, leadership) = Leadership::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let elector = Elector {
            pg,
            identity: identity.into(),
            config,
            flag,
        };
        let task = tokio::spawn(elector.run(stop_rx));
        Ok(PgElector {
            leadership,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Follows this elector: true while it holds the lock.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stops electing: reports not leading first, then releases the lock and closes the
    /// session, so another replica can take over at its next try.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PgElector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Elector {
    pg: tokio_postgres::Config,
    identity: String,
    config: PgElectorConfig,
    flag: LeaderFlag,
}

/// Why a session ended.
enum End {
    /// Asked to stop.
    Stop,
    /// Failed; the message says why (never with credentials: tokio-postgres errors do not
    /// carry the password).
    Failed(String),
}

fn closed_reason(why: Result<String, oneshot::error::RecvError>) -> String {
    why.unwrap_or_else(|_| "the connection closed".to_string())
}

impl Elector {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut last_error: Option<String> = None;
        loop {
            match self.session(&mut stop).await {
                End::Stop => return,
                End::Failed(reason) => {
                    // A dead database yields the same error every few seconds: say it once.
                    if last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(
                            identity = %self.identity,
                            error = %reason,
                            "leader election on PostgreSQL: retrying"
                        );
                    } else {
                        tracing::debug!(error = %reason, "leader election on PostgreSQL: retrying");
                    }
                    last_error = Some(reason);
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.retry_interval) => {}
            }
        }
    }

    async fn connect(
        &self,
    ) -> Result<(Client, AbortOnDrop<()>, oneshot::Receiver<String>), String> {
        let (client, connection) =
            tokio::time::timeout(self.config.query_timeout, self.pg.connect(NoTls))
                .await
                .map_err(|_| "connecting to PostgreSQL timed out".to_string())?
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        // The connection future ends when the session does (backend terminated, socket
        // broken, server shut down); the session watches that to report a loss at once.
        let (closed_tx, closed_rx) = oneshot::channel();
        let driver = tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the connection closed".to_string(),
                Err(e) => format!("the connection broke: {e}"),
            };
            let _ = closed_tx.send(why);
        });
        let idle = format!("{}ms", self.config.idle_session_timeout.as_millis());
        if let Err(e) = tokio::time::timeout(
            self.config.query_timeout,
            client.execute(
                "SELECT set_config('idle_session_timeout', $1, false)",
                &[&idle],
            ),
        )
        .await
        .unwrap_or_else(|_| Ok(0))
        {
            // PostgreSQL before 14 has no such setting; the health checks still apply.
            tracing::debug!(error = %e, "cannot set idle_session_timeout on the election session");
        }
        Ok((client, AbortOnDrop(driver), closed_rx))
    }

    /// One database session: try for the lock until we hold it, then hold it while the
    /// session stays healthy.
    async fn session(&self, stop: &mut oneshot::Receiver<()>) -> End {
        let connected = tokio::select! {
            _ = &mut *stop => return End::Stop,
            c = self.connect() => c,
        };
        let (client, _driver, mut closed) = match connected {
            Ok(c) => c,
            Err(e) => return End::Failed(e),
        };
        let timeout = self.config.query_timeout;

        // Not leading: ask for the lock every retry interval.
        loop {
            let attempt = async {
                match tokio::time::timeout(
                    timeout,
                    client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
                )
                .await
                {
                    Err(_) => Err("taking the advisory lock timed out".to_string()),
                    Ok(Err(e)) => Err(format!("taking the advisory lock failed: {e}")),
                    Ok(Ok(row)) => row
                        .try_get::<_, bool>(0)
                        .map_err(|e| format!("unexpected answer to pg_try_advisory_lock: {e}")),
                }
            };
            let got = tokio::select! {
                biased;
                _ = &mut *stop => return End::Stop,
                why = &mut closed => return End::Failed(closed_reason(why)),
                r = attempt => r,
            };
            match got {
                Err(e) => return End::Failed(e),
                Ok(true) => break,
                Ok(false) => {}
            }
            tokio::select! {
                biased;
                _ = &mut *stop => return End::Stop,
                why = &mut closed => return End::Failed(closed_reason(why)),
                _ = tokio::time::sleep(self.config.retry_interval) => {}
            }
        }

        self.flag.set(true);
        tracing::info!(
            identity = %self.identity,
            lock = LEADER_LOCK,
            "leader election on PostgreSQL: took the advisory lock; leading"
        );
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; the lock query just proved the session.
        tick.tick().await;
        loop {
            let health = async {
                tick.tick().await;
                match tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await {
                    Err(_) => Err(format!(
                        "the health query took longer than {}ms",
                        timeout.as_millis()
                    )),
                    Ok(Err(e)) => Err(format!("the health query failed: {e}")),
                    Ok(Ok(_)) => Ok(()),
                }
            };
            let failed = tokio::select! {
                biased;
                _ = &mut *stop => {
                    self.release(&client).await;
                    return End::Stop;
                }
                why = &mut closed => closed_reason(why),
                r = health => match r {
                    Ok(()) => continue,
                    Err(e) => e,
                },
            };
            // Lost: say so before anything else, so jobs stop while the session goes away.
            self.flag.set(false);
            tracing::warn!(
                identity = %self.identity,
                reason = %failed,
                "leader election on PostgreSQL: lost the session holding the lock; not leading"
            );
            return End::Failed(failed);
        }
    }

    /// Reports not leading, then unlocks; closing the session (when `client` and the driver
    /// are dropped) would release the lock as well, this just makes it prompt and explicit.
    async fn release(&self, client: &Client) {
        self.flag.set(false);
        let unlocked = tokio::time::timeout(
            self.config.query_timeout,
            client.query_one("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]),
        )
        .await;
        match unlocked {
            Ok(Ok(_)) => tracing::info!(
                identity = %self.identity,
                "leader election on PostgreSQL: released the advisory lock"
            ),
            _ => tracing::debug!("unlock failed; closing the session releases the lock"),
        }
    }
}
