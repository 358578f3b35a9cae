//! The command line: what `tracegate` accepts (clap's derive API, so `--help`, `-h`,
//! `--version`, `-V`, short aliases and one-line errors behave as users of other CLIs expect),
//! and the commands that are clients of the admin API (`traces`, `trace`, `usage`, `export`,
//! `delete`) or read the config alone (`prices`). `serve`, `check-config` and `mock-llm` are dispatched from
//! `main.rs`; their behaviour lives in `server`, `config` and `mock_llm`.
//!
//! `client` asks the admin API; `print` turns its JSON into text for people, every field
//! passed through [`print::printable`] so a control character in a model name or a user id
//! cannot break a table or drive the terminal.

mod client;
pub mod print;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

pub use client::{AdminTarget, BROKEN_PIPE};

const AFTER_HELP: &str = "\
Without --config: $TRACEGATE_CONFIG, else config/tracegate.toml, else built-in defaults.
The admin URL defaults to the config's server.admin_listen; the admin token to [admin] token
or $TRACEGATE_ADMIN_TOKEN. Logging: RUST_LOG (default info).";

/// tracegate — a transparent LLM API proxy that records every call as a span.
#[derive(Debug, Parser)]
#[command(name = "tracegate", version, about, after_help = AFTER_HELP, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, PartialEq, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener (API, web UI, /metrics, OTLP ingest).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate a config and print what it resolved; exit 1 naming the bad field.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run an offline fake upstream speaking OpenAI, Anthropic, Gemini, Azure OpenAI and Bedrock.
    MockLlm {
        /// Address to listen on.
        #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        listen: String,
        /// Pause between streamed chunks, in milliseconds.
        #[arg(long, value_name = "N", default_value_t = crate::mock_llm::DEFAULT_CHUNK_DELAY.as_millis() as u64)]
        chunk_delay_ms: u64,
    },
    /// List traces, newest first, one line each; the filters find calls however old.
    Traces {
        /// How many traces to show.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Write every matching span with its bodies as JSON Lines to stdout, newest first.
    Export {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Delete a trace, or every span matching the filters, with their bodies (the usage totals stay).
    Delete {
        /// Delete this trace (32 hex digits) instead of filtering.
        #[arg(long, value_name = "TRACE_ID",
              conflicts_with_all = ["team", "user", "model", "status", "session", "since", "from", "to", "search"])]
        trace: Option<String>,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Show one trace as a tree with durations, tokens and cost.
    Trace {
        /// The trace id (32 hex digits), as `traces` lists it.
        trace_id: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Show usage (requests, tokens, cost, errors) grouped as asked.
    Usage {
        #[command(flatten)]
        query: UsageQuery,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Show the price that applies to MODEL and where it comes from, or every price known.
    Prices {
        /// A model name as calls carry it, e.g. gpt-4o-mini-2024-07-18.
        model: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `--config PATH`.
#[derive(Debug, Default, PartialEq, Args)]
pub struct ConfigArg {
    /// The config file (TOML).
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The filters of `traces`, `export` and `delete` (all combined with AND).
#[derive(Debug, Default, PartialEq, Args)]
pub struct Filters {
    /// Only calls of this team.
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
    /// Only calls of this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only calls that asked for or answered with this model.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Only calls with this status.
    #[arg(long, value_name = "STATUS", value_parser = ["ok", "error", "cancelled"])]
    pub status: Option<String>,
    /// Only calls of this session.
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// Only calls of the last DURATION: 30m, 1h, 2d (s, m, h, d, w).
    #[arg(long, value_name = "DURATION", conflicts_with = "from", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// Only calls from TIME on: RFC 3339 (2026-12-05T10:00:00Z), a day, or unix milliseconds.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Only calls before TIME (same forms as --from).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Only calls whose request or response body holds TEXT (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
}

impl Filters {
    /// The filters as the admin API's query parameters (`--since` as `from`, in unix ms).
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        for (name, value) in [
            ("team", &self.team),
            ("user", &self.user),
            ("model", &self.model),
            ("status", &self.status),
            ("session", &self.session),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.search),
        ] {
            if let Some(value) = value {
                params.push((name, value.clone()));
            }
        }
        if let Some(since) = self.since {
            let now_ms = crate::model::clock::unix_nanos() / 1_000_000;
            params.push(("from", now_ms.saturating_sub(since.as_millis() as u64).to_string()));
        }
        params
    }

    fn is_empty(&self) -> bool {
        self.params().is_empty()
    }
}

/// `30m`, `1h`, `2d`, `1w`, `45s`: a positive whole number and a unit.
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err("expected a number and a unit: 30m, 1h, 2d (s, m, h, d, w)".into()),
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_secs(n.saturating_mul(seconds))),
        _ => Err("expected a number and a unit: 30m, 1h, 2d (s, m, h, d, w)".into()),
    }
}

