//! Per-team budgets and rate limits, enforced when a call starts.
//!
//! Each limited team has a small state behind its own mutex: what it spent today and this
//! month (UTC, settled calls, seeded from the usage ledger at start), what calls in flight
//! have reserved, and a 60-second window of requests and tokens. A call is admitted only if
//! settled spend + in-flight reservations + its own estimate stay within the budget, so
//! concurrent calls can overshoot by no more than the difference between their estimates and
//! what they really cost. The estimate is deliberately high: input ≈ request bytes / 3 tokens,
//! plus `max_tokens` (or [`DEFAULT_MAX_OUTPUT_TOKENS`] when the request sets none), at the
//! model's price. Tokens per minute: a call is refused when the window is used up, or when
//! its `max_tokens` bound cannot fit what is left; a call without a bound reserves at most
//! what is left. A [`Reservation`] settles with the real cost when the recorder has priced the
//! call, or releases its estimate if it is dropped unsettled.

use std::sync::{Arc, Mutex};

use crate::config::Team;
use crate::policy::limits::{day_and_month, seconds_to_next_day, seconds_to_next_month};
pub use crate::policy::limits::{Estimate, Limits, Refusal, Refused, Remaining};

/// Output tokens assumed for a reservation when the request does not cap them.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
const WINDOW_SECONDS: u64 = 60;

struct Window {
    /// (second, requests, tokens) per second slot.
    slots: [(u64, u64, u64); WINDOW_SECONDS as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window { slots: [(0, 0, 0); WINDOW_SECONDS as usize] }
    }
}

impl Window {
    fn slot(&mut self, second: u64) -> &mut (u64, u64, u64) {
        let slot = &mut self.slots[(second % WINDOW_SECONDS) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }

    /// Requests and tokens in the last 60 seconds, and seconds until the oldest leaves.
    fn totals(&self, now: u64) -> (u64, u64, u64) {
        let live = self.slots.iter().filter(|s| s.0 + WINDOW_SECONDS > now && (s.1 > 0 || s.2 > 0));
        let (mut requests, mut tokens, mut oldest) = (0, 0u64, now);
        for s in live {
            requests += s.1;
            tokens = tokens.saturating_add(s.2);
            oldest = oldest.min(s.0);
        }
        (requests, tokens, (oldest + WINDOW_SECONDS).saturating_sub(now).max(1))
    }
}

struct TeamState {
    limits: Limits,
    day: u64,
    spent_day: f64,
    month: u64,
    spent_month: f64,
    reserved_usd: f64,
    window: Window,
}

/// Budgets and limits of every team (by team index; `None` for unlimited teams).
pub struct Budgets {
    teams: Vec<Option<Mutex<TeamState>>>,
    names: Vec<String>,
}

impl Budgets {
    /// `spent(team, day, month)` gives what a team already spent today and this month (from
    /// the ledger), so limits hold across restarts.
    pub fn new(teams: &[Team], now_secs: u64, spent: impl Fn(&str, u64, u64) -> (f64, f64)) -> Arc<Self> {
        let (day, month) = day_and_month(now_secs);
        let names = teams.iter().map(|t| t.name.clone()).collect();
        let teams = teams
            .iter()
            .map(|team| {
                let limits = Limits::of(team);
                limits.any().then(|| {
                    let (spent_day, spent_month) = spent(&team.name, day, month);
                    Mutex::new(TeamState {
                        limits,
                        day,
                        spent_day,
                        month,
                        spent_month,
                        reserved_usd: 0.0,
                        window: Window::default(),
                    })
                })
            })
            .collect();
        Arc::new(Budgets { teams, names })
    }

    /// What each limited team spent today and this month, as this instance counts it.
    pub fn spent_by_team(&self) -> std::collections::HashMap<String, (f64, f64)> {
        self.names
            .iter()
            .zip(&self.teams)
            .filter_map(|(name, state)| {
                let s = state.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
                Some((name.clone(), (s.spent_day, s.spent_month)))
            })
            .collect()
    }

    pub fn is_limited(&self, team_index: usize) -> bool {
        self.teams.get(team_index).is_some_and(Option::is_some)
    }

