//! Properties of routing that must hold for every input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use poolgate_core::{
    AccountStatus, Provider, QuotaGuard, RoutingPolicy, StatusReason, Strategy as RouteStrategy,
    UsageSnapshot, UsageWindow,
};
use poolgate_routing::{
    AccountHealth, OFFENSE_MEMORY_MS, Outcome, Pick, ProviderSet, RouteAccount, RouteRequest,
    Router, SplitMix64, Tuning, power_of_two, rendezvous_pick,
};
use proptest::prelude::*;
use proptest::sample::subsequence;

const NOW: i64 = 1_700_000_000_000;

fn unique_ids(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set("[a-z0-9_]{1,12}", 1..max).prop_map(|s| s.into_iter().collect())
}

fn fresh(_: usize, _: &RouteAccount) -> AccountHealth {
    AccountHealth::default()
}

fn first_id(router: &Router, accounts: &[RouteAccount], anchor: &str, seed: u64) -> String {
    let req = RouteRequest {
        anchor: Some(anchor),
        ..RouteRequest::new("m", "k")
    };
    let plan = router.plan(
        accounts,
        &req,
        &fresh,
        NOW,
        seed,
        &mut SplitMix64::new(seed),
    );
    let c = plan.candidates[0];
    assert_eq!(c.pick, Pick::Affinity);
    accounts[c.index].id.clone()
}

fn codex(id: &str) -> RouteAccount {
    RouteAccount::new(id, Provider::Codex)
}

