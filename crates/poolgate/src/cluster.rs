//! `poolgate control` with replicas: leader election (a Kubernetes Lease, a PostgreSQL advisory
//! lock, or none), the Kubernetes controller switch, and the routing-policy file that seeds the
//! store on first start.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use poolgate_control::leader::postgres::{PgElector, PgElectorConfig};
use poolgate_control::{ControlPlane, Leadership};
use poolgate_core::RoutingPolicy;
use poolgate_k8s::lease::{DEFAULT_LEASE_NAME, LeaseConfig, LeaseElector};
use poolgate_store::Store;
use serde_json::Value;
use tokio::sync::watch;

use crate::{Failure, config_err, control_failure, one_line};

/// Where Kubernetes mounts the pod's namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// Set in every container Kubernetes runs.
const IN_CLUSTER_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// The audit log's actor for a policy seeded from the file.
const POLICY_ACTOR: &str = "routing-policy-file";
/// A policy is a few hundred bytes; anything near this is not one.
const MAX_POLICY_FILE: u64 = 1 << 20;
const POLICY_FLAG: &str = "--routing-policy-file / POOLGATE_ROUTING_POLICY_FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaderElection {
    /// `kubernetes` when running in a Kubernetes pod, else `postgres`.
    Auto,
    /// A coordination.k8s.io Lease (`--lease-name` in `--namespace`).
    Kubernetes,
    /// A PostgreSQL advisory lock on a connection of its own.
    Postgres,
    /// Always lead: only for a single replica.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// On when running in a Kubernetes pod.
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// This replica's name: shown per gateway, and (with a random suffix per process) the
    /// Lease holder identity. Default: HOSTNAME (the pod name), else control@<gRPC address>.
    #[arg(long, env = "POOLGATE_NODE_NAME")]
    pub node_name: Option<String>,
    /// How replicas elect the one that runs background jobs (auto: kubernetes when
    /// KUBERNETES_SERVICE_HOST is set, else postgres).
    #[arg(long, env = "POOLGATE_LEADER_ELECTION", value_enum, default_value_t = LeaderElection::Auto)]
    pub leader_election: LeaderElection,
    /// The Lease used for leader election in Kubernetes.
    #[arg(long, env = "POOLGATE_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the Lease and of the watched resources. Default: the pod's namespace
    /// (from its service account), else `default`.
    #[arg(long, env = "POOLGATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconcile UpstreamAccount and PlatformKey resources in --namespace (on the leader only;
    /// auto: on when KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "POOLGATE_KUBERNETES_CONTROLLER", value_enum, default_value_t = Toggle::Auto)]
    pub kubernetes_controller: Toggle,
    /// A routing policy (YAML or JSON; fields left out keep their defaults) saved at start
    /// when the store has none yet. Afterwards the admin API is the way to change it.
    #[arg(long, env = "POOLGATE_ROUTING_POLICY_FILE")]
    pub routing_policy_file: Option<PathBuf>,
}

/// Which elector runs, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    Kubernetes,
    Postgres,
    None,
}

/// What the flags resolve to, checked before anything connects.
#[derive(Debug)]
pub struct ClusterPlan {
    pub election: Election,
    pub controller: bool,
    pub namespace: String,
    pub lease_name: String,
    pub policy: Option<RoutingPolicy>,
}

impl ClusterArgs {
    /// Resolves `auto` settings (`in_cluster`: KUBERNETES_SERVICE_HOST is set) and reads the
    /// policy file. Every error names its flag.
    pub fn plan(
        &self,
        in_cluster: bool,
        pod_namespace: Option<String>,
    ) -> Result<ClusterPlan, Failure> {
        let election = match self.leader_election {
            LeaderElection::Auto if in_cluster => Election::Kubernetes,
            LeaderElection::Auto | LeaderElection::Postgres => Election::Postgres,
            LeaderElection::Kubernetes => Election::Kubernetes,
            LeaderElection::None => Election::None,
        };
        let controller = match self.kubernetes_controller {
            Toggle::Auto => in_cluster,
            Toggle::On => true,
            Toggle::Off => false,
        };
        if election == Election::Kubernetes {
            poolgate_k8s::lease::check_name(&self.lease_name)
                .map_err(|e| config_err("--lease-name / POOLGATE_LEASE_NAME", e))?;
        }
        let namespace = self
            .namespace
            .clone()
            .or(pod_namespace)
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        if (election == Election::Kubernetes || controller)
            && poolgate_k8s::lease::check_name(&namespace).is_err()
        {
            return Err(Failure::Config(format!(
                "--namespace / POOLGATE_NAMESPACE: {namespace:?} is not a valid namespace name"
            )));
        }
        let policy = match &self.routing_policy_file {
            Some(path) => Some(load_policy(path).map_err(|e| {
                Failure::Config(one_line(&format!("{POLICY_FLAG} {}: {e}", path.display())))
            })?),
            None => None,
        };
        Ok(ClusterPlan {
            election,
            controller,
            namespace,
            lease_name: self.lease_name.clone(),
            policy,
        })
    }
}

