//! Configuration: the TOML file described in SPEC.md, loaded in two stages.
//!
//! Stage one deserializes the file into strict `Raw*` structs (`deny_unknown_fields`) after
//! replacing every `${VAR}` in string values from the environment. Stage two (`Config::load`)
//! checks values that serde cannot (addresses, URLs, duplicate names, cross references) and
//! builds the runtime [`Config`] the rest of the program uses. Every error names the field
//! path it is about, e.g. `providers[1].upstream: ...`, so a bad config stops start-up with a
//! message the operator can act on.
//!
//! Files: `raw` (stage one), `error` (`ConfigError`); this file holds the runtime types and
//! stage two.
//!
//! It imports `formats` (the provider's API, the token encoding) and `model` (prices) only:
//! the runtime types are read by every floor above, and know none of them.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod error;
mod raw;

use crate::config::raw::RawConfig;
use crate::formats::providers::Api;
use crate::formats::tokens::Encoding;
use crate::model::pricing::{Price, PriceBook};

pub use error::ConfigError;

/// Where `serve` looks for a config when `--config` is not given and `$TRACEGATE_CONFIG` is unset.
pub const DEFAULT_CONFIG_PATH: &str = "config/tracegate.toml";

// ---------------------------------------------------------------------------------------------
// Stage two: the validated runtime config.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub providers: Vec<Arc<Provider>>,
    pub teams: Vec<Team>,
    /// USD per million tokens by model name (exact, then longest prefix).
    /// `[pricing]` in front of the built-in catalog.
    pub pricing: PriceBook,
    pub export: ExportConfig,
    /// Encoding for token estimates of models outside OpenAI's families (Anthropic, local models).
    pub default_encoding: Encoding,
    /// The file this was loaded from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    /// `[cluster]`, when this instance shares a store and limits with others.
    pub cluster: Option<ClusterConfig>,
}

pub use raw::RedisUnavailable;

/// `[cluster]`: this instance's name and the engines it shares with the others.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Stored on every span this instance records.
    pub instance: String,
    /// `postgres://…`: the shared span store and ledger.
    pub postgres: Option<String>,
    /// `redis://…`: shared budgets and rate limits.
    pub redis: Option<String>,
    pub redis_unavailable: RedisUnavailable,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords.
        f.debug_struct("ClusterConfig")
            .field("instance", &self.instance)
            .field("postgres", &self.postgres.as_deref().map(redact_url))
            .field("redis", &self.redis.as_deref().map(redact_url))
            .field("redis_unavailable", &self.redis_unavailable)
            .finish()
    }
}

/// A connection URL with its password replaced (`postgres://user:***@host/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_string() };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// This machine's host name: the default instance name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tracegate".to_string())
}

fn load_cluster(raw: Option<raw::RawCluster>) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let instance = match raw.instance {
        Some(name) if name.trim().is_empty() => return Err(ConfigError::new("cluster.instance", "must not be empty")),
        Some(name) if name.len() > 64 || name.chars().any(|c| c.is_control()) => {
            return Err(ConfigError::new("cluster.instance", "at most 64 printable characters"))
        }
        Some(name) => name.trim().to_string(),
        None => host_name(),
    };
    let url = |field: &str, value: Option<String>, schemes: &[&str]| -> Result<Option<String>, ConfigError> {
        match value.filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) => Ok(Some(v)),
            Some(_) => {
                Err(ConfigError::new(field, format!("must be a URL starting with {}://", schemes.join(":// or "))))
            }
        }
    };
    let postgres = url("cluster.postgres", raw.postgres, &["postgres", "postgresql"])?;
    if let Some(p) = &postgres {
        p.parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::new("cluster.postgres", format!("not a PostgreSQL URL: {e}")))?;
    }
    let redis = url("cluster.redis", raw.redis, &["redis", "rediss"])?;
    Ok(Some(ClusterConfig { instance, postgres, redis, redis_unavailable: raw.redis_unavailable.unwrap_or_default() }))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Index into `Config::providers` for un-prefixed paths.
    pub default_provider: Option<usize>,
    /// Refuse calls that do not present a configured team key (401).
    pub require_team_key: bool,
    /// Largest request body forwarded; larger ones get 413.
    pub max_request_bytes: u64,
    /// Largest request header section (names + values) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// A connection that takes longer to send a request's headers is closed.
    pub header_read_timeout: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub retention_days: u32,
    pub capture_bodies: bool,
    pub max_capture_bytes: usize,
    pub queue_capacity: usize,
}