/// `a=1&b=x%20y`: parameters percent-encoded for a URL.
fn query_string(params: &[(&str, String)]) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    };
    params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// The options of `tracegate usage`.
#[derive(Debug, Default, PartialEq, Args)]
pub struct UsageQuery {
    /// First day, YYYY-MM-DD (UTC, inclusive); default 29 days before --to.
    #[arg(long, value_name = "DAY")]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC, inclusive); default today.
    #[arg(long, value_name = "DAY")]
    pub to: Option<String>,
    /// Columns to group by, in this order.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',', default_value = "team",
          value_parser = ["day", "team", "user", "provider", "model"])]
    pub by: Vec<String>,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
}

/// `tracegate traces`: one line per trace matching the filters, newest first.
pub async fn traces(limit: u32, filters: &Filters, admin: &AdminTarget) -> Result<String, String> {
    let mut params = vec![("limit", limit.to_string())];
    params.extend(filters.params());
    let value = client::get_json(admin, &format!("/api/traces?{}", query_string(&params))).await?;
    if !filters.is_empty() && value["traces"].as_array().is_some_and(|t| t.is_empty()) {
        return Ok("no traces match these filters\n".into());
    }
    Ok(print::traces(&value))
}

/// `tracegate export`: the matching spans as JSON Lines, written to `out` as they arrive.
/// Returns the bytes written.
pub async fn export(filters: &Filters, admin: &AdminTarget, out: &mut impl std::io::Write) -> Result<u64, String> {
    client::stream(admin, &format!("/api/export?{}", query_string(&filters.params())), out).await
}

/// `tracegate delete`: deletes a trace or the matching spans (or counts them, `--dry-run`).
pub async fn delete(
    filters: &Filters,
    trace: Option<&str>,
    dry_run: bool,
    admin: &AdminTarget,
) -> Result<String, String> {
    let dry = if dry_run { "?dry_run=true" } else { "" };
    let path = match trace {
        Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => format!("/api/traces/{id}{dry}"),
        Some(id) => return Err(format!("--trace: {:?} is not a trace id (32 hex digits)", print::printable(id))),
        None if filters.is_empty() => {
            return Err(
                "say what to delete: --trace ID, or at least one filter (--team, --user, --session, --since, ...)"
                    .into(),
            )
        }
        None => {
            let mut params = filters.params();
            if dry_run {
                params.push(("dry_run", "true".into()));
            }
            format!("/api/spans?{}", query_string(&params))
        }
    };
    let value = client::delete_json(admin, &path).await?;
    let n = value["deleted"].as_u64().ok_or("the admin API's answer has no \"deleted\" count")?;
    let spans = if n == 1 { "span" } else { "spans" };
    Ok(match dry_run {
        true => format!("would delete {n} {spans}\n"),
        false => format!("deleted {n} {spans}\n"),
    })
}

/// `tracegate trace TRACE_ID`: the trace as a tree.
pub async fn trace(trace_id: &str, admin: &AdminTarget) -> Result<String, String> {
    if trace_id.is_empty() || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{:?} is not a trace id (32 hex digits)", print::printable(trace_id)));
    }
    let value = client::get_json(admin, &format!("/api/traces/{trace_id}")).await?;
    Ok(print::trace(&value))
}

/// `tracegate usage`: the table (or CSV) with the columns in the order asked.
pub async fn usage(query: &UsageQuery, admin: &AdminTarget) -> Result<String, String> {
    let mut columns: Vec<String> = Vec::new();
    for column in &query.by {
        if !columns.contains(column) {
            columns.push(column.clone());
        }
    }
    let mut params = vec![format!("group_by={}", columns.join(","))];
    for (name, value) in [("from", &query.from), ("to", &query.to)] {
        if let Some(value) = value {
            if !is_day(value) {
                return Err(format!("--{name}: {:?} is not a day (YYYY-MM-DD)", print::printable(value)));
            }
            params.push(format!("{name}={value}"));
        }
    }
    let value = client::get_json(admin, &format!("/api/usage?{}", params.join("&"))).await?;
    Ok(print::usage(&value, &columns, query.csv))
}

