//! The command line: argument parsing and the client commands (`traces`, `trace`, `usage`) that read
//! the admin API and print for people. `serve`, `check-config` and `mock-llm` are dispatched
//! from `main.rs`; their behaviour lives in `server`, `config` and `mock_llm`.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Config;
use crate::model::clock::format_utc;

pub const USAGE: &str = "\
tracegate — a transparent LLM API proxy that records every call as a span

USAGE:
    tracegate serve [--config PATH]
    tracegate check-config [--config PATH]
    tracegate mock-llm [--listen ADDR] [--chunk-delay-ms N]
    tracegate traces [--limit N] [--admin URL] [--config PATH]
    tracegate trace TRACE_ID [--admin URL] [--config PATH]
    tracegate usage [--from DAY] [--to DAY] [--by team,model,...] [--csv] [--admin URL] [--config PATH]

Without --config: $TRACEGATE_CONFIG, else config/tracegate.toml, else built-in defaults.
The admin URL defaults to the config's server.admin_listen; the admin token to
[admin] token or $TRACEGATE_ADMIN_TOKEN. Logging: RUST_LOG (default info).
";

/// A parsed command line.
#[derive(Debug, PartialEq)]
pub enum Command {
    Serve { config: Option<PathBuf> },
    CheckConfig { config: Option<PathBuf> },
    MockLlm { listen: String, chunk_delay_ms: u64 },
    Traces { limit: usize, admin: AdminTarget },
    Trace { trace_id: String, admin: AdminTarget },
    Usage { query: String, csv: bool, admin: AdminTarget },
    Help,
}