proptest! {
    /// Same anchor and same set, in any order and with any randomness: same account.
    #[test]
    fn rendezvous_is_stable(ids in unique_ids(40), anchor in ".{0,40}", seed in any::<u64>()) {
        let forward = rendezvous_pick(&anchor, ids.iter().map(String::as_str)).unwrap();
        let mut shuffled = ids.clone();
        let mut rng = SplitMix64::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, poolgate_routing::Rng::below(&mut rng, i + 1));
        }
        let again = rendezvous_pick(&anchor, shuffled.iter().map(String::as_str)).unwrap();
        prop_assert_eq!(&ids[forward], &shuffled[again]);

        // Through the router: two replicas with different randomness and account order agree.
        for strategy in [RouteStrategy::Ordered, RouteStrategy::Balanced] {
            let router = Router::new(RoutingPolicy { strategy, ..RoutingPolicy::default() });
            let a: Vec<RouteAccount> = ids.iter().map(|i| codex(i)).collect();
            let b: Vec<RouteAccount> = shuffled.iter().map(|i| codex(i)).collect();
            prop_assert_eq!(first_id(&router, &a, &anchor, seed), ids[forward].clone());
            prop_assert_eq!(first_id(&router, &b, &anchor, seed ^ 0x55), ids[forward].clone());
        }
    }

    /// Removing one account moves only the anchors that were on it.
    #[test]
    fn rendezvous_moves_only_the_removed_accounts_anchors(
        ids in unique_ids(30).prop_filter("two or more", |v| v.len() >= 2),
        anchors in prop::collection::vec("[a-zA-Z0-9-]{1,24}", 1..60),
        removed_pick in any::<prop::sample::Index>(),
    ) {
        let removed = removed_pick.index(ids.len());
        let remaining: Vec<String> =
            ids.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
        let router = Router::default();
        let all: Vec<RouteAccount> = ids.iter().map(|i| codex(i)).collect();
        let fewer: Vec<RouteAccount> = remaining.iter().map(|i| codex(i)).collect();
        for anchor in &anchors {
            let before = &ids[rendezvous_pick(anchor, ids.iter().map(String::as_str)).unwrap()];
            let after = &remaining[rendezvous_pick(anchor, remaining.iter().map(String::as_str)).unwrap()];
            if *before == ids[removed] {
                prop_assert_ne!(after, &ids[removed]);
            } else {
                prop_assert_eq!(before, after);
            }
            let (pb, pa) = (first_id(&router, &all, anchor, 1), first_id(&router, &fewer, anchor, 2));
            prop_assert_eq!(&pb, before);
            prop_assert_eq!(&pa, after);
        }
    }

    /// power_of_two returns an index inside the window, and the cheaper of what it compared.
    #[test]
    fn p2c_stays_in_its_window(
        costs in prop::collection::vec(any::<f64>(), 0..80),
        window in 0usize..100,
        seed in any::<u64>(),
    ) {
        let mut rng = SplitMix64::new(seed);
        let mut seen = Vec::new();
        let got = power_of_two(costs.len(), window, &mut rng, |i| { seen.push(i); costs[i] });
        let w = window.min(costs.len());
        match got {
            None => prop_assert_eq!(w, 0),
            Some(i) => {
                prop_assert!(i < w);
                prop_assert!(seen.iter().all(|s| *s < w));
                if w >= 2 {
                    prop_assert_eq!(seen.len(), 2);
                    prop_assert_ne!(seen[0], seen[1]);
                    let other = if seen[0] == i { seen[1] } else { seen[0] };
                    prop_assert!(!costs[other].total_cmp(&costs[i]).is_lt());
                }
            }
        }
    }

    /// Through the router: the P2C winner is one of the first `p2c_window` accounts of the
    /// strategy order.
    #[test]
    fn plan_p2c_winner_is_inside_the_window(
        accounts in prop::collection::vec((any::<i8>(), 0u64..5_000, 0u32..6), 1..40),
        window in 1u32..10,
        seed in any::<u64>(),
    ) {
        let list: Vec<RouteAccount> = accounts
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| RouteAccount { priority: i32::from(*p), ..codex(&format!("acc{i:03}")) })
            .collect();
        let healths: Vec<AccountHealth> = accounts
            .iter()
            .map(|(_, lat, inflight)| {
                let mut h = AccountHealth::default();
                Router::default().record(&mut h, Outcome::Success { latency: Duration::from_millis(*lat) }, NOW - 500);
                for _ in 0..*inflight { h.acquire(); }
                h
            })
            .collect();
        let router = Router::new(RoutingPolicy { p2c_window: window, ..RoutingPolicy::default() });
        let plan = router.plan(&list, &RouteRequest::new("m", "k"), &|i: usize, _: &RouteAccount| healths[i], NOW, 0, &mut SplitMix64::new(seed));
        let mut order: Vec<usize> = (0..list.len()).collect();
        order.sort_by(|a, b| (list[*a].priority, &list[*a].id).cmp(&(list[*b].priority, &list[*b].id)));
        let head: HashSet<usize> = order.iter().take(window as usize).copied().collect();
        let first = plan.candidates[0];
        if window >= 2 && list.len() >= 2 {
            prop_assert_eq!(first.pick, Pick::PowerOfTwo);
        }
        prop_assert!(head.contains(&first.index));
        // The rest keeps strategy order (as far as a truncated plan goes).
        let rest: Vec<usize> = plan.candidates[1..].iter().map(|c| c.index).collect();
        let expected: Vec<usize> = order.iter().copied().filter(|i| *i != first.index).collect();
        if !plan.truncated() {
            prop_assert_eq!(rest.len(), expected.len());
        }
        prop_assert_eq!(&rest[..], &expected[..rest.len()]);
    }

    /// Consecutive 429s (within the memory window, no success between) never shorten the
    /// cooldown: the ladder step never goes down and the expiry never moves earlier.
    #[test]
    fn cooldown_ladder_is_monotonic(
        mut ladder in prop::collection::vec(0u32..=86_400, 1..16),
        gaps in prop::collection::vec(0i64..OFFENSE_MEMORY_MS, 1..30),
        retry_after in prop::collection::vec(prop::option::of(0u64..100_000), 30),
    ) {
        ladder.sort_unstable();
        let policy = RoutingPolicy { cooldown_429_secs: ladder.clone(), ..RoutingPolicy::default() };
        prop_assert!(policy.validate().is_ok());
        let router = Router::new(policy.clone());
        let mut h = AccountHealth::default();
        let mut now = NOW;
        let (mut last_step, mut last_until) = (0u32, i64::MIN);
        for (k, gap) in gaps.iter().enumerate() {
            now += gap;
            let ra = retry_after[k].map(Duration::from_millis);
            let c = router.record(&mut h, Outcome::RateLimited { retry_after: ra }, now).unwrap();
            let offense = h.offenses(now);
            prop_assert_eq!(offense as usize, (k + 1).min(64));
            let step = policy.cooldown_for_429(offense);
            prop_assert!(step >= last_step);
            prop_assert!(c.until_ms >= now + i64::from(step) * 1000);
            prop_assert!(c.until_ms >= last_until);
            (last_step, last_until) = (step, c.until_ms);
        }
    }
}

proptest! {
    /// The routing crate's allocation-free model matcher agrees with core's glob.
    #[test]
    fn model_filter_matches_core_glob(
        patterns in prop::collection::vec("[a-cA-C*.-]{0,6}", 0..4),
        model in "[a-cA-C.-]{0,8}",
    ) {
        let mut a = codex("a");
        a.model_filter = patterns.clone();
        let e = poolgate_routing::eligibility(&[a], &RouteRequest::new(&model, "k"), &QuotaGuard::default(), NOW);
        prop_assert_eq!(e.eligible.len() == 1, poolgate_core::glob::allowed(&patterns, &model));
    }
}