#[derive(Clone, Default)]
pub struct AdminConfig {
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig").field("token", &self.token.as_ref().map(|_| "<set>")).finish()
    }
}

/// One upstream route.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    /// Path prefix without a trailing slash, e.g. `/openai`.
    pub prefix: String,
    pub upstream: Upstream,
    pub api: Api,
    /// Provider key sent upstream when the caller authenticated with a team key.
    pub api_key: Option<String>,
    pub connect_timeout: std::time::Duration,
    /// How long to wait for the upstream's response headers (the model may think for a while).
    pub response_timeout: std::time::Duration,
    /// How long a response body may go without a byte before the call is failed.
    pub idle_timeout: std::time::Duration,
    /// Extra trusted roots for this upstream (a private CA), from `ca_file`.
    pub ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Ask OpenAI streams for usage on the app's behalf and hide the difference from it.
    pub inject_stream_usage: bool,
    /// `false`: calls are forwarded without a span, a capture or a ledger row (counted only in
    /// `tracegate_requests_total`).
    pub record: bool,
    /// Bedrock only: the AWS credentials tracegate signs team-key calls with (SigV4).
    pub aws: Option<AwsSigning>,
}

/// What SigV4 signing of a Bedrock route needs: the region and the credentials.
#[derive(Clone)]
pub struct AwsSigning {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSigning")
            .field("region", &self.region)
            .field("access_key_id", &"<set>")
            .field("secret_access_key", &"<set>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("upstream", &self.upstream.to_string())
            .field("api", &self.api)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("aws", &self.aws)
            .finish()
    }
}

/// A parsed upstream base URL: `scheme://authority/base_path`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prepended to every forwarded path, without trailing slash ("" for none).
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[derive(Clone)]
pub struct Team {
    pub name: String,
    pub keys: Vec<String>,
    pub daily_budget_usd: Option<f64>,
    pub monthly_budget_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl fmt::Debug for Team {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Team").field("name", &self.name).field("keys", &self.keys.len()).finish()
    }
}

#[derive(Clone, Default)]
pub struct ExportConfig {
    pub otlp_endpoint: Option<http::Uri>,
    pub zipkin_endpoint: Option<http::Uri>,
    /// OTLP/HTTP with JSON bodies instead of protobuf.
    pub otlp_json: bool,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub gzip: bool,
    pub service_name: String,
}