/// Whether this process runs in a Kubernetes pod.
pub fn in_cluster() -> bool {
    std::env::var_os(IN_CLUSTER_ENV).is_some_and(|v| !v.is_empty())
}

/// The pod's namespace, when Kubernetes mounted it.
pub fn pod_namespace() -> Option<String> {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok()
}

/// Reads a routing policy: YAML (or JSON, which is YAML too), at most 1 MiB, laid over the
/// defaults, validated like the admin API does.
pub fn load_policy(path: &Path) -> Result<RoutingPolicy, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_POLICY_FILE {
        return Err("larger than 1 MiB; not a routing policy".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_policy(&text)
}

pub fn parse_policy(text: &str) -> Result<RoutingPolicy, String> {
    let doc: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML or JSON: {e}"))?;
    if !doc.is_object() {
        return Err("expected a mapping of routing-policy fields (strategy, p2c_window, …)".into());
    }
    let defaults = serde_json::to_value(RoutingPolicy::default())
        .map_err(|e| format!("cannot represent the default policy: {e}"))?;
    let mut merged = defaults.clone();
    overlay(&mut merged, doc.clone(), "")?;
    let policy: RoutingPolicy = serde_json::from_value(merged).map_err(|e| {
        // serde_json does not say which field had the wrong type: find it by trying each
        // field of the file alone over the defaults.
        let culprit = doc.as_object().and_then(|fields| {
            fields.iter().find_map(|(key, value)| {
                let mut one = defaults.clone();
                overlay(
                    &mut one,
                    Value::Object([(key.clone(), value.clone())].into_iter().collect()),
                    "",
                )
                .ok()?;
                serde_json::from_value::<RoutingPolicy>(one)
                    .is_err()
                    .then_some(key)
            })
        });
        match culprit {
            Some(key) => format!("{key}: {e}"),
            None => e.to_string(),
        }
    })?;
    policy.validate().map_err(|e| e.to_string())?;
    Ok(policy)
}

/// Lays `over` onto `base` field by field; a field `base` does not have is a typo, refused.
fn overlay(base: &mut Value, over: Value, at: &str) -> Result<(), String> {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match base.get_mut(&key) {
                    Some(slot) => overlay(slot, value, &path)?,
                    None => return Err(format!("unknown field {path:?}")),
                }
            }
            Ok(())
        }
        (slot, value) => {
            *slot = value;
            Ok(())
        }
    }
}

/// The Lease holder identity: the replica's name (the pod name) and a random suffix, so two
/// processes never share an identity (a restarted pod with the same name, a copied
/// `--node-name`): sharing one would let both believe they hold the Lease.
fn lease_identity(node: &str) -> String {
    // RandomState is seeded from the OS per process: enough to tell processes apart.
    let suffix = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{node}_{:08x}", suffix & 0xffff_ffff)
}

enum Elector {
    None,
    Postgres(PgElector),
    Kubernetes(LeaseElector),
}

impl Elector {
    fn leadership(&self) -> Leadership {
        match self {
            Elector::None => Leadership::always(),
            Elector::Postgres(e) => e.leadership(),
            Elector::Kubernetes(e) => Leadership::from_receiver(e.leadership()),
        }
    }

    /// Stops electing and hands leadership over (lock released, Lease cleared).
    async fn shutdown(self) {
        match self {
            Elector::None => {}
            Elector::Postgres(e) => e.shutdown().await,
            Elector::Kubernetes(e) => e.shutdown().await,
        }
    }
}

async fn kube_client() -> Result<kube::Client, Failure> {
    // kube's rustls takes the process-wide provider.
    poolgate_upstream::install_crypto_provider();
    kube::Client::try_default().await.map_err(|e| {
        config_err(
            "--leader-election / --kubernetes-controller: cannot configure the Kubernetes client \
             (in-cluster service account or kubeconfig)",
            e,
        )
    })
}

