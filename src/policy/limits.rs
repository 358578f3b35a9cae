//! The values both kinds of limits share — a team's configured limits, a call's estimate, why
//! a call was refused and what is left — and the UTC calendar of budget periods: `budget`
//! (this instance) and `shared_limits` (Redis) decide with the same rules over them.

use crate::config::Team;

/// A team's configured limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub daily_budget_usd: Option<f64>,
    pub monthly_budget_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    pub(crate) fn of(team: &Team) -> Self {
        Limits {
            daily_budget_usd: team.daily_budget_usd,
            monthly_budget_usd: team.monthly_budget_usd,
            requests_per_minute: team.requests_per_minute,
            tokens_per_minute: team.tokens_per_minute,
        }
    }

    pub(crate) fn any(&self) -> bool {
        *self != Limits::default()
    }
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    DailyBudget,
    MonthlyBudget,
    RequestsPerMinute,
    TokensPerMinute,
}

impl Refusal {
    pub fn message(self, team: &str) -> String {
        match self {
            Refusal::DailyBudget => format!("tracegate: team {team:?} has spent its daily budget"),
            Refusal::MonthlyBudget => format!("tracegate: team {team:?} has spent its monthly budget"),
            Refusal::RequestsPerMinute => format!("tracegate: team {team:?} is over its requests-per-minute limit"),
            Refusal::TokensPerMinute => format!("tracegate: team {team:?} is over its tokens-per-minute limit"),
        }
    }
}

/// What is left for a team after admitting (or refusing) a call, for response headers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Remaining {
    pub requests: Option<(u32, u32)>,
    pub tokens: Option<(u64, u64)>,
    /// Seconds until the oldest request/token in the window leaves it.
    pub window_reset_secs: u64,
    pub budget_usd: Option<f64>,
}

/// A refused call: why, when to retry, what is left.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub reason: Refusal,
    pub retry_after_secs: u64,
    pub remaining: Remaining,
}

/// What a call is estimated to use, reserved at admission.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    pub cost_usd: f64,
    pub tokens: u64,
    /// The request caps its output (`max_tokens`), so `tokens` is a bound the call cannot
    /// pass; otherwise `tokens` assumes [`DEFAULT_MAX_OUTPUT_TOKENS`] of output.
    pub bounded: bool,
}

/// UTC calendar position of a unix time in seconds.
pub(crate) fn day_and_month(unix_secs: u64) -> (u64, u64) {
    let day = unix_secs / 86_400;
    let (year, month, _) = crate::model::clock::civil_from_days(day as i64);
    (day, (year as u64) * 12 + u64::from(month))
}

pub(crate) fn seconds_to_next_day(unix_secs: u64) -> u64 {
    86_400 - unix_secs % 86_400
}

pub(crate) fn seconds_to_next_month(unix_secs: u64) -> u64 {
    let day = (unix_secs / 86_400) as i64;
    let (year, month, _) = crate::model::clock::civil_from_days(day);
    let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let next = crate::model::clock::days_from_civil(ny, nm, 1) as u64 * 86_400;
    next.saturating_sub(unix_secs).max(1)
}