impl fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("zipkin_endpoint", &self.zipkin_endpoint)
            .field("otlp_json", &self.otlp_json)
            .field("headers", &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("gzip", &self.gzip)
            .finish()
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8788";
const DEFAULT_STORE_PATH: &str = "data/tracegate";
const DEFAULT_RETENTION_DAYS: u32 = 30;
const DEFAULT_MAX_CAPTURE_BYTES: usize = 1 << 20;
const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 10.0;
const DEFAULT_RESPONSE_TIMEOUT_SECS: f64 = 600.0;
const DEFAULT_IDLE_TIMEOUT_SECS: f64 = 300.0;
const DEFAULT_MAX_REQUEST_BYTES: u64 = 32 << 20;
const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Above this the HTTP/1 parser's own buffer would refuse a request before we can answer it.
const MAX_MAX_HEADER_BYTES: usize = 256 << 10;

/// The config used when no file is found: OpenAI and Anthropic routes, store under `data/`.
const BUILTIN_DEFAULTS: &str = r#"
[[providers]]
name = "openai"
prefix = "/openai"
upstream = "https://api.openai.com"
api = "openai"

[[providers]]
name = "anthropic"
prefix = "/anthropic"
upstream = "https://api.anthropic.com"
api = "anthropic"
"#;

impl Config {
    /// Resolves which file to load: the explicit path, else `$TRACEGATE_CONFIG`, else
    /// `config/tracegate.toml` if it exists, else the built-in defaults.
    pub fn resolve(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::from_file(path);
        }
        if let Some(path) = std::env::var_os("TRACEGATE_CONFIG").filter(|p| !p.is_empty()) {
            return Config::from_file(Path::new(&path));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Config::from_file(default);
        }
        Config::builtin()
    }

    /// The built-in defaults.
    pub fn builtin() -> Result<Config, ConfigError> {
        Config::from_toml(BUILTIN_DEFAULTS, &|name| std::env::var(name).ok())
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read config {}: {e}", path.display())))?;
        let mut config = Config::from_toml(&text, &|name| std::env::var(name).ok())
            .map_err(|e| ConfigError { message: format!("{} (in {})", e.message, path.display()), ..e })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `env` looks up `${VAR}` values.
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load(raw::parse(text, env)?)
    }

    fn load(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = parse_addr("server.listen", raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let admin_listen =
            parse_addr("server.admin_listen", raw.server.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN))?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(ConfigError::new("server.admin_listen", "must differ from server.listen"));
        }
        let tls = match (raw.server.tls_cert, raw.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::new("server.tls_key", "required when server.tls_cert is set")),
            (None, Some(_)) => return Err(ConfigError::new("server.tls_cert", "required when server.tls_key is set")),
        };

        let raw_providers = match raw.providers {
            Some(p) => p,
            None => {
                let RawConfig { providers, .. } = toml::from_str(BUILTIN_DEFAULTS).expect("built-in defaults parse");
                providers.unwrap_or_default()
            }
        };
        let mut providers = Vec::with_capacity(raw_providers.len());
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, p) in raw_providers.into_iter().enumerate() {
            let field = |name: &str| format!("providers[{i}].{name}");
            if p.name.trim().is_empty() {
                return Err(ConfigError::new(field("name"), "must not be empty"));
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::new(field("name"), format!("duplicate provider name {:?}", p.name)));
            }
            let prefix = normalize_prefix(&p.prefix).map_err(|m| ConfigError::new(field("prefix"), m))?;
            if !prefixes.insert(prefix.clone()) {
                return Err(ConfigError::new(field("prefix"), format!("duplicate prefix {prefix:?}")));
            }
            let upstream = parse_upstream(&p.upstream).map_err(|m| ConfigError::new(field("upstream"), m))?;
            if p.inject_stream_usage && !matches!(p.api, Api::Openai | Api::Azure) {
                return Err(ConfigError::new(
                    field("inject_stream_usage"),
                    "only OpenAI-format providers (openai, azure) stream usage",
                ));
            }
            let aws = aws_signing(&p, &upstream, &field)?;
            let api_key = p.api_key.filter(|k| !k.is_empty());
            if let Some(key) = &api_key {
                http::HeaderValue::from_str(key)
                    .map_err(|_| ConfigError::new(field("api_key"), "contains characters not allowed in a header"))?;
            }
            providers.push(Arc::new(Provider {
                name: p.name,
                prefix,
                upstream,
                api: p.api,
                api_key,
                connect_timeout: parse_secs(
                    &field("connect_timeout_secs"),
                    p.connect_timeout_secs,
                    DEFAULT_CONNECT_TIMEOUT_SECS,
                )?,
                response_timeout: parse_secs(
                    &field("response_timeout_secs"),
                    p.response_timeout_secs,
                    DEFAULT_RESPONSE_TIMEOUT_SECS,
                )?,
                idle_timeout: parse_secs(&field("idle_timeout_secs"), p.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT_SECS)?,
                inject_stream_usage: p.inject_stream_usage,
                record: p.record.unwrap_or(true),
                aws,
                ca_certs: match &p.ca_file {
                    Some(path) => load_certs(path).map_err(|m| ConfigError::new(field("ca_file"), m))?,
                    None => Vec::new(),
                },
            }));
        }
        let default_provider = match raw.server.default_provider {
            None => None,
            Some(name) => Some(providers.iter().position(|p| p.name == name).ok_or_else(|| {
                ConfigError::new("server.default_provider", format!("no provider is named {name:?}"))
            })?),
        };

        let max_capture_bytes = raw.storage.max_capture_bytes.unwrap_or(DEFAULT_MAX_CAPTURE_BYTES);
        let queue_capacity = raw.storage.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(ConfigError::new("storage.queue_capacity", "must be at least 1"));
        }
        let storage = StorageConfig {
            path: raw.storage.path.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH)),
            retention_days: raw.storage.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
            capture_bodies: raw.storage.capture_bodies.unwrap_or(true),
            max_capture_bytes,
            queue_capacity,
        };
        if storage.path.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.path", "must not be empty"));
        }

        let admin = AdminConfig { token: raw.admin.token.filter(|t| !t.is_empty()) };

        let mut teams = Vec::with_capacity(raw.teams.len());
        let mut team_names = HashSet::new();
        let mut team_keys = HashSet::new();
        for (i, t) in raw.teams.into_iter().enumerate() {
            let field = |name: &str| format!("teams[{i}].{name}");
            if t.name.trim().is_empty() {
                return Err(ConfigError::new(field("name"), "must not be empty"));
            }
            if !team_names.insert(t.name.clone()) {
                return Err(ConfigError::new(field("name"), format!("duplicate team name {:?}", t.name)));
            }
            for (k, key) in t.keys.iter().enumerate() {
                if key.is_empty() {
                    return Err(ConfigError::new(format!("teams[{i}].keys[{k}]"), "must not be empty"));
                }
                if !team_keys.insert(key.clone()) {
                    return Err(ConfigError::new(format!("teams[{i}].keys[{k}]"), "the same key is listed twice"));
                }
            }
            for (name, value) in
                [("daily_budget_usd", t.daily_budget_usd), ("monthly_budget_usd", t.monthly_budget_usd)]
            {
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(ConfigError::new(field(name), "must be a non-negative number"));
                }
            }
            teams.push(Team {
                name: t.name,
                keys: t.keys,
                daily_budget_usd: t.daily_budget_usd,
                monthly_budget_usd: t.monthly_budget_usd,
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
            });
        }

        if raw.server.require_team_key == Some(true) && teams.iter().all(|t| t.keys.is_empty()) {
            return Err(ConfigError::new("server.require_team_key", "needs at least one [[teams]] entry with keys"));
        }

        let mut pricing = BTreeMap::new();
        for (model, p) in raw.pricing {
            let field = |name: &str| format!("pricing.{model:?}.{name}");
            for (name, value) in [
                ("input_per_mtok", Some(p.input_per_mtok)),
                ("output_per_mtok", Some(p.output_per_mtok)),
                ("cached_input_per_mtok", p.cached_input_per_mtok),
                ("cache_write_per_mtok", p.cache_write_per_mtok),
                ("reasoning_per_mtok", p.reasoning_per_mtok),
            ] {
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(ConfigError::new(field(name), "must be a non-negative number"));
                }
            }
            pricing.insert(
                model,
                Price {
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                    cached_input_per_mtok: p.cached_input_per_mtok,
                    cache_write_per_mtok: p.cache_write_per_mtok,
                    reasoning_per_mtok: p.reasoning_per_mtok,
                },
            );
        }
        let pricing = PriceBook::new(pricing);

        let otlp_json = match raw.export.otlp_protocol.as_deref() {
            None | Some("protobuf") | Some("http/protobuf") => false,
            Some("json") | Some("http/json") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "export.otlp_protocol",
                    format!("{other:?}: use \"protobuf\" or \"json\""),
                ))
            }
        };
        let gzip = match raw.export.compression.as_deref() {
            None | Some("gzip") => true,
            Some("none") => false,
            Some(other) => {
                return Err(ConfigError::new("export.compression", format!("{other:?}: use \"gzip\" or \"none\"")))
            }
        };
        let mut export_headers = Vec::new();
        for (name, value) in raw.export.headers {
            let field = format!("export.headers.{name}");
            let header_name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(field.clone(), "not a valid header name"))?;
            let mut header_value =
                http::HeaderValue::from_str(&value).map_err(|_| ConfigError::new(field, "not a valid header value"))?;
            header_value.set_sensitive(true);
            export_headers.push((header_name, header_value));
        }
        let export = ExportConfig {
            otlp_endpoint: parse_endpoint("export.otlp_endpoint", raw.export.otlp_endpoint)?,
            zipkin_endpoint: parse_endpoint("export.zipkin_endpoint", raw.export.zipkin_endpoint)?,
            otlp_json,
            headers: export_headers,
            gzip,
            service_name: raw.export.service_name.filter(|s| !s.is_empty()).unwrap_or_else(|| "tracegate".into()),
        };

        let max_header_bytes = raw.server.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if !(1024..=MAX_MAX_HEADER_BYTES).contains(&max_header_bytes) {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                format!("{max_header_bytes} is outside 1024..={MAX_MAX_HEADER_BYTES}"),
            ));
        }
        let header_read_timeout = match raw.server.header_read_timeout_secs {
            None => DEFAULT_HEADER_READ_TIMEOUT,
            Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => std::time::Duration::from_secs_f64(secs),
            Some(secs) => {
                return Err(ConfigError::new("server.header_read_timeout_secs", format!("{secs} is outside (0, 3600]")))
            }
        };
        let cluster = load_cluster(raw.cluster)?;
        Ok(Config {
            cluster,
            server: ServerConfig {
                listen,
                admin_listen,
                tls,
                default_provider,
                require_team_key: raw.server.require_team_key.unwrap_or(false),
                max_request_bytes: raw.server.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
                max_header_bytes,
                header_read_timeout,
            },
            storage,
            admin,
            providers,
            teams,
            pricing,
            export,
            default_encoding: raw.tokens.default_encoding.unwrap_or(Encoding::O200kBase),
            source: None,
        })
    }

    /// A human-readable summary of what was resolved (no secrets), printed by `check-config`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let source =
            self.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
        let _ = writeln!(out, "config: {source}");
        let scheme = if self.server.tls.is_some() { "https" } else { "http" };
        let _ = writeln!(out, "proxy listener: {scheme}://{}", self.server.listen);
        let _ = writeln!(
            out,
            "admin listener: http://{} (token {})",
            self.server.admin_listen,
            if self.admin.token.is_some() { "required" } else { "not set" }
        );
        let _ = writeln!(
            out,
            "storage: {} (retention {} days, bodies {}, capture limit {} bytes)",
            self.storage.path.display(),
            self.storage.retention_days,
            if self.storage.capture_bodies { "kept" } else { "not kept" },
            self.storage.max_capture_bytes
        );
        let _ = writeln!(out, "routes:");
        for (i, p) in self.providers.iter().enumerate() {
            let mut default =
                if self.server.default_provider == Some(i) { " (default for un-prefixed paths)" } else { "" }
                    .to_string();
            if !p.record {
                default.push_str(" (not recorded)");
            }
            let _ = writeln!(
                out,
                "  {}/* -> {}/*  [{} api={}, provider key {}{}]{default}",
                p.prefix,
                p.upstream,
                p.name,
                p.api.as_str(),
                if p.api_key.is_some() { "set" } else { "not set" },
                match &p.aws {
                    Some(aws) => format!(", team-key calls SigV4-signed for {}", aws.region),
                    None => String::new(),
                }
            );
        }
        let _ = writeln!(out, "teams: {}", if self.teams.is_empty() { "none" } else { "" });
        for t in &self.teams {
            let _ = writeln!(out, "  {} ({} key{})", t.name, t.keys.len(), if t.keys.len() == 1 { "" } else { "s" });
        }
        let catalog = crate::model::pricing::catalog();
        let _ = writeln!(
            out,
            "prices: {} models from [pricing], {} in the built-in catalog (dated {})",
            self.pricing.overrides().len(),
            catalog.prices.len(),
            catalog.dated
        );
        if let Some(e) = &self.export.otlp_endpoint {
            let _ = writeln!(out, "otlp export: {e}");
        }
        if let Some(e) = &self.export.zipkin_endpoint {
            let _ = writeln!(out, "zipkin export: {e}");
        }
        if let Some(c) = &self.cluster {
            let shown = |url: &Option<String>| url.as_deref().map_or("not set".to_string(), redact_url);
            let _ = writeln!(
                out,
                "cluster: instance {:?}, postgres {}, redis {} (while Redis is down: {})",
                c.instance,
                shown(&c.postgres),
                shown(&c.redis),
                match c.redis_unavailable {
                    RedisUnavailable::Local => "local",
                    RedisUnavailable::Refuse => "refuse",
                }
            );
        }
        out
    }
}