/// Serves the bound control plane with leader election until `shutdown` resolves. On
/// shutdown the controller stops and leadership is handed over first, while the control
/// plane drains its calls, so another replica takes over without waiting for a timeout.
pub async fn serve(
    plane: ControlPlane,
    store: Arc<dyn Store>,
    plan: ClusterPlan,
    pg: &tokio_postgres::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    if let Some(policy) = &plan.policy {
        let seeded = store.seed_policy(policy, POLICY_ACTOR).await.map_err(|e| {
            Failure::Runtime(one_line(&format!("cannot save the routing policy: {e}")))
        })?;
        if seeded {
            tracing::info!("routing policy saved from the policy file (none was stored)");
        } else {
            tracing::info!(
                "routing policy file ignored: the store already has a policy (change it with \
                 the admin API)"
            );
        }
    }

    let kube = if plan.election == Election::Kubernetes || plan.controller {
        Some(kube_client().await?)
    } else {
        None
    };
    let identity = lease_identity(plane.node_name());
    let elector = match plan.election {
        Election::Kubernetes => {
            let client = kube.clone().ok_or_else(|| {
                Failure::Runtime("leader election on a Lease needs a Kubernetes client".into())
            })?;
            let e = LeaseElector::spawn(
                client,
                &plan.namespace,
                &plan.lease_name,
                &identity,
                LeaseConfig::default(),
            )
            .map_err(|e| config_err("--leader-election kubernetes", e))?;
            tracing::info!(
                namespace = %plan.namespace,
                lease = %plan.lease_name,
                %identity,
                "leader election on a Kubernetes Lease"
            );
            Elector::Kubernetes(e)
        }
        Election::Postgres => {
            let e = PgElector::spawn(pg, identity.clone(), PgElectorConfig::default())
                .map_err(|e| config_err("--leader-election postgres", e))?;
            tracing::info!(%identity, "leader election on a PostgreSQL advisory lock");
            Elector::Postgres(e)
        }
        Election::None => {
            tracing::warn!(
                "leader election disabled (--leader-election none): this replica always leads; \
                 run only one"
            );
            Elector::None
        }
    };
    let leadership = elector.leadership();
    let plane = plane.with_leadership(leadership.clone());
    let controller = match (plan.controller, kube) {
        (true, Some(client)) => {
            tracing::info!(
                namespace = %plan.namespace,
                "Kubernetes controller enabled; it runs on the leader"
            );
            Some(tokio::spawn(poolgate_k8s::controller::run_while_leading(
                client,
                plan.namespace.clone(),
                store.clone(),
                leadership.receiver(),
            )))
        }
        _ => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            stop_tx.send_replace(true);
        }
    });
    let stopping = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let leader_side = {
        let stopped = stopping(stop_rx.clone());
        async move {
            stopped.await;
            if let Some(c) = controller {
                c.abort();
                let _ = c.await;
            }
            elector.shutdown().await;
        }
    };
    let control_side = async {
        let r = plane.run(stopping(stop_rx.clone())).await;
        // Also when the server failed on its own: stop the rest.
        stop_tx.send_replace(true);
        r
    };
    let (result, ()) = tokio::join!(control_side, leader_side);
    signal.abort();
    result.map_err(control_failure)?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    fn args(argv: &[&str]) -> ClusterArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).unwrap().cluster
    }

    #[test]
    fn flags_resolve_auto_by_environment() {
        let a = args(&[]);
        assert_eq!(a.leader_election, LeaderElection::Auto);
        assert_eq!(a.kubernetes_controller, Toggle::Auto);
        assert_eq!(a.lease_name, "poolgate-control-leader");
        assert!(a.namespace.is_none() && a.node_name.is_none());
        let p = a.plan(false, None).unwrap();
        assert_eq!(
            (p.election, p.controller, p.namespace.as_str()),
            (Election::Postgres, false, "default")
        );
        let p = a.plan(true, Some("team-a\n".into())).unwrap();
        assert_eq!(
            (p.election, p.controller, p.namespace.as_str()),
            (Election::Kubernetes, true, "team-a")
        );

        let a = args(&[
            "--leader-election",
            "none",
            "--kubernetes-controller",
            "on",
            "--namespace",
            "ns1",
            "--lease-name",
            "my-lease",
            "--node-name",
            "cp-0",
        ]);
        assert_eq!(a.node_name.as_deref(), Some("cp-0"));
        let p = a.plan(true, Some("ignored".into())).unwrap();
        assert_eq!(
            (p.election, p.controller, p.namespace.as_str()),
            (Election::None, true, "ns1")
        );
        assert_eq!(p.lease_name, "my-lease");
        let p = args(&[
            "--leader-election",
            "postgres",
            "--kubernetes-controller",
            "off",
        ])
        .plan(true, None)
        .unwrap();
        assert_eq!((p.election, p.controller), (Election::Postgres, false));

        let x = |argv: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(argv);
            Cli::try_parse_from(all).is_err()
        };
        assert!(x(&["--leader-election", "raft"]));
        assert!(x(&["--kubernetes-controller", "maybe"]));
    }

    #[test]
    fn bad_lease_and_namespace_names_name_their_flag() {
        let Err(Failure::Config(e)) = args(&["--lease-name", "Bad_Name"]).plan(true, None) else {
            panic!("expected a configuration error")
        };
        assert!(e.starts_with("--lease-name / POOLGATE_LEASE_NAME"), "{e}");
        // Only checked when the Lease is used.
        args(&["--lease-name", "Bad_Name", "--leader-election", "postgres"])
            .plan(false, None)
            .unwrap();
        let Err(Failure::Config(e)) = args(&["--namespace", "Not A Namespace"]).plan(true, None)
        else {
            panic!("expected a configuration error")
        };
        assert!(e.starts_with("--namespace / POOLGATE_NAMESPACE"), "{e}");
    }

    #[test]
    fn policy_files_overlay_the_defaults() {
        let p = parse_policy("strategy: balanced\nquota_guard:\n  enabled: false\n").unwrap();
        let d = RoutingPolicy::default();
        assert_eq!(p.strategy, poolgate_core::Strategy::Balanced);
        assert!(!p.quota_guard.enabled);
        assert_eq!(
            p.quota_guard.min_weekly_remaining_percent,
            d.quota_guard.min_weekly_remaining_percent
        );
        assert_eq!(p.cooldown_429_secs, d.cooldown_429_secs);
        let json = parse_policy(r#"{"p2c_window": 5, "cooldown_429_secs": [10, 20]}"#).unwrap();
        assert_eq!((json.p2c_window, json.cooldown_429_secs), (5, vec![10, 20]));
        // A complete policy round-trips.
        let full = serde_json::to_string(&d).unwrap();
        assert_eq!(parse_policy(&full).unwrap(), d);
        // Model aliases, as docker/routing-policy.yaml and the chart show them.
        let aliased = parse_policy(
            "model_aliases:\n  - {from: \"claude-haiku-*\", to: \"gpt-5-mini\"}\n  - {from: \"claude-*\", to: gpt-5}\n",
        )
        .unwrap();
        assert_eq!(
            aliased.resolve_alias("claude-haiku-4-5"),
            Some("gpt-5-mini")
        );
        assert_eq!(aliased.resolve_alias("claude-opus-4-1"), Some("gpt-5"));
        assert_eq!(aliased.strategy, d.strategy);

        for (text, needle) in [
            ("strategy: [", "not valid YAML or JSON"),
            ("", "expected a mapping"),
            ("- 1\n- 2\n", "expected a mapping"),
            ("p2c_windw: 3\n", "unknown field \"p2c_windw\""),
            (
                "quota_guard:\n  enabld: true\n",
                "unknown field \"quota_guard.enabld\"",
            ),
            ("strategy: random\n", "strategy"),
            ("p2c_window: 0\n", "p2c_window"),
            ("p2c_window: -1\n", "p2c_window"),
            ("cooldown_429_secs: [60, 10]\n", "cooldown_429_secs"),
            (
                "model_aliases: [{from: claude-*, too: gpt-5}]\n",
                "model_aliases",
            ),
            ("model_aliases: [{from: claude-*, to: gpt-*}]\n", "[0].to"),
        ] {
            let e = parse_policy(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn bad_policy_files_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("policy.yaml");
        std::fs::write(&bad, "p2c_window: 0\n").unwrap();
        let a = args(&["--routing-policy-file", bad.to_str().unwrap()]);
        let Err(Failure::Config(e)) = a.plan(false, None) else {
            panic!("expected a configuration error")
        };
        assert!(
            e.starts_with("--routing-policy-file / POOLGATE_ROUTING_POLICY_FILE"),
            "{e}"
        );
        assert!(e.contains("p2c_window") && !e.contains('\n'), "{e}");
        let missing = dir.path().join("nope.yaml");
        let a = args(&["--routing-policy-file", missing.to_str().unwrap()]);
        assert!(matches!(a.plan(false, None), Err(Failure::Config(_))));
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, " ".repeat((MAX_POLICY_FILE + 1) as usize)).unwrap();
        assert!(load_policy(&big).unwrap_err().contains("1 MiB"));
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"strategy": "balanced"}"#).unwrap();
        let p = args(&["--routing-policy-file", good.to_str().unwrap()])
            .plan(false, None)
            .unwrap();
        assert_eq!(
            p.policy.unwrap().strategy,
            poolgate_core::Strategy::Balanced
        );
    }

    #[test]
    fn lease_identities_differ_per_process_start() {
        let (a, b) = (lease_identity("cp-0"), lease_identity("cp-0"));
        assert!(a.starts_with("cp-0_") && b.starts_with("cp-0_"));
        assert_eq!(a.len(), "cp-0_".len() + 8);
        assert_ne!(a, b);
    }
}