fn window() -> impl Strategy<Value = Option<UsageWindow>> {
    prop::option::of(
        (any::<f64>(), any::<u32>(), prop::option::of(any::<i64>())).prop_map(|(u, m, r)| {
            UsageWindow {
                used_percent: u,
                window_minutes: m,
                resets_at_ms: r,
            }
        }),
    )
}

fn arbitrary_account() -> impl Strategy<Value = RouteAccount> {
    (
        (
            "[a-c]{1,2}",
            prop::sample::select(Provider::ALL.to_vec()),
            "[a-c]{0,2}",
            any::<i32>(),
            any::<bool>(),
        ),
        (
            any::<bool>(),
            prop::option::of(prop::sample::select(vec![
                StatusReason::AuthInvalid,
                StatusReason::QuotaExhausted,
                StatusReason::Deactivated,
            ])),
            0u32..4,
        ),
        (
            prop::collection::vec("[*a-z-]{0,6}", 0..3),
            prop::option::of((window(), window(), any::<i64>())),
            prop::option::of(any::<i64>()),
        ),
    )
        .prop_map(
            |(
                (id, provider, group, priority, enabled),
                (active, reason, max_inflight),
                (filter, usage, cooldown),
            )| RouteAccount {
                id,
                provider,
                group,
                priority,
                enabled,
                status: if active {
                    AccountStatus::Active
                } else {
                    AccountStatus::Unavailable
                },
                status_reason: reason,
                max_inflight,
                model_filter: filter,
                usage: usage.map(|(primary, secondary, captured_at_ms)| UsageSnapshot {
                    primary,
                    secondary,
                    extra: vec![],
                    captured_at_ms,
                }),
                cooldown_until_ms: cooldown,
            },
        )
}

