//! The CLI's output for people: the trace list, the trace tree, the usage table (or CSV) and
//! the price list, from the admin API's JSON (or the config's prices).
//!
//! Every field that came from outside (model names, user ids, span names, error messages) goes
//! through [`printable`]: a control character is shown escaped (`\n`, `\u{1b}`), so it cannot
//! break a table's lines or send escape sequences to the terminal.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use serde_json::Value;

use crate::model::clock::format_utc;
use crate::model::pricing::{catalog, Price, PriceBook, PriceSource};

/// `text` with every control character escaped; borrowed when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON string field, printable, or `default` when absent.
fn field<'a>(value: &'a Value, default: &'a str) -> Cow<'a, str> {
    printable(value.as_str().unwrap_or(default))
}

/// One line per trace, newest first.
pub fn traces(value: &Value) -> String {
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
        let (input, output) = (t["input_tokens"].as_u64().unwrap_or(0), t["output_tokens"].as_u64().unwrap_or(0));
        let _ = writeln!(
            out,
            "{:<32}  {:<23}  {:>10}  {:>5}  {:>15}  {:>10}  {:<9}  {}",
            field(&t["trace_id"], "?"),
            format_utc(t["start_time_unix_nano"].as_u64().unwrap_or(0)),
            format_ms(t["duration_ms"].as_f64()),
            t["span_count"].as_u64().unwrap_or(0),
            format!("{input}/{output}"),
            cost_or_unpriced(t["cost_usd"].as_f64(), input + output > 0),
            field(&t["status"], "?"),
            field(&t["root_name"], ""),
        );
    }
    out
}