/// `tracegate prices [MODEL]`: what applies to MODEL, or the whole price list. A model with no
/// price is an error (exit 1), so scripts can check a model before sending it traffic.
pub fn prices(model: Option<&str>, config: &ConfigArg) -> Result<String, String> {
    let config = Config::resolve(config.config.as_deref()).map_err(|e| format!("config error: {e}"))?;
    match model {
        Some(model) => print::price_of(&config.pricing, model),
        None => Ok(print::price_list(&config.pricing)),
    }
}

fn is_day(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("tracegate").chain(line.split_whitespace())).map(|c| c.command)
    }

    #[test]
    fn parses_commands_options_and_aliases() {
        assert_eq!(
            parse("serve --config x.toml").unwrap(),
            Command::Serve { config: ConfigArg { config: Some("x.toml".into()) } }
        );
        assert_eq!(parse("serve -c x.toml").unwrap(), parse("serve --config=x.toml").unwrap());
        assert_eq!(
            parse("mock-llm --chunk-delay-ms=5").unwrap(),
            Command::MockLlm { listen: "127.0.0.1:9090".into(), chunk_delay_ms: 5 }
        );
        assert!(matches!(parse("traces -n 3").unwrap(), Command::Traces { limit: 3, .. }));
        assert!(matches!(parse("traces --limit 3").unwrap(), Command::Traces { limit: 3, .. }));
        assert!(matches!(parse("traces").unwrap(), Command::Traces { limit: 20, .. }));
        assert!(matches!(parse("trace abc").unwrap(), Command::Trace { .. }));
        match parse("usage --from 2026-11-01 --by day,team,model --csv").unwrap() {
            Command::Usage { query, .. } => {
                assert_eq!(query.by, ["day", "team", "model"]);
                assert_eq!(query.from.as_deref(), Some("2026-11-01"));
                assert!(query.csv);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("prices gpt-4o").unwrap(), Command::Prices { model: Some(_), .. }));
        assert!(matches!(parse("prices").unwrap(), Command::Prices { model: None, .. }));
    }

    #[test]
    fn help_and_version_are_answers_not_errors() {
        use clap::error::ErrorKind;
        for (line, kind) in [
            ("--help", ErrorKind::DisplayHelp),
            ("-h", ErrorKind::DisplayHelp),
            ("serve --help", ErrorKind::DisplayHelp),
            ("usage -h", ErrorKind::DisplayHelp),
            ("--version", ErrorKind::DisplayVersion),
            ("-V", ErrorKind::DisplayVersion),
            ("", ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
        ] {
            assert_eq!(parse(line).unwrap_err().kind(), kind, "{line}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        for (line, says) in [
            ("trace", "TRACE_ID"),
            ("serve --limit 3", "--limit"),
            ("frobnicate", "frobnicate"),
            ("traces -n 0", "0"),
            ("traces -n many", "many"),
            ("usage --by team,colour", "colour"),
        ] {
            let error = parse(line).unwrap_err().to_string();
            assert!(error.contains(says), "{line}: {error}");
            assert!(error.lines().count() <= 6, "a short error, not the whole usage: {error}");
        }
    }

    #[test]
    fn finding_flags_become_the_admin_apis_parameters() {
        let Command::Traces { limit, filters, .. } =
            parse("traces --team a --user u --model m --status error --session s --to 2026-12-01 --search x --limit 7")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(limit, 7);
        let params: Vec<(&str, String)> = filters.params();
        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["team", "user", "model", "status", "session", "to", "q"]);
        assert_eq!(query_string(&[("q", "a b&c=é".into())]), "q=a%20b%26c%3D%C3%A9");
        assert_eq!(parse_since("30m"), Ok(std::time::Duration::from_secs(1800)));
        assert_eq!(parse_since("2d"), Ok(std::time::Duration::from_secs(172_800)));
        for bad in ["", "h", "0h", "1y", "1.5h", "-1h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        let Command::Export { filters, .. } = parse("export --since 1h").unwrap() else { panic!() };
        let from: u64 = filters.params()[0].1.parse().unwrap();
        let now_ms = crate::model::clock::unix_nanos() / 1_000_000;
        assert!((now_ms - 3_600_000..=now_ms - 3_599_000).contains(&from), "{from}");
        assert!(matches!(parse("delete --trace abc --dry-run").unwrap(), Command::Delete { dry_run: true, .. }));
        assert!(parse("delete --trace abc --team a").is_err(), "--trace or filters, not both");
        assert!(parse("traces --since 1h --from 2026-12-01").is_err());
        assert!(parse("traces --status fine").is_err());
    }

    #[test]
    fn days_are_checked_before_asking_the_server() {
        assert!(is_day("2026-11-01"));
        assert!(!is_day("2026-11-1"));
        assert!(!is_day("yesterday"));
    }
}