/// Where the client commands find the admin API.
#[derive(Debug, PartialEq, Default)]
pub struct AdminTarget {
    pub url: Option<String>,
    pub config: Option<PathBuf>,
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else { return Ok(Command::Help) };
    let mut flags: HashMap<&str, String> = HashMap::new();
    let mut positional = Vec::new();
    let mut csv = false;
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        if arg == "--csv" {
            csv = true;
        } else if let Some(flag) = arg.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, v.to_string()),
                None => (flag, iter.next().ok_or_else(|| format!("--{flag} needs a value"))?.clone()),
            };
            let known = ["config", "listen", "chunk-delay-ms", "limit", "admin", "from", "to", "by"];
            let Some(name) = known.iter().find(|k| **k == name) else {
                return Err(format!("unknown option --{name}"));
            };
            flags.insert(name, value);
        } else if arg == "-h" {
            return Ok(Command::Help);
        } else {
            positional.push(arg.clone());
        }
    }
    let allow = |allowed: &[&str]| -> Result<(), String> {
        match flags.keys().find(|k| !allowed.contains(k)) {
            Some(k) => Err(format!("`{command}` does not take --{k}")),
            None => Ok(()),
        }
    };
    let config = flags.get("config").map(PathBuf::from);
    let admin = || AdminTarget { url: flags.get("admin").cloned(), config: config.clone() };
    let no_positional =
        |p: &Vec<String>| if p.is_empty() { Ok(()) } else { Err(format!("unexpected argument {:?}", p[0])) };
    match command.as_str() {
        "serve" => {
            allow(&["config"])?;
            no_positional(&positional)?;
            Ok(Command::Serve { config })
        }
        "check-config" => {
            allow(&["config"])?;
            no_positional(&positional)?;
            Ok(Command::CheckConfig { config })
        }
        "mock-llm" => {
            allow(&["listen", "chunk-delay-ms"])?;
            no_positional(&positional)?;
            let chunk_delay_ms = match flags.get("chunk-delay-ms") {
                Some(v) => v.parse().map_err(|_| format!("--chunk-delay-ms: {v:?} is not a whole number"))?,
                None => crate::mock_llm::DEFAULT_CHUNK_DELAY.as_millis() as u64,
            };
            Ok(Command::MockLlm {
                listen: flags.get("listen").cloned().unwrap_or_else(|| "127.0.0.1:9090".into()),
                chunk_delay_ms,
            })
        }
        "traces" => {
            allow(&["limit", "admin", "config"])?;
            no_positional(&positional)?;
            let limit = match flags.get("limit") {
                Some(v) => v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--limit: {v:?} is not a positive number"))?,
                None => 20,
            };
            Ok(Command::Traces { limit, admin: admin() })
        }
        "trace" => {
            allow(&["admin", "config"])?;
            let [trace_id] = positional.as_slice() else { return Err("usage: tracegate trace TRACE_ID".into()) };
            Ok(Command::Trace { trace_id: trace_id.clone(), admin: admin() })
        }
        "usage" => {
            allow(&["from", "to", "by", "admin", "config"])?;
            no_positional(&positional)?;
            let mut query = Vec::new();
            for (flag, param) in [("from", "from"), ("to", "to"), ("by", "group_by")] {
                if let Some(value) = flags.get(flag) {
                    query.push(format!("{param}={value}"));
                }
            }
            Ok(Command::Usage { query: query.join("&"), csv, admin: admin() })
        }
        "help" | "--help" => Ok(Command::Help),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Fetches a JSON document from the admin API.
async fn get_json(target: &AdminTarget, path_and_query: &str) -> Result<Value, String> {
    let (base, token) = resolve_admin(target)?;
    let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|e| format!("bad admin URL {url:?}: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(uri).body(Empty::new()).map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let value =
            http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "admin token is not a valid header")?;
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let response = client.request(request).await.map_err(|e| unreachable_admin(&base, &e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let value: Value =
        serde_json::from_slice(&body).map_err(|_| format!("admin API answered {status} with a non-JSON body"))?;
    if !status.is_success() {
        let message = value["error"]["message"].as_str().unwrap_or("request failed");
        return Err(format!("admin API: {status}: {message}"));
    }
    Ok(value)
}

/// Why the admin API could not be asked, in words a user can act on: a refused connection
/// means no `serve` is listening at that address.
fn unreachable_admin(base: &str, error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_connect() {
        format!(
            "no tracegate answers at {base} ({cause}): start it with `tracegate serve` (or `cargo run --release -- serve`), or point --admin at where it listens"
        )
    } else {
        format!("the admin API at {base} failed: {cause}")
    }
}

fn resolve_admin(target: &AdminTarget) -> Result<(String, Option<String>), String> {
    let config = match (&target.url, &target.config) {
        (Some(_), None) => None,
        _ => Some(Config::resolve(target.config.as_deref()).map_err(|e| format!("config: {e}"))?),
    };
    let token = config
        .as_ref()
        .and_then(|c| c.admin.token.clone())
        .or_else(|| std::env::var("TRACEGATE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()));
    let url = match (&target.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => {
            let mut addr = c.server.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
        (None, None) => unreachable!("config is loaded when no URL is given"),
    };
    Ok((url, token))
}

pub async fn traces(limit: usize, admin: &AdminTarget) -> Result<String, String> {
    let value = get_json(admin, &format!("/api/traces?limit={limit}")).await?;
    Ok(format_traces(&value))
}

pub async fn trace(trace_id: &str, admin: &AdminTarget) -> Result<String, String> {
    let value = get_json(admin, &format!("/api/traces/{trace_id}")).await?;
    Ok(format_trace(&value))
}

pub async fn usage(query: &str, csv: bool, admin: &AdminTarget) -> Result<String, String> {
    let value = get_json(admin, &format!("/api/usage?{query}")).await?;
    Ok(crate::admin::usage_report::format_report(&value, csv))
}

/// One line per trace, newest first.
pub fn format_traces(value: &Value) -> String {
    let mut out = String::new();
    let traces = value["traces"].as_array().cloned().unwrap_or_default();
    if traces.is_empty() {
        return "no traces yet\n".into();
    }
    let _ = writeln!(
        out,
        "{:<32}  {:<23}  {:>10}  {:>5}  {:>15}  {:>10}  {:<9}  ROOT",
        "TRACE_ID", "START (UTC)", "DURATION", "SPANS", "TOKENS IN/OUT", "COST", "STATUS"
    );
    for t in traces {
        let _ = writeln!(
            out,
            "{:<32}  {:<23}  {:>10}  {:>5}  {:>15}  {:>10}  {:<9}  {}",
            t["trace_id"].as_str().unwrap_or("?"),
            format_utc(t["start_time_unix_nano"].as_u64().unwrap_or(0)),
            format_ms(t["duration_ms"].as_f64()),
            t["span_count"].as_u64().unwrap_or(0),
            format!("{}/{}", t["input_tokens"].as_u64().unwrap_or(0), t["output_tokens"].as_u64().unwrap_or(0)),
            format_cost(t["cost_usd"].as_f64()),
            t["status"].as_str().unwrap_or("?"),
            t["root_name"].as_str().unwrap_or(""),
        );
    }
    out
}

/// A trace as an indented tree of spans with durations, tokens and cost.
pub fn format_trace(value: &Value) -> String {
    let spans = value["spans"].as_array().cloned().unwrap_or_default();
    let ids: std::collections::HashSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Value>> = HashMap::new();
    for span in &spans {
        // A span whose parent is not in this trace (the caller's own span) is shown as a root.
        let parent = span["parent_span_id"].as_str().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    // Tokens of the proxied calls only, as in the trace list: an app's GenAI span may describe
    // one of those very calls.
    let (input, output): (u64, u64) = spans.iter().filter(|s| s["kind"] == "llm").fold((0, 0), |(i, o), s| {
        (i + s["input_tokens"].as_u64().unwrap_or(0), o + s["output_tokens"].as_u64().unwrap_or(0))
    });
    let costs: Vec<f64> = spans.iter().filter_map(|s| s["cost_usd"].as_f64()).collect();
    let start = spans.iter().filter_map(|s| s["start_time_unix_nano"].as_u64()).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| {
            s["start_time_unix_nano"].as_u64().unwrap_or(0) + (s["duration_ms"].as_f64().unwrap_or(0.0) * 1e6) as u64
        })
        .max()
        .unwrap_or(start);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}  {} span{}  {}  tokens {}/{}  cost {}  started {} UTC",
        value["trace_id"].as_str().unwrap_or("?"),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        format_ms(Some((end - start) as f64 / 1e6)),
        input,
        output,
        format_cost((!costs.is_empty()).then(|| costs.iter().sum())),
        format_utc(start),
    );
    fn walk(
        out: &mut String,
        children: &HashMap<Option<&str>, Vec<&Value>>,
        parent: Option<&str>,
        prefix: &str,
        trace_start: u64,
    ) {
        let Some(list) = children.get(&parent) else { return };
        for (i, span) in list.iter().enumerate() {
            let last = i + 1 == list.len();
            let _ = writeln!(out, "{prefix}{}{}", if last { "└─ " } else { "├─ " }, describe_span(span, trace_start));
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(out, children, span["span_id"].as_str(), &next, trace_start);
        }
    }
    walk(&mut out, &children, None, "", start);
    out
}

fn describe_span(span: &Value, trace_start: u64) -> String {
    let mut line = format!(
        "{}  [{}{}]  +{}  {}",
        span["name"].as_str().unwrap_or("?"),
        span["status"].as_str().unwrap_or("?"),
        span["status_code"].as_u64().map(|c| format!(" {c}")).unwrap_or_default(),
        format_ms(Some((span["start_time_unix_nano"].as_u64().unwrap_or(trace_start) - trace_start) as f64 / 1e6)),
        format_ms(span["duration_ms"].as_f64()),
    );
    if let Some(ttft) = span["ttft_ms"].as_f64() {
        let _ = write!(line, "  ttft {}", format_ms(Some(ttft)));
    }
    match (span["input_tokens"].as_u64(), span["output_tokens"].as_u64()) {
        (Some(i), Some(o)) => {
            let _ = write!(line, "  tokens {i}/{o} ({})", span["usage_source"].as_str().unwrap_or("?"));
        }
        _ => line.push_str("  tokens ?"),
    }
    if let Some(cost) = span["cost_usd"].as_f64() {
        let _ = write!(line, "  {}", format_cost(Some(cost)));
    }
    for key in ["team", "user"] {
        if let Some(v) = span[key].as_str() {
            let _ = write!(line, "  {key}={v}");
        }
    }
    let _ = write!(line, "  span {}", span["span_id"].as_str().unwrap_or("?"));
    if let Some(e) = span["error"].as_str() {
        let _ = write!(line, "\n      error: {e}");
    }
    line
}

fn format_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms >= 1000.0 => format!("{:.2} s", ms / 1000.0),
        Some(ms) => format!("{ms:.1} ms"),
    }
}

fn format_cost(cost: Option<f64>) -> String {
    match cost {
        None => "-".into(),
        Some(c) => format!("${c:.6}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&args("serve --config x.toml")).unwrap(), Command::Serve { config: Some("x.toml".into()) });
        assert_eq!(
            parse(&args("mock-llm --chunk-delay-ms=5")).unwrap(),
            Command::MockLlm { listen: "127.0.0.1:9090".into(), chunk_delay_ms: 5 }
        );
        assert!(matches!(parse(&args("trace abc")).unwrap(), Command::Trace { .. }));
        assert!(parse(&args("trace")).is_err());
        assert!(parse(&args("serve --limit 3")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        match parse(&args("usage --from 2026-11-01 --by team,model --csv")).unwrap() {
            Command::Usage { query, csv, .. } => {
                assert_eq!(query, "from=2026-11-01&group_by=team,model");
                assert!(csv);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&[]).unwrap(), Command::Help);
    }

    #[test]
    fn trace_tree_nests_children_under_parents() {
        let v = serde_json::json!({"trace_id": "t", "spans": [
            {"span_id": "a", "parent_span_id": "caller", "name": "agent", "kind": "app", "status": "ok", "start_time_unix_nano": 1_000_000, "duration_ms": 10.0, "input_tokens": 3, "output_tokens": 4, "usage_source": "reported"},
            {"span_id": "b", "parent_span_id": "a", "name": "chat gpt-4o", "kind": "llm", "status": "ok", "status_code": 200, "start_time_unix_nano": 2_000_000, "duration_ms": 5.0, "ttft_ms": 1.5, "input_tokens": 3, "output_tokens": 4, "usage_source": "reported"}
        ]});
        let text = format_trace(&v);
        assert!(text.contains("  tokens 3/4  "), "the app span describing the call is not counted again: {text}");
        assert!(text.contains("└─ agent"), "{text}");
        assert!(
            text.contains("   └─ chat gpt-4o  [ok 200]  +1.0 ms  5.0 ms  ttft 1.5 ms  tokens 3/4 (reported)"),
            "{text}"
        );
    }
}