/// A trace as an indented tree of spans with durations, tokens and cost.
pub fn trace(value: &Value) -> String {
    let spans = value["spans"].as_array().cloned().unwrap_or_default();
    let ids: HashSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
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
        field(&value["trace_id"], "?"),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        format_ms(Some(end.saturating_sub(start) as f64 / 1e6)),
        input,
        output,
        cost_or_unpriced((!costs.is_empty()).then(|| costs.iter().sum()), input + output > 0),
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
    let start = span["start_time_unix_nano"].as_u64().unwrap_or(trace_start);
    let mut line = format!(
        "{}  [{}{}]  +{}  {}",
        field(&span["name"], "?"),
        field(&span["status"], "?"),
        span["status_code"].as_u64().map(|c| format!(" {c}")).unwrap_or_default(),
        format_ms(Some(start.saturating_sub(trace_start) as f64 / 1e6)),
        format_ms(span["duration_ms"].as_f64()),
    );
    if let Some(ttft) = span["ttft_ms"].as_f64() {
        let _ = write!(line, "  ttft {}", format_ms(Some(ttft)));
    }
    let tokens = (span["input_tokens"].as_u64(), span["output_tokens"].as_u64());
    match tokens {
        (Some(i), Some(o)) => {
            let _ = write!(line, "  tokens {i}/{o} ({})", field(&span["usage_source"], "?"));
        }
        _ => line.push_str("  tokens ?"),
    }
    // Ingested app spans are never priced (their call may also be a proxied one): no "unpriced".
    let has_model = span["kind"] == "llm" && (span["response_model"].is_string() || span["request_model"].is_string());
    match span["cost_usd"].as_f64() {
        Some(cost) => {
            let _ = write!(line, "  {}", format_cost(Some(cost)));
        }
        None if has_model && tokens.0.is_some() => line.push_str("  unpriced"),
        None => {}
    }
    for key in ["team", "user"] {
        if let Some(v) = span[key].as_str() {
            let _ = write!(line, "  {key}={}", printable(v));
        }
    }
    let _ = write!(line, "  span {}", field(&span["span_id"], "?"));
    if let Some(e) = span["error"].as_str() {
        let _ = write!(line, "\n      error: {}", printable(e));
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

/// The cost, or `unpriced` when tokens were counted but no price applies.
fn cost_or_unpriced(cost: Option<f64>, tokens_known: bool) -> String {
    match cost {
        None if tokens_known => "unpriced".into(),
        cost => format_cost(cost),
    }
}

const COUNTERS: [&str; 5] = ["requests", "input_tokens", "output_tokens", "cost_usd", "errors"];

/// The `/api/usage` report as an aligned table with a TOTAL line (`csv = false`), or as CSV
/// (header and one line per row; totals are a sum away, and a TOTAL line would be read as
/// data by whatever loads the file). The group columns come first, in the order asked.
pub fn usage(report: &Value, group_by: &[String], csv: bool) -> String {
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let columns: Vec<&str> = group_by.iter().map(String::as_str).chain(COUNTERS).collect();
    let cell = |row: &Value, column: &str| -> String {
        match &row[column] {
            Value::Null if COUNTERS.contains(&column) => "0".into(),
            Value::Null => "-".into(),
            Value::String(s) => printable(s).into_owned(),
            Value::Number(n) if column == "cost_usd" => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
            other => printable(&other.to_string()).into_owned(),
        }
    };
    let mut table: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_string()).collect()];
    for row in &rows {
        table.push(columns.iter().map(|c| cell(row, c)).collect());
    }
    if csv {
        return table.iter().map(|r| r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n").collect();
    }
    let totals = &report["totals"];
    let mut total_line: Vec<String> =
        columns.iter().map(|c| if COUNTERS.contains(c) { cell(totals, c) } else { String::new() }).collect();
    if group_by.is_empty() {
        table.push(total_line);
    } else {
        total_line[0] = "TOTAL".into();
        table.push(total_line);
    }
    align(&table, group_by.len())
}

/// Columns padded to their widest cell: text left-aligned, the columns from `numbers_from` on
/// right-aligned.
fn align(table: &[Vec<String>], numbers_from: usize) -> String {
    let width = |i: usize| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..table[0].len()).map(width).collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i >= numbers_from { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn per_mtok(value: Option<f64>, fallback: &str) -> String {
    match value {
        Some(v) => format!("${v}"),
        None => fallback.into(),
    }
}

/// What applies to `model` and where it came from; an error when nothing does.
pub fn price_of(book: &PriceBook, model: &str) -> Result<String, String> {
    let shown = printable(model);
    let Some(found) = book.lookup(model) else {
        return Err(format!(
            "{shown:?} has no price: its calls are recorded with cost_usd null and count nothing against budgets. \
             Add [pricing.\"{shown}\"] (input_per_mtok, output_per_mtok) to the config."
        ));
    };
    let how =
        if found.key == model { "exactly".to_string() } else { format!("by the entry {:?}", printable(found.key)) };
    let source = match found.source {
        PriceSource::Config => found.source.describe(),
        PriceSource::Catalog => format!("{} ({})", found.source.describe(), catalog().source),
    };
    let p = found.price;
    let mut out = format!("{shown}: priced {how}, from the {source}\n");
    let _ = writeln!(out, "  USD per million tokens");
    let _ = writeln!(out, "  input          {}", per_mtok(Some(p.input_per_mtok), ""));
    let _ = writeln!(out, "  cached input   {}", per_mtok(p.cached_input_per_mtok, "as input"));
    let _ = writeln!(out, "  cache write    {}", per_mtok(p.cache_write_per_mtok, "as input"));
    let _ = writeln!(out, "  output         {}", per_mtok(Some(p.output_per_mtok), ""));
    let _ = writeln!(out, "  reasoning      {}", per_mtok(p.reasoning_per_mtok, "as output"));
    Ok(out)
}

/// Every price known: the config's entries, then the catalog's, one line each.
pub fn price_list(book: &PriceBook) -> String {
    let catalog = catalog();
    let mut table =
        vec![["MODEL", "SOURCE", "INPUT", "CACHED", "CACHE WRITE", "OUTPUT", "REASONING"].map(String::from).to_vec()];
    let optional = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let row = |model: &str, source: &str, p: &Price| {
        vec![
            printable(model).into_owned(),
            source.to_string(),
            format!("{}", p.input_per_mtok),
            optional(p.cached_input_per_mtok),
            optional(p.cache_write_per_mtok),
            format!("{}", p.output_per_mtok),
            optional(p.reasoning_per_mtok),
        ]
    };
    for (model, price) in book.overrides() {
        table.push(row(model, "config", price));
    }
    let mut models: Vec<(&&str, &Price)> = catalog.prices.iter().collect();
    models.sort_by_key(|(m, _)| **m);
    for (model, price) in models {
        table.push(row(model, "catalog", price));
    }
    let mut out = format!(
        "USD per million tokens; '-' = billed as plain input (cached, cache write) or output (reasoning).\n\
         A model takes its closest entry (exact, else longest prefix); the config wins a tie. Catalog dated {} ({}).\n",
        catalog.dated, catalog.source
    );
    out.push_str(&align(&table, 2));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn trace_tree_nests_children_under_parents() {
        let v = serde_json::json!({"trace_id": "t", "spans": [
            {"span_id": "a", "parent_span_id": "caller", "name": "agent", "kind": "app", "status": "ok", "start_time_unix_nano": 1_000_000, "duration_ms": 10.0, "input_tokens": 3, "output_tokens": 4, "usage_source": "reported"},
            {"span_id": "b", "parent_span_id": "a", "name": "chat gpt-4o", "kind": "llm", "status": "ok", "status_code": 200, "start_time_unix_nano": 2_000_000, "duration_ms": 5.0, "ttft_ms": 1.5, "input_tokens": 3, "output_tokens": 4, "usage_source": "reported", "request_model": "gpt-4o"}
        ]});
        let text = trace(&v);
        assert!(text.contains("  tokens 3/4  "), "the app span describing the call is not counted again: {text}");
        assert!(text.contains("└─ agent"), "{text}");
        assert!(
            text.contains(
                "   └─ chat gpt-4o  [ok 200]  +1.0 ms  5.0 ms  ttft 1.5 ms  tokens 3/4 (reported)  unpriced  span b"
            ),
            "{text}"
        );
        assert!(text.contains("cost unpriced"), "{text}");
    }

    #[test]
    fn control_characters_are_escaped_in_every_printed_field() {
        assert_eq!(printable("plain"), Cow::Borrowed("plain"));
        assert_eq!(printable("a\nb\u{1b}[31m\t"), "a\\nb\\u{1b}[31m\\t");
        let report = serde_json::json!({"rows": [
            {"model": "evil\nmodel", "team": "t\u{7}", "requests": 1, "input_tokens": 2, "output_tokens": 3, "cost_usd": 0.5, "errors": 0}
        ], "totals": {"requests": 1, "input_tokens": 2, "output_tokens": 3, "cost_usd": 0.5, "errors": 0}});
        let text = usage(&report, &["model".into(), "team".into()], false);
        assert_eq!(text.lines().count(), 3, "header, one row, total: {text}");
        assert!(text.contains("evil\\nmodel") && text.contains("t\\u{7}"), "{text}");
        let traces_text =
            traces(&serde_json::json!({"traces": [{"trace_id": "x", "root_name": "a\r\nb", "status": "ok"}]}));
        assert_eq!(traces_text.lines().count(), 2, "{traces_text}");
    }

    #[test]
    fn usage_keeps_the_asked_column_order_and_csv_has_no_total_line() {
        let report = serde_json::json!({"rows": [
            {"day": "2026-11-01", "model": "gpt-4o", "team": "search", "requests": 2, "input_tokens": 10, "output_tokens": 10, "cost_usd": 0.5, "errors": 0},
            {"day": "2026-11-02", "model": "gpt-4o", "team": null, "requests": 1, "input_tokens": 5, "output_tokens": 5, "cost_usd": 0.25, "errors": 1}
        ], "totals": {"requests": 3, "input_tokens": 15, "output_tokens": 15, "cost_usd": 0.75, "errors": 1}});
        let by: Vec<String> = ["day", "team", "model"].map(String::from).to_vec();
        let text = usage(&report, &by, false);
        assert!(text.lines().next().unwrap().starts_with("day         team    model"), "{text}");
        assert!(text.lines().last().unwrap().starts_with("TOTAL"), "{text}");
        let csv = usage(&report, &by, true);
        assert_eq!(
            csv,
            "day,team,model,requests,input_tokens,output_tokens,cost_usd,errors\n\
             2026-11-01,search,gpt-4o,2,10,10,0.500000,0\n\
             2026-11-02,-,gpt-4o,1,5,5,0.250000,1\n"
        );
        let empty = usage(&serde_json::json!({"rows": [], "totals": {}}), &by, true);
        assert_eq!(empty, "day,team,model,requests,input_tokens,output_tokens,cost_usd,errors\n");
    }

    #[test]
    fn prices_say_what_applies_and_where_it_came_from() {
        let book = PriceBook::new(BTreeMap::from([(
            "llama3".to_string(),
            Price {
                input_per_mtok: 0.0,
                output_per_mtok: 0.0,
                cached_input_per_mtok: None,
                cache_write_per_mtok: None,
                reasoning_per_mtok: None,
            },
        )]));
        let text = price_of(&book, "gpt-4o-mini-2024-07-18").unwrap();
        assert!(
            text.starts_with("gpt-4o-mini-2024-07-18: priced exactly, from the built-in catalog, dated "),
            "{text}"
        );
        assert!(text.contains("input          $0.15\n") && text.contains("output         $0.6\n"), "{text}");
        let text = price_of(&book, "llama3.1:8b").unwrap();
        assert!(text.contains("by the entry \"llama3\", from the config [pricing]"), "{text}");
        let error = price_of(&book, "my-model\n").unwrap_err();
        assert!(error.contains("my-model\\n") && error.contains("[pricing."), "{error}");
        let list = price_list(&book);
        assert!(list.lines().nth(2).unwrap().starts_with("MODEL"), "{list}");
        assert!(list.lines().nth(3).unwrap().starts_with("llama3 ") && list.contains(" config "), "{list}");
        assert!(list.lines().count() > 500);
    }
}
