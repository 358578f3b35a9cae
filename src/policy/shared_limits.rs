//! Budgets and rate limits shared by every instance of a cluster, in Redis (`[cluster] redis`).
//!
//! The rules are the local ones (`budget`): a call is admitted only if settled spend +
//! in-flight reservations + its own estimate stay within the team's daily and monthly budget,
//! and the 60-second window of requests and tokens has room. Here each admission and each
//! settlement is one Lua script, which Redis runs atomically, so two instances can never
//! both take the last of a budget: the overshoot is bounded by the in-flight reservations'
//! error, as on one instance. Keys, per team (the `{team}` hash tag keeps a team's keys on one
//! Redis Cluster slot):
//!
//! - `tracegate:{team}:spent:d:{day}` / `:spent:m:{month}` — settled USD, seeded when missing
//!   from the ledger (PostgreSQL's when the cluster has one) and expiring after their period;
//! - `tracegate:{team}:resv` — a sorted set of in-flight reservations, `id:usd` scored by when
//!   they expire (an instance that dies mid-call leaves nothing behind for long), and
//!   `:resvsum`, their USD sum;
//! - `tracegate:{team}:wreq` / `:wtok` — requests and tokens per second of the window, with
//!   their total (`t`) and oldest second (`o`).
//!
//! Redis being unreachable never stalls a call: every operation has a short deadline, a failure
//! marks Redis down for a second (calls in that second do not wait for it), and is counted in
//! `tracegate_redis_errors_total`. While it is down, `redis_unavailable` decides: `local` (this
//! instance enforces the limits alone, with its own view) or `refuse` (429).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::{RedisUnavailable, Team};
use crate::policy::limits::{self, Estimate, Limits, Refusal, Refused, Remaining};

/// How long one Redis operation may take before the call goes on without it.
const DEADLINE: Duration = Duration::from_millis(250);
/// After a failure, Redis is not asked again for this long.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// A reservation no instance settled (its instance died) stops counting after this long.
const RESERVATION_TTL_SECS: u64 = 900;

/// The admission script. KEYS: spent today, spent this month, reservations, window requests,
/// window tokens, reservations' sum. ARGV: now, daily budget, monthly budget, requests/min,
/// tokens/min (each "" when unset), estimate USD, estimate tokens, bounded (0/1), seed day,
/// seed month, reservation member (`id:usd`), seconds to the end of the day, seconds to the
/// end of the month, seconds a reservation lives.
/// Answers {0, reason, retry_after} when refused, or {1, tokens reserved}; both followed by
/// requests left, tokens left, window reset, budget left (strings; "" when unlimited).
///
/// Every step is O(1) amortized, so the script costs the same with many calls in flight and a
/// full window: the reservations' sum is kept beside their sorted set (only expired ones are
/// read, normally none), and each window is a hash of per-second counts plus its total `t` and
/// its oldest second `o`, which only moves forward (each second is expired once).
const ADMIT: &str = r#"
local now = tonumber(ARGV[1])
local daily, monthly, rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est_usd, est_tokens, bounded = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
redis.call('SET', KEYS[1], ARGV[9], 'NX', 'EX', tonumber(ARGV[12]) + 3600)
redis.call('SET', KEYS[2], ARGV[10], 'NX', 'EX', tonumber(ARGV[13]) + 3600)
local spent_day = tonumber(redis.call('GET', KEYS[1])) or 0
local spent_month = tonumber(redis.call('GET', KEYS[2])) or 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  local gone = 0
  for _, m in ipairs(expired) do gone = gone + (tonumber(string.match(m, ':([^:]+)$')) or 0) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('INCRBYFLOAT', KEYS[6], -gone)
end
local reserved = 0
if redis.call('ZCARD', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[6])
else
  reserved = math.max(tonumber(redis.call('GET', KEYS[6])) or 0, 0)
