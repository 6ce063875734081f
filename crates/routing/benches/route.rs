//! A full route decision (eligibility, ordering, affinity, P2C) over pools of 10, 1,000 and
//! 10,000 accounts, the way the gateway makes it for each request: accounts kept in
//! `routing_order` (sorted once per snapshot), health looked up per account.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use poolgate_core::{Provider, RoutingPolicy, Strategy, UsageSnapshot, UsageWindow};
use poolgate_routing::{
    AccountHealth, BalancedCursor, Outcome, Prefilter, RouteAccount, RouteRequest, Router,
    SplitMix64, routing_order,
};
use xxhash_rust::xxh3::xxh3_64;

const NOW: i64 = 1_750_000_000_000;

/// A pool shaped like a real one: store-style ids, three priority tiers, some accounts in
/// another group, on another provider, with a model filter, near a quota limit, rate
/// limited or busy.
fn pool(n: usize) -> (Vec<RouteAccount>, Vec<AccountHealth>) {
    let router = Router::default();
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("acc_{:016x}{:04x}", xxh3_64(&i.to_le_bytes()), i % 0xffff);
        let provider = if i % 5 == 0 {
            Provider::OpenAi
        } else {
            Provider::Codex
        };
        let mut a = RouteAccount::new(id, provider);
        a.priority = (i % 3) as i32;
        a.group = if i % 10 == 9 {
            "batch".into()
        } else {
            "default".into()
        };
        if i % 7 == 0 {
            a.model_filter = vec!["gpt-5*".into()];
        }
        let window = |used: usize, minutes: u32, reset: i64| UsageWindow {
            used_percent: used as f64,
            window_minutes: minutes,
            resets_at_ms: Some(NOW + reset),
        };
        a.usage = Some(UsageSnapshot {
            primary: Some(window(i * 13 % 100, 300, 3_600_000)),
            secondary: Some(window(i * 7 % 90, 10_080, 86_400_000)),
            extra: vec![],
            captured_at_ms: NOW - 60_000,
        });
        let mut h = AccountHealth::default();
        let latency = Duration::from_millis(200 + (i as u64 * 37) % 800);
        router.record(&mut h, Outcome::Success { latency }, NOW - 5_000);
        if i % 11 == 0 {
            router.record(
                &mut h,
                Outcome::RateLimited { retry_after: None },
                NOW - 10_000,
            );
        }
        for _ in 0..(i % 4) {
            h.acquire();
        }
        pairs.push((a, h));
    }
    pairs.sort_by(|x, y| routing_order(&x.0, &y.0));
    pairs.into_iter().unzip()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for strategy in [Strategy::Ordered, Strategy::Balanced] {
        let policy = RoutingPolicy {
            strategy,
            default_max_inflight: 3,
            ..RoutingPolicy::default()
        };
        let router = Router::new(policy);
        for n in [10usize, 1_000, 10_000] {
            let (accounts, healths) = pool(n);
            let mut rng = SplitMix64::new(42);
            let mut cursor = BalancedCursor::new(4096);
            let mut turn = 0u64;
            let name = format!("{strategy}/anchored");
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    turn += 1;
                    let anchor = format!("conversation-{}", turn % 64);
                    let req = RouteRequest {
                        anchor: Some(&anchor),
                        ..RouteRequest::new("gpt-5-codex", "key_1")
                    };
                    let rotation = router.rotation(&mut cursor, &req);
                    let plan =
                        router.plan(&accounts, &req, healths.as_slice(), NOW, rotation, &mut rng);
                    black_box(plan.candidates.first().copied())
                });
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{strategy}/plain"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let req = RouteRequest::new("gpt-5-codex", "key_1");
                        let rotation = router.rotation(&mut cursor, &req);
                        let plan = router.plan(
                            &accounts,
                            &req,
                            healths.as_slice(),
                            NOW,
                            rotation,
                            &mut rng,
                        );
                        black_box(plan.candidates.first().copied())
                    });
                },
            );
            // As the gateway routes: the time-independent rules cached per request shape.
            let shape = RouteRequest::new("gpt-5-codex", "key_1");
            let pre = Prefilter::new(&accounts, &shape);
            group.bench_with_input(
                BenchmarkId::new(format!("{strategy}/anchored-prefiltered"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        turn += 1;
                        let anchor = format!("conversation-{}", turn % 64);
                        let req = RouteRequest {
                            anchor: Some(&anchor),
                            ..shape
                        };
                        let rotation = router.rotation(&mut cursor, &req);
                        let plan = router.plan_prefiltered(
                            &accounts,
                            &pre,
                            &req,
                            healths.as_slice(),
                            NOW,
                            rotation,
                            &mut rng,
                        );
                        black_box(plan.candidates.first().copied())
                    });
                },
            );
        }
    }
    // The cost of handing the router an unsorted pool.
    let router = Router::default();
    let (mut accounts, mut healths) = pool(10_000);
    let mut shuffle = SplitMix64::new(9);
    for i in (1..accounts.len()).rev() {
        let j = poolgate_routing::Rng::below(&mut shuffle, i + 1);
        accounts.swap(i, j);
        healths.swap(i, j);
    }
    let mut rng = SplitMix64::new(42);
    group.bench_function(BenchmarkId::new("ordered/plain-unsorted", 10_000), |b| {
        b.iter(|| {
            let req = RouteRequest::new("gpt-5-codex", "key_1");
            let plan = router.plan(&accounts, &req, healths.as_slice(), NOW, 0, &mut rng);
            black_box(plan.candidates.first().copied())
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = route
}
criterion_main!(benches);
