//! Routing for the poolgate gateway: which upstream account serves a request, in what order
//! the others are tried, and what each attempt teaches about an account.
//!
//! Pure logic: no IO, no clock, no global randomness. Every function takes the time
//! (`now_ms`, Unix milliseconds, the same clock the control plane's cooldowns use) and a
//! random source ([`Rng`]) as arguments, so every decision can be replayed in a test.
//!
//! One decision, as the gateway makes it:
//! 1. [`Router::rotation`] advances the `balanced` counter in a [`BalancedCursor`];
//! 2. [`Router::plan`] filters the accounts ([`eligibility()`], with a [`SkipReason`] for each
//!    one left out), puts the conversation anchor's [rendezvous](affinity) pick first, then
//!    the power-of-two-choices winner, then the rest in strategy order;
//! 3. the attempt loop asks [`Router::should_skip`] before each candidate and feeds each
//!    [`Outcome`] to that account's [`AccountHealth`] ([`Router::record`]);
//! 4. an empty plan becomes a [`NoRoute`]: 429 `usage_limit_reached` with the earliest reset
//!    when quota is why, otherwise a message saying why each account was left out.

pub mod affinity;
pub mod cursor;
pub mod eligibility;
pub mod health;
pub mod input;
pub mod plan;
pub mod rng;
pub mod score;

pub use affinity::{anchor_hash, rendezvous_pick, rendezvous_weight};
pub use cursor::BalancedCursor;
pub use eligibility::{
    Eligibility, Eligible, Prefilter, QuotaExhausted, SkipReason, SkipSummary, Skipped, eligibility,
};
pub use health::{
    AccountHealth, Cooldown, CooldownReason, HealthSource, Load, OFFENSE_MEMORY_MS, Outcome,
};
pub use input::{ProviderSet, RouteAccount, RouteRequest, Translated};
pub use plan::{AttemptSkip, Candidate, NoRoute, Pick, Plan, Router, routing_order};
pub use rng::{Rng, SplitMix64};
pub use score::{PeakEwma, Penalty, ScoreInputs, Tuning, headroom_factor, power_of_two};