end
-- A window's total after dropping the seconds that left it; its oldest counted second.
local function window(key)
  local oldest = tonumber(redis.call('HGET', key, 'o'))
  if oldest == nil then return 0, now end
  if oldest + 120 <= now then
    redis.call('DEL', key)
    return 0, now
  end
  local total = tonumber(redis.call('HGET', key, 't')) or 0
  while oldest + 60 <= now do
    total = total - (tonumber(redis.call('HGET', key, tostring(oldest))) or 0)
    redis.call('HDEL', key, tostring(oldest))
    oldest = oldest + 1
  end
  while oldest < now and redis.call('HEXISTS', key, tostring(oldest)) == 0 do oldest = oldest + 1 end
  redis.call('HSET', key, 't', total, 'o', oldest)
  return total, oldest
end
local requests, oldest_r = window(KEYS[4])
local tokens, oldest_t = window(KEYS[5])
local reset = math.max(math.min(oldest_r, oldest_t) + 60 - now, 1)
local function left(spent, budget)
  if budget == nil then return nil end
  return budget - spent - reserved
end
local budget_left = nil
local a, b = left(spent_day, daily), left(spent_month, monthly)
if a and b then budget_left = math.min(a, b) else budget_left = a or b end
local function answer(head)
  local req_left, tok_left, bud = '', '', ''
  if rpm then req_left = tostring(math.max(rpm - requests, 0)) end
  if tpm then tok_left = tostring(math.max(tpm - tokens, 0)) end
  if budget_left then bud = tostring(math.max(budget_left, 0)) end
  table.insert(head, req_left); table.insert(head, tok_left); table.insert(head, tostring(reset)); table.insert(head, bud)
  return head
end
if daily and spent_day + reserved + est_usd > daily then return answer({0, 'daily', tostring(ARGV[12])}) end
if monthly and spent_month + reserved + est_usd > monthly then return answer({0, 'monthly', tostring(ARGV[13])}) end
if rpm and requests >= rpm then return answer({0, 'rpm', tostring(reset)}) end
if tpm then
  if tokens >= tpm or (bounded and tokens + est_tokens > tpm) then return answer({0, 'tpm', tostring(reset)}) end
  est_tokens = math.min(est_tokens, tpm - tokens)
end
local ttl = tonumber(ARGV[14])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[11])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('INCRBYFLOAT', KEYS[6], est_usd)
redis.call('EXPIRE', KEYS[6], ttl)
local function count(key, n)
  redis.call('HINCRBY', key, tostring(now), n)
  redis.call('HINCRBY', key, 't', n)
  redis.call('HSETNX', key, 'o', now)
  redis.call('EXPIRE', key, 120)
end
count(KEYS[4], 1)
count(KEYS[5], est_tokens)
requests = requests + 1
tokens = tokens + est_tokens
if budget_left then budget_left = budget_left - est_usd end
return answer({1, tostring(est_tokens)})
"#;

/// The settlement script. KEYS: spent on the reservation's day, its month, reservations,
/// window tokens, reservations' sum. ARGV: reservation member, USD spent, the reservation's
/// second, tokens used minus tokens reserved, the reservation's USD.
const SETTLE: &str = r#"
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then redis.call('INCRBYFLOAT', KEYS[5], -tonumber(ARGV[5])) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBYFLOAT', KEYS[1], ARGV[2]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBYFLOAT', KEYS[2], ARGV[2]) end
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[4], ARGV[3], ARGV[4])
  redis.call('HINCRBY', KEYS[4], 't', ARGV[4])
end
return 1
"#;

/// What a shared admission decided.
pub enum Shared {
    Admitted(Claim, Remaining),
    Refused(Refused),
    /// Redis could not be asked (down, or too slow): `redis_unavailable` decides.
    Unavailable,
}

/// An admitted call's reservation in Redis, settled (or, dropped unsettled, charged its
/// estimate) through the runtime it was made on.
pub struct Claim {
    limits: Arc<SharedLimits>,
    team: usize,
    member: String,
    second: u64,
    estimate: Estimate,
    runtime: tokio::runtime::Handle,
}

impl Claim {
    /// Settles in the background: the recorder thread never waits for Redis.
    pub(crate) fn settle(self, cost_usd: f64, tokens: u64) {
        let runtime = self.runtime.clone();
        runtime.spawn(async move { self.limits.settle(&self, cost_usd, tokens).await });
    }

