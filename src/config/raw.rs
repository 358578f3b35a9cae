//! Stage one of loading the config: the file as written. The TOML is parsed, every `${VAR}` in
//! a string value is replaced from the environment (`$$` is a literal `$`), and the result is
//! deserialized into strict `Raw*` structs (`deny_unknown_fields`), each error naming its
//! field path. Stage two (`Config::load`, in `mod.rs`) checks what serde cannot.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::error::ConfigError;
use crate::formats::providers::Api;
use crate::formats::tokens::Encoding;

/// The file as written, after `${VAR}` expansion; what [`super::Config::load`] validates.
pub(super) fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RawConfig, ConfigError> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        ConfigError::new("", format!("invalid TOML{at}: {}", e.message()))
    })?;
    expand_env(&mut value, &mut String::new(), env)?;
    let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        // The inner message may end with its own "in `...`" context line: the path says it.
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_string();
        ConfigError::new(if path == "." { String::new() } else { path }, message)
    })?;
    Ok(raw)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) providers: Option<Vec<RawProvider>>,
    #[serde(default)]
    pub(super) teams: Vec<RawTeam>,
    #[serde(default)]
    pub(super) pricing: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub(super) export: RawExport,
    #[serde(default)]
    pub(super) tokens: RawTokens,
    pub(super) cluster: Option<RawCluster>,
}

/// `[cluster]`: several instances sharing PostgreSQL (spans, ledger) and Redis (limits).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) instance: Option<String>,
    pub(super) postgres: Option<String>,
    pub(super) redis: Option<String>,
    pub(super) redis_unavailable: Option<RedisUnavailable>,
}

/// What limits do while Redis cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisUnavailable {
    /// Each instance enforces the limits alone until Redis is back.
    #[default]
    Local,
    /// Calls of limited teams are refused (429) until Redis is back.
    Refuse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    /// Encoding used to estimate tokens of models outside OpenAI's known families.
    pub(super) default_encoding: Option<Encoding>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) default_provider: Option<String>,
    pub(super) require_team_key: Option<bool>,
    /// Largest request body forwarded (413 beyond).
    pub(super) max_request_bytes: Option<u64>,
    /// Largest request header section accepted (431 beyond).
    pub(super) max_header_bytes: Option<usize>,
    /// How long a client may take to send a request's headers.
    pub(super) header_read_timeout_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) path: Option<PathBuf>,
    pub(super) retention_days: Option<u32>,
    pub(super) capture_bodies: Option<bool>,
    pub(super) max_capture_bytes: Option<usize>,
    /// Capacity of the queue between the proxy and the span writer.
    pub(super) queue_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) name: String,
    pub(super) prefix: String,
    pub(super) upstream: String,
    pub(super) api: Api,
    pub(super) api_key: Option<String>,
    pub(super) connect_timeout_secs: Option<f64>,
    pub(super) response_timeout_secs: Option<f64>,
    pub(super) idle_timeout_secs: Option<f64>,
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) inject_stream_usage: bool,
    /// `false`: forward this route's calls without recording them.
    pub(super) record: Option<bool>,
    pub(super) aws_region: Option<String>,
    pub(super) aws_access_key_id: Option<String>,
    pub(super) aws_secret_access_key: Option<String>,
    pub(super) aws_session_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    pub(super) name: String,
    #[serde(default)]
    pub(super) keys: Vec<String>,
    pub(super) daily_budget_usd: Option<f64>,
    pub(super) monthly_budget_usd: Option<f64>,
    pub(super) requests_per_minute: Option<u32>,
    pub(super) tokens_per_minute: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub(super) input_per_mtok: f64,
    pub(super) output_per_mtok: f64,
    pub(super) cached_input_per_mtok: Option<f64>,
    pub(super) cache_write_per_mtok: Option<f64>,
    pub(super) reasoning_per_mtok: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExport {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) zipkin_endpoint: Option<String>,
    /// "protobuf" (default) or "json".
    pub(super) otlp_protocol: Option<String>,
    /// Extra request headers for the exporters (e.g. authentication).
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    /// "gzip" (default) or "none".
    pub(super) compression: Option<String>,
    /// The resource's `service.name` (default "tracegate").
    pub(super) service_name: Option<String>,
}

/// Replaces `${VAR}` in every string value; `$$` stands for a literal `$`.
fn expand_env(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            *s = expand_str(s, env).map_err(|m| ConfigError::new(path.clone(), m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                expand_env(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| "unterminated ${...}".to_string())?;
            let name = &tail[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name in ${{{name}}}"));
            }
            let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line and column (in characters) of a byte offset of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}