/// A listen address: an IP and port, or a host name and port (`localhost:8787`), resolved
/// once at load; the first address the name resolves to is used.
fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let invalid =
        || ConfigError::new(field, format!("{value:?} is not an address like 127.0.0.1:8787 or localhost:8787"));
    let (host, port) = value.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    let mut addresses = std::net::ToSocketAddrs::to_socket_addrs(value)
        .map_err(|e| ConfigError::new(field, format!("cannot resolve {host:?}: {e}")))?;
    addresses.next().ok_or_else(|| ConfigError::new(field, format!("{host:?} resolves to no address")))
}

fn parse_secs(field: &str, value: Option<f64>, default: f64) -> Result<std::time::Duration, ConfigError> {
    let secs = value.unwrap_or(default);
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(ConfigError::new(field, "must be a number of seconds between 0 and 86400"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with '/'"));
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must not be \"/\" alone (use server.default_provider for un-prefixed paths)".into());
    }
    if trimmed.contains("//") || trimmed.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{prefix:?} is not a clean path"));
    }
    if !trimmed.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b)) {
        return Err(format!("{prefix:?} may hold only letters, digits and / - _ . ~"));
    }
    Ok(trimmed.to_string())
}

/// A Bedrock route's SigV4 settings: both keys or neither, the region given or read from a
/// `bedrock-runtime.{region}.amazonaws.com` upstream; `aws_*` keys on another route are errors.
fn aws_signing(
    p: &raw::RawProvider,
    upstream: &Upstream,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<AwsSigning>, ConfigError> {
    let set = |v: &Option<String>| v.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
    let (region, id, secret, token) =
        (set(&p.aws_region), set(&p.aws_access_key_id), set(&p.aws_secret_access_key), set(&p.aws_session_token));
    if p.api != Api::Bedrock {
        for (name, value) in [
            ("aws_region", &region),
            ("aws_access_key_id", &id),
            ("aws_secret_access_key", &secret),
            ("aws_session_token", &token),
        ] {
            if value.is_some() {
                return Err(ConfigError::new(field(name), "only bedrock providers sign requests with AWS credentials"));
            }
        }
        return Ok(None);
    }
    let (id, secret) = match (id, secret) {
        (Some(id), Some(secret)) => (id, secret),
        (None, None) if token.is_none() => return Ok(None),
        (None, _) => return Err(ConfigError::new(field("aws_access_key_id"), "missing: the AWS keys come as a pair")),
        (Some(_), None) => {
            return Err(ConfigError::new(field("aws_secret_access_key"), "missing: the AWS keys come as a pair"))
        }
    };
    let host = upstream.authority.host();
    let from_host = host
        .strip_prefix("bedrock-runtime.")
        .and_then(|rest| rest.split('.').next())
        .filter(|r| !r.is_empty() && host.ends_with(".amazonaws.com"))
        .map(str::to_owned);
    let region = region.or(from_host).ok_or_else(|| {
        ConfigError::new(field("aws_region"), "required to sign requests (the upstream host does not name a region)")
    })?;
    for (name, value) in [("aws_access_key_id", &id), ("aws_secret_access_key", &secret), ("aws_region", &region)] {
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(field(name), "must be printable ASCII without spaces"));
        }
    }
    Ok(Some(AwsSigning { region, access_key_id: id, secret_access_key: secret, session_token: token }))
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: http::Uri = value.parse().map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| format!("{value:?} needs http:// or https://"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("{value:?}: only http and https upstreams are supported"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| format!("{value:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not allowed; use api_key".into());
    }
    if uri.query().is_some() {
        return Err(format!("{value:?} must not have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Upstream { scheme, authority, base_path })
}

fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

fn parse_endpoint(field: &str, value: Option<String>) -> Result<Option<http::Uri>, ConfigError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    let uri: http::Uri = value.parse().map_err(|e| ConfigError::new(field, format!("{value:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.authority().is_some() => Ok(Some(uri)),
        _ => Err(ConfigError::new(field, format!("{value:?} must be an http:// or https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-test".into()),
            "PORT" => Some("9999".into()),
            _ => None,
        }
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &env)
    }

    #[test]
    fn empty_file_gives_builtin_routes() {
        let c = load("").unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].prefix, "/openai");
        assert_eq!(c.providers[1].api, Api::Anthropic);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(c.storage.max_capture_bytes, 1 << 20);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tracegate.toml")).unwrap();
        let c = Config::from_toml(&text, &|_| None).unwrap();
        assert!(c.providers.iter().any(|p| p.name == "openai"));
        assert!(c.providers.iter().any(|p| p.name == "anthropic"));
        // Dated snapshots find the entry of their family, not a shorter sibling's.
        let price = |model: &str| c.pricing.lookup(model).map(|m| m.price.input_per_mtok);
        assert_eq!(price("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(price("gpt-4o-2024-08-06"), Some(2.50));
        assert_eq!(price("o3-mini-2025-01-31"), Some(1.10));
        assert_eq!(price("gpt-5-mini-2025-08-07"), Some(0.25));
        assert_eq!(price("claude-opus-4-5-20251101"), Some(5.00));
        assert_eq!(price("claude-opus-4-1-20250805"), Some(15.00));
        assert_eq!(price("claude-3-5-haiku-20241022"), Some(0.80));
        assert_eq!(price("llama3.1:8b"), None);
    }

    #[test]
    fn env_vars_are_expanded() {
        let c = load(
            r#"
            [server]
            listen = "127.0.0.1:${PORT}"
            [[providers]]
            name = "o"
            prefix = "/o/"
            upstream = "http://127.0.0.1:1/base/"
            api = "openai"
            api_key = "${KEY}"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.providers[0].api_key.as_deref(), Some("sk-test"));
        assert_eq!(c.providers[0].prefix, "/o");
        assert_eq!(c.providers[0].upstream.base_path, "/base");
        assert_eq!(raw::expand_str("a$$b$c", &env).unwrap(), "a$b$c");
    }

    #[test]
    fn missing_env_var_names_the_field() {
        let e = load("[admin]\ntoken = \"${NOPE}\"").unwrap_err();
        assert_eq!(e.field, "admin.token");
        assert!(e.message.contains("NOPE"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3").unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
        let e = load("[[providers]]\nname='a'\nprefix='/a'\nupstream='http://x'\napi='openai'\nkey='x'").unwrap_err();
        assert!(e.field.starts_with("providers[0]") || e.message.contains("key"), "{e}");
        assert!(load("[nope]\na=1").is_err());
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[server]\ndefault_provider = \"zzz\"", "server.default_provider"),
            ("[server]\ntls_cert = \"a.pem\"", "server.tls_key"),
            ("[[providers]]\nname='a'\nprefix='a'\nupstream='http://x'\napi='openai'", "providers[0].prefix"),
            ("[[providers]]\nname='a'\nprefix='/a'\nupstream='ftp://x'\napi='openai'", "providers[0].upstream"),
            ("[[providers]]\nname='a'\nprefix='/a'\nupstream='http://u:p@x'\napi='openai'", "providers[0].upstream"),
            (
                "[[providers]]\nname='a'\nprefix='/a'\nupstream='http://x'\napi='openai'\n[[providers]]\nname='b'\nprefix='/a/'\nupstream='http://x'\napi='openai'",
                "providers[1].prefix",
            ),
            ("[[teams]]\nname='t'\nkeys=['k','k']", "teams[0].keys[1]"),
            ("[pricing.\"m\"]\ninput_per_mtok=-1\noutput_per_mtok=1", "pricing.\"m\".input_per_mtok"),
            ("[export]\notlp_endpoint='localhost:4318'", "export.otlp_endpoint"),
        ];
        for (text, field) in cases {
            let e = load(text).unwrap_err();
            assert_eq!(e.field, field, "{text} -> {e}");
        }
        let e = load("[[providers]]\nname='a'\nprefix='/a'\nupstream='http://x'\napi='vertex'").unwrap_err();
        assert_eq!(e.field, "providers[0].api", "{e}");
    }

    #[test]
    fn bedrock_signing_settings() {
        let bedrock = |extra: &str| {
            load(&format!(
                "[[providers]]\nname='b'\nprefix='/b'\nupstream='https://bedrock-runtime.eu-west-3.amazonaws.com'\napi='bedrock'\n{extra}"
            ))
        };
        let c = bedrock("aws_access_key_id='AKIDEXAMPLE'\naws_secret_access_key='secret/key'").unwrap();
        let aws = c.providers[0].aws.as_ref().expect("signing is set");
        assert_eq!(
            (aws.region.as_str(), aws.session_token.as_deref()),
            ("eu-west-3", None),
            "the region from the host"
        );
        assert!(!format!("{:?}", c.providers[0]).contains("secret/key"), "the secret never shows in Debug");
        assert!(bedrock("").unwrap().providers[0].aws.is_none());
        let e = bedrock("aws_access_key_id='AKIDEXAMPLE'").unwrap_err();
        assert_eq!(e.field, "providers[0].aws_secret_access_key", "{e}");
        let local = "[[providers]]\nname='b'\nprefix='/b'\nupstream='http://127.0.0.1:9'\napi='bedrock'\naws_access_key_id='A'\naws_secret_access_key='s'";
        assert_eq!(load(local).unwrap_err().field, "providers[0].aws_region");
        assert_eq!(
            load(&format!("{local}\naws_region='us-east-1'")).unwrap().providers[0].aws.as_ref().unwrap().region,
            "us-east-1"
        );
        let e = load("[[providers]]\nname='o'\nprefix='/o'\nupstream='http://x'\napi='openai'\naws_region='us-east-1'")
            .unwrap_err();
        assert_eq!(e.field, "providers[0].aws_region", "{e}");
        for api in ["gemini", "azure", "bedrock"] {
            let c = load(&format!("[[providers]]\nname='p'\nprefix='/p'\nupstream='http://x'\napi='{api}'")).unwrap();
            assert_eq!(c.providers[0].api.as_str(), api);
        }
    }

    #[test]
    fn describe_never_shows_secrets() {
        let c = load(
            "[admin]\ntoken='${KEY}'\n[[providers]]\nname='o'\nprefix='/o'\nupstream='http://x'\napi='openai'\napi_key='${KEY}'\n[[teams]]\nname='t'\nkeys=['${KEY}']",
        )
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("sk-test"), "{text}");
        assert!(!format!("{c:?}").contains("sk-test"));
    }

    #[test]
    fn describe_shows_the_cluster_without_its_passwords() {
        let c = load("[cluster]\ninstance='tg-a'\npostgres='postgres://tg:pg-secret@db:5432/tg'\nredis='redis://:rd-secret@cache:6379/0'").unwrap();
        let text = c.describe();
        assert!(text.contains("cluster: instance \"tg-a\", postgres postgres://tg:***@db:5432/tg"), "{text}");
        assert!(!text.contains("pg-secret") && !text.contains("rd-secret"), "{text}");
    }
}