    pub(crate) fn estimate(&self) -> Estimate {
        self.estimate
    }
}

/// Redis-backed limits of every team (by team index; `None` for unlimited teams).
pub struct SharedLimits {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    teams: Vec<Option<(String, Limits)>>,
    /// Unix milliseconds until which Redis counts as down.
    down_until_ms: AtomicU64,
    pub mode: RedisUnavailable,
    /// What each team spent today and this month by the shared ledger (the seed of keys Redis
    /// does not have), refreshed by the cluster.
    seeds: Mutex<HashMap<String, (f64, f64)>>,
    errors: Arc<AtomicU64>,
    next_id: AtomicU64,
    instance: String,
    admit: redis::Script,
    settle: redis::Script,
}

fn unix_ms() -> u64 {
    crate::model::clock::unix_nanos() / 1_000_000
}

impl SharedLimits {
    pub fn new(
        url: &str,
        teams: &[Team],
        mode: RedisUnavailable,
        instance: &str,
        errors: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let teams = teams
            .iter()
            .map(|t| {
                let limits = Limits::of(t);
                limits.any().then(|| (t.name.clone(), limits))
            })
            .collect();
        Ok(Arc::new(SharedLimits {
            client,
            connection: tokio::sync::Mutex::new(None),
            teams,
            down_until_ms: AtomicU64::new(0),
            mode,
            seeds: Mutex::new(HashMap::new()),
            errors,
            next_id: AtomicU64::new(0),
            instance: instance.to_string(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
        }))
    }

    /// Replaces the seeds: (team, spent today, spent this month).
    pub fn set_seeds(&self, seeds: HashMap<String, (f64, f64)>) {
        *self.seeds.lock().unwrap_or_else(|p| p.into_inner()) = seeds;
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = unix_ms();
        let was_up = self.down_until_ms.swap(now + DOWN_FOR.as_millis() as u64, Ordering::Relaxed) <= now;
        if was_up {
            tracing::warn!(error = %e, what, mode = ?self.mode, "Redis unavailable for the shared limits");
        }
    }

    /// A connection, or `None` while Redis is down.
    async fn connection(&self) -> Option<ConnectionManager> {
        if self.down_until_ms.load(Ordering::Relaxed) > unix_ms() {
            return None;
        }
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEADLINE))
            .set_response_timeout(Some(DEADLINE))
            .set_number_of_retries(0);
        match tokio::time::timeout(DEADLINE * 2, ConnectionManager::new_with_config(self.client.clone(), config)).await
        {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.failed("connect", &e);
                None
            }
            Err(_) => {
                self.failed("connect", &"timed out");
                None
            }
        }
    }

    fn keys(team: &str, day: u64, month: u64) -> [String; 6] {
        let base = format!("tracegate:{{{team}}}");
        [
            format!("{base}:spent:d:{day}"),
            format!("{base}:spent:m:{month}"),
            format!("{base}:resv"),
            format!("{base}:wreq"),
            format!("{base}:wtok"),
            format!("{base}:resvsum"),
        ]
    }

    /// Admits a call of `team` (reserving its estimate in Redis) or refuses it.
    pub async fn admit(self: &Arc<Self>, team: usize, estimate: Estimate, now_secs: u64) -> Shared {
        let Some(Some((name, limits))) = self.teams.get(team) else { return Shared::Unavailable };
        let Some(mut connection) = self.connection().await else { return Shared::Unavailable };
        let (day, month) = limits::day_and_month(now_secs);
        let (seed_day, seed_month) =
            self.seeds.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied().unwrap_or((0.0, 0.0));
        let id = format!("{}-{}", self.instance, self.next_id.fetch_add(1, Ordering::Relaxed));
        // Rust writes the shortest text that reads back as the same number; Lua reads it.
        let member = format!("{id}:{}", estimate.cost_usd);
        let opt = |v: Option<String>| v.unwrap_or_default();
        let mut invocation = self.admit.prepare_invoke();
        for key in Self::keys(name, day, month) {
            invocation.key(key);
        }
        invocation
            .arg(now_secs)
            .arg(opt(limits.daily_budget_usd.map(|b| b.to_string())))
            .arg(opt(limits.monthly_budget_usd.map(|b| b.to_string())))
            .arg(opt(limits.requests_per_minute.map(|b| b.to_string())))
            .arg(opt(limits.tokens_per_minute.map(|b| b.to_string())))
            .arg(estimate.cost_usd.to_string())
            .arg(estimate.tokens)
            .arg(if estimate.bounded { "1" } else { "0" })
            .arg(seed_day.to_string())
            .arg(seed_month.to_string())
            .arg(&member)
            .arg(limits::seconds_to_next_day(now_secs))
            .arg(limits::seconds_to_next_month(now_secs))
            .arg(RESERVATION_TTL_SECS);
        let answer: Result<Vec<String>, _> =
            match tokio::time::timeout(DEADLINE, invocation.invoke_async(&mut connection)).await {
                Ok(r) => r,
                Err(_) => {
                    self.failed("admit", &"timed out");
                    return Shared::Unavailable;
                }
            };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.failed("admit", &e);
                return Shared::Unavailable;
            }
        };
        let Some((head, tail)) = answer.len().checked_sub(4).map(|at| answer.split_at(at)) else {
            self.failed("admit", &"unexpected answer");
            return Shared::Unavailable;
        };
        let remaining = Remaining {
            requests: limits.requests_per_minute.zip(tail[0].parse::<u32>().ok()),
            tokens: limits.tokens_per_minute.zip(tail[1].parse::<u64>().ok()),
            window_reset_secs: tail[2].parse().unwrap_or(1),
            budget_usd: tail[3].parse().ok(),
        };
        match head {
            [admitted, tokens] if admitted == "1" => {
                let estimate = Estimate { tokens: tokens.parse().unwrap_or(estimate.tokens), ..estimate };
                let claim = Claim {
                    limits: self.clone(),
                    team,
                    member,
                    second: now_secs,
                    estimate,
                    runtime: tokio::runtime::Handle::current(),
                };
                Shared::Admitted(claim, remaining)
            }
            [_, reason, retry] => {
                let reason = match reason.as_str() {
                    "daily" => Refusal::DailyBudget,
                    "monthly" => Refusal::MonthlyBudget,
                    "rpm" => Refusal::RequestsPerMinute,
                    _ => Refusal::TokensPerMinute,
                };
                Shared::Refused(Refused { reason, retry_after_secs: retry.parse().unwrap_or(1), remaining })
            }
            _ => {
                self.failed("admit", &"unexpected answer");
                Shared::Unavailable
            }
        }
    }

    async fn settle(&self, claim: &Claim, cost_usd: f64, tokens: u64) {
        let Some(Some((name, _))) = self.teams.get(claim.team) else { return };
        // A settlement is worth a wait (spend must be counted), but not forever.
        let mut connection = None;
        for _ in 0..20 {
            connection = self.connection().await;
            if connection.is_some() {
                break;
            }
            tokio::time::sleep(DOWN_FOR).await;
        }
        let Some(mut connection) = connection else {
            tracing::warn!(team = %name, cost_usd, "a settlement could not reach Redis; its reservation expires instead");
            return;
        };
        let (day, month) = limits::day_and_month(claim.second);
        let keys = Self::keys(name, day, month);
        let delta = i128::from(tokens) - i128::from(claim.estimate.tokens);
        let mut invocation = self.settle.prepare_invoke();
        invocation.key(&keys[0]).key(&keys[1]).key(&keys[2]).key(&keys[4]).key(&keys[5]);
        invocation
            .arg(&claim.member)
            .arg(cost_usd.to_string())
            .arg(claim.second)
            .arg(delta.to_string())
            .arg(claim.estimate.cost_usd.to_string());
        let result: Result<Result<i64, _>, _> =
            tokio::time::timeout(DEADLINE * 4, invocation.invoke_async(&mut connection)).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.failed("settle", &e),
            Err(_) => self.failed("settle", &"timed out"),
        }
    }
}

#[cfg(test)]
#[path = "shared_limits_tests.rs"]
mod tests;