fn arbitrary_policy() -> impl Strategy<Value = RoutingPolicy> {
    (
        any::<bool>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..5),
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<bool>(), any::<f64>(), any::<f64>()),
        0u32..4,
    )
        .prop_map(
            |(balanced, p2c_window, ladder, (c5, cn, ca), (enabled, g5, gw), cap)| RoutingPolicy {
                strategy: if balanced {
                    RouteStrategy::Balanced
                } else {
                    RouteStrategy::Ordered
                },
                p2c_window,
                cooldown_429_secs: ladder,
                cooldown_5xx_secs: c5,
                cooldown_network_secs: cn,
                cooldown_auth_secs: ca,
                quota_guard: QuotaGuard {
                    enabled,
                    min_five_hour_remaining_percent: g5,
                    min_weekly_remaining_percent: gw,
                },
                default_max_inflight: cap,
                model_aliases: Vec::new(),
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        any::<u64>().prop_map(|ms| Outcome::Success {
            latency: Duration::from_millis(ms)
        }),
        prop::option::of(any::<u64>()).prop_map(|s| Outcome::RateLimited {
            retry_after: s.map(Duration::from_secs)
        }),
        prop::option::of(any::<i64>()).prop_map(|until_ms| Outcome::QuotaExhausted { until_ms }),
        Just(Outcome::Upstream5xx),
        Just(Outcome::Network),
        Just(Outcome::AuthFailed),
        Just(Outcome::Deactivated),
        Just(Outcome::ClientError),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary (even invalid) accounts, policies, histories and clocks: no panic, and the
    /// plan accounts for every account exactly once.
    #[test]
    fn no_panic_and_every_account_accounted_for(
        accounts in prop::collection::vec(arbitrary_account(), 0..30),
        policy in arbitrary_policy(),
        history in prop::collection::vec((any::<prop::sample::Index>(), outcome(), any::<i64>(), 0u8..3), 0..60),
        now in any::<i64>(),
        rotation in any::<u64>(),
        anchor in prop::option::of(".{0,16}"),
        groups in subsequence(vec!["a".to_string(), "b".to_string(), "".to_string()], 0..3),
        providers in subsequence(Provider::ALL.to_vec(), 0..4),
        seed in any::<u64>(),
    ) {
        let router = Router::new(policy);
        let mut healths = vec![AccountHealth::default(); accounts.len()];
        if !accounts.is_empty() {
            for (which, o, at, inflight) in &history {
                let h = &mut healths[which.index(accounts.len())];
                router.record(h, *o, *at);
                match inflight {
                    0 => h.release(),
                    1 => h.acquire(),
                    _ => {}
                }
            }
        }
        let req = RouteRequest {
            model: "gpt-5",
            translated: None,
            allowed_groups: &groups,
            providers: ProviderSet::of(&providers),
            anchor: anchor.as_deref(),
            key_id: "key",
        };
        let plan = router.plan(&accounts, &req, healths.as_slice(), now, rotation, &mut SplitMix64::new(seed));
        let mut seen = HashSet::new();
        for c in &plan.candidates {
            prop_assert!(seen.insert(c.index), "index {} twice", c.index);
        }
        for s in &plan.skipped() {
            prop_assert!(seen.insert(s.index), "index {} twice", s.index);
        }
        if plan.truncated() {
            // It stopped once it had enough ready accounts: all of them are candidates.
            let ready = plan
                .candidates
                .iter()
                .filter(|c| router.should_skip(&accounts[c.index], &healths[c.index], now, false).is_none())
                .count();
            prop_assert!(ready >= router.tuning().plan_head);
            prop_assert!(seen.len() < accounts.len());
        } else {
            prop_assert_eq!(seen.len(), accounts.len());
        }
        prop_assert!(plan.candidates.iter().filter(|c| c.pick == Pick::Affinity).count() <= 1);
        prop_assert!(plan.candidates.iter().filter(|c| c.pick == Pick::PowerOfTwo).count() <= 1);
        if anchor.is_none() {
            prop_assert!(plan.candidates.iter().all(|c| c.pick != Pick::Affinity));
        }
        for (k, c) in plan.candidates.iter().enumerate() {
            let last = k + 1 == plan.candidates.len();
            let skip = router.should_skip(&accounts[c.index], &healths[c.index], now, last);
            prop_assert!(!(last && skip.is_some()));
            let s = router.score(&accounts[c.index], &healths[c.index], 1_000.0, now).score();
            prop_assert!(s.is_finite() && s >= 1.0);
        }
        let summary = plan.summary();
        prop_assert_eq!(summary.total() as usize, plan.skipped().len());
        let quota = plan.quota_exhausted();
        let has_candidates = !plan.candidates.is_empty();
        match plan.into_result() {
            Ok(p) => prop_assert!(!p.candidates.is_empty()),
            Err(e) => {
                prop_assert!(!has_candidates);
                prop_assert_eq!(matches!(e, poolgate_routing::NoRoute::QuotaExhausted { .. }), quota.is_some());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A plan that stops after `plan_head` ready accounts lists the first candidates of the
    /// full plan, in the same order and with the same picks: stopping early changes how far
    /// a request may fail over, never where it goes first.
    #[test]
    fn truncated_plans_are_prefixes_of_full_plans(
        accounts in prop::collection::vec(arbitrary_account(), 0..60),
        policy in arbitrary_policy(),
        history in prop::collection::vec((any::<prop::sample::Index>(), outcome(), 0i64..2_000_000, 0u8..3), 0..60),
        rotation in any::<u64>(),
        anchor in prop::option::of(".{0,16}"),
        head in 1usize..12,
        seed in any::<u64>(),
    ) {
        let now = NOW;
        let full = Router::with_tuning(policy.clone(), Tuning { plan_head: usize::MAX, ..Tuning::default() });
        let short = Router::with_tuning(policy, Tuning { plan_head: head, ..Tuning::default() });
        let mut healths = vec![AccountHealth::default(); accounts.len()];
        if !accounts.is_empty() {
            for (which, o, ago, inflight) in &history {
                let h = &mut healths[which.index(accounts.len())];
                full.record(h, *o, now - ago);
                match inflight {
                    0 => h.release(),
                    1 => h.acquire(),
                    _ => {}
                }
            }
        }
        let groups: Vec<String> = Vec::new();
        let req = RouteRequest {
            model: "gpt-5",
            translated: None,
            allowed_groups: &groups,
            providers: ProviderSet::all(),
            anchor: anchor.as_deref(),
            key_id: "key",
        };
        let a = full.plan(&accounts, &req, healths.as_slice(), now, rotation, &mut SplitMix64::new(seed));
        let b = short.plan(&accounts, &req, healths.as_slice(), now, rotation, &mut SplitMix64::new(seed));
        prop_assert!(!a.truncated());
        prop_assert!(b.candidates.len() <= a.candidates.len());
        prop_assert_eq!(&b.candidates[..], &a.candidates[..b.candidates.len()]);
        if !b.truncated() {
            prop_assert_eq!(&a, &b);
        }
    }
}