    /// Admits a call (reserving its estimate) or refuses it.
    pub fn admit(
        self: &Arc<Self>,
        team_index: usize,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<(Reservation, Remaining), Refused> {
        let Some(Some(state)) = self.teams.get(team_index) else {
            return Ok((Reservation::none(), Remaining::default()));
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let (day, month) = day_and_month(now_secs);
        if s.day != day {
            s.day = day;
            s.spent_day = 0.0;
        }
        if s.month != month {
            s.month = month;
            s.spent_month = 0.0;
        }
        let (requests, tokens, reset) = s.window.totals(now_secs);
        let committed = s.reserved_usd + estimate.cost_usd;
        let budget_left = |spent: f64, budget: Option<f64>| budget.map(|b| b - spent - s.reserved_usd);
        let remaining_budget = match (
            budget_left(s.spent_day, s.limits.daily_budget_usd),
            budget_left(s.spent_month, s.limits.monthly_budget_usd),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut remaining = Remaining {
            requests: s.limits.requests_per_minute.map(|l| (l, (u64::from(l).saturating_sub(requests)) as u32)),
            tokens: s.limits.tokens_per_minute.map(|l| (l, l.saturating_sub(tokens))),
            window_reset_secs: reset,
            budget_usd: remaining_budget.map(|b| b.max(0.0)),
        };
        let refuse = |reason, retry_after_secs, remaining: &Remaining| {
            Err(Refused { reason, retry_after_secs, remaining: remaining.clone() })
        };
        if s.limits.daily_budget_usd.is_some_and(|b| s.spent_day + committed > b) {
            return refuse(Refusal::DailyBudget, seconds_to_next_day(now_secs), &remaining);
        }
        if s.limits.monthly_budget_usd.is_some_and(|b| s.spent_month + committed > b) {
            return refuse(Refusal::MonthlyBudget, seconds_to_next_month(now_secs), &remaining);
        }
        if s.limits.requests_per_minute.is_some_and(|l| requests >= u64::from(l)) {
            return refuse(Refusal::RequestsPerMinute, reset, &remaining);
        }
        // Tokens per minute: a call is refused when the window is used up, or when its own
        // bound (`max_tokens` given) does not fit what is left. Without a bound it reserves its
        // estimate, but never more than the window has left, so a small limit still admits
        // calls that do not say how long their answer may be.
        let mut estimate = estimate;
        if let Some(limit) = s.limits.tokens_per_minute {
            if tokens >= limit || (estimate.bounded && tokens.saturating_add(estimate.tokens) > limit) {
                return refuse(Refusal::TokensPerMinute, reset, &remaining);
            }
            estimate.tokens = estimate.tokens.min(limit - tokens);
        }
        s.reserved_usd += estimate.cost_usd;
        let slot = s.window.slot(now_secs);
        slot.1 += 1;
        slot.2 = slot.2.saturating_add(estimate.tokens);
        if let Some((limit, _)) = remaining.requests {
            remaining.requests = Some((limit, (u64::from(limit).saturating_sub(requests + 1)) as u32));
        }
        if let Some((limit, _)) = remaining.tokens {
            remaining.tokens = Some((limit, limit.saturating_sub(tokens.saturating_add(estimate.tokens))));
        }
        if let Some(b) = &mut remaining.budget_usd {
            *b = (*b - estimate.cost_usd).max(0.0);
        }
        let reservation = Reservation {
            shared: None,
            budgets: Some(self.clone()),
            team_index,
            estimate,
            second: now_secs,
            settled: false,
        };
        Ok((reservation, remaining))
    }

    fn settle(&self, r: &Reservation, cost_usd: f64, tokens: u64) {
        let Some(Some(state)) = self.teams.get(r.team_index) else { return };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.reserved_usd = (s.reserved_usd - r.estimate.cost_usd).max(0.0);
        let (day, month) = day_and_month(r.second);
        if s.day == day {
            s.spent_day += cost_usd;
        }
        if s.month == month {
            s.spent_month += cost_usd;
        }
        let slot = &mut s.window.slots[(r.second % WINDOW_SECONDS) as usize];
        if slot.0 == r.second {
            slot.2 = slot.2.saturating_add(tokens).saturating_sub(r.estimate.tokens);
        }
    }
}

/// An admitted call's claim on its team's budget; settle it with the real cost.
pub struct Reservation {
    /// A claim made in Redis (`[cluster] redis`) instead of here.
    shared: Option<crate::policy::shared_limits::Claim>,
    budgets: Option<Arc<Budgets>>,
    team_index: usize,
    estimate: Estimate,
    second: u64,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("team_index", &self.team_index).field("estimate", &self.estimate).finish()
    }
}

impl Reservation {
    /// A reservation for a team without limits: settling it does nothing.
    pub fn none() -> Self {
        Reservation {
            shared: None,
            budgets: None,
            team_index: 0,
            estimate: Estimate::default(),
            second: 0,
            settled: true,
        }
    }

    /// A reservation made in Redis: settling it settles there.
    pub fn shared(claim: crate::policy::shared_limits::Claim) -> Self {
        let estimate = claim.estimate();
        Reservation { shared: Some(claim), budgets: None, team_index: 0, estimate, second: 0, settled: false }
    }

    /// Replaces the estimate with what the call really cost.
    pub fn settle(mut self, cost_usd: f64, tokens: u64) {
        if let Some(budgets) = self.budgets.take() {
            budgets.settle(&self, cost_usd, tokens);
        }
        if let Some(claim) = self.shared.take() {
            claim.settle(cost_usd, tokens);
        }
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Never settled (the record was dropped): count the estimate, the safe side.
        if !self.settled {
            if let Some(budgets) = self.budgets.take() {
                budgets.settle(self, self.estimate.cost_usd, self.estimate.tokens);
            }
            if let Some(claim) = self.shared.take() {
                claim.settle(self.estimate.cost_usd, self.estimate.tokens);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(limits: Limits) -> Team {
        Team {
            name: "t".into(),
            keys: vec![],
            daily_budget_usd: limits.daily_budget_usd,
            monthly_budget_usd: limits.monthly_budget_usd,
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
        }
    }

    const NOW: u64 = 1_795_500_000;

    #[test]
    fn budget_counts_reservations_in_flight() {
        let b = Budgets::new(&[team(Limits { daily_budget_usd: Some(1.0), ..Default::default() })], NOW, |_, _, _| {
            (0.2, 0.2)
        });
        let est = Estimate { cost_usd: 0.3, tokens: 10, bounded: false };
        let (r1, _) = b.admit(0, est, NOW).unwrap();
        let (r2, rem) = b.admit(0, est, NOW).unwrap();
        assert!((rem.budget_usd.unwrap() - 0.2).abs() < 1e-9);
        let refused = b.admit(0, est, NOW).unwrap_err();
        assert_eq!(refused.reason, Refusal::DailyBudget);
        assert_eq!(refused.retry_after_secs, 86_400 - NOW % 86_400);
        r1.settle(0.05, 5); // cheaper than reserved: room again
        let (r3, _) = b.admit(0, est, NOW).unwrap();
        drop(r2); // dropped unsettled: its estimate counts as spent
        drop(r3);
        assert_eq!(
            b.admit(0, Estimate { cost_usd: 0.2, tokens: 0, bounded: false }, NOW).unwrap_err().reason,
            Refusal::DailyBudget
        );
        // A new day starts from zero.
        assert!(b.admit(0, est, NOW + 86_400).is_ok());
    }

    #[test]
    fn requests_and_tokens_per_minute() {
        let limits = Limits { requests_per_minute: Some(2), tokens_per_minute: Some(100), ..Default::default() };
        let b = Budgets::new(&[team(limits)], NOW, |_, _, _| (0.0, 0.0));
        let est = Estimate { cost_usd: 0.0, tokens: 40, bounded: false };
        b.admit(0, est, NOW).unwrap().0.settle(0.0, 40);
        let (_r, rem) = b.admit(0, est, NOW + 1).unwrap();
        assert_eq!(rem.requests, Some((2, 0)));
        assert_eq!(rem.tokens, Some((100, 20)));
        let refused = b.admit(0, est, NOW + 2).unwrap_err();
        assert_eq!(refused.reason, Refusal::RequestsPerMinute);
        assert_eq!(refused.retry_after_secs, 58);
        assert!(b.admit(0, est, NOW + 61).is_ok(), "the window moved on");
    }

    #[test]
    fn a_small_tokens_per_minute_admits_calls_without_max_tokens_until_the_window_is_used_up() {
        let limits = Limits { tokens_per_minute: Some(60), ..Default::default() };
        let b = Budgets::new(&[team(limits.clone())], NOW, |_, _, _| (0.0, 0.0));
        let unbounded = Estimate { cost_usd: 0.0, tokens: 31 + DEFAULT_MAX_OUTPUT_TOKENS, bounded: false };
        let (first, left) = b.admit(0, unbounded, NOW).expect("the first call of an empty window goes through");
        assert_eq!(left.tokens, Some((60, 0)), "it reserves what the window has left");
        assert_eq!(b.admit(0, unbounded, NOW).unwrap_err().reason, Refusal::TokensPerMinute);
        first.settle(0.0, 20);
        let (_second, left) = b.admit(0, unbounded, NOW + 1).expect("40 tokens are left after the real count");
        assert_eq!(left.tokens, Some((60, 0)));
        let bounded = |tokens| Estimate { cost_usd: 0.0, tokens, bounded: true };
        let b = Budgets::new(&[team(limits)], NOW, |_, _, _| (0.0, 0.0));
        assert_eq!(b.admit(0, bounded(61), NOW).unwrap_err().reason, Refusal::TokensPerMinute, "cannot fit alone");
        let (_r, left) = b.admit(0, bounded(50), NOW).unwrap();
        assert_eq!(left.tokens, Some((60, 10)));
        assert_eq!(b.admit(0, bounded(11), NOW).unwrap_err().reason, Refusal::TokensPerMinute);
    }

    #[test]
    fn unlimited_teams_always_pass() {
        let b = Budgets::new(&[team(Limits::default())], NOW, |_, _, _| (0.0, 0.0));
        assert!(!b.is_limited(0));
        assert!(b.admit(0, Estimate { cost_usd: 1e9, tokens: 1 << 40, bounded: false }, NOW).is_ok());
    }
}
