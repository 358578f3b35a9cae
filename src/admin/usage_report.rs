//! Usage reports: the ledger's cells grouped by day, team, user, provider or model, with
//! totals — the JSON of `/api/usage`, and the table or CSV of `tracegate usage`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::store::ledger::{LedgerKey, LedgerRow};

/// A dimension usage can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupBy {
    Day,
    Team,
    User,
    Provider,
    Model,
}

impl GroupBy {
    pub fn parse_list(text: &str) -> Result<Vec<GroupBy>, String> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let g = match name {
                "day" => GroupBy::Day,
                "team" => GroupBy::Team,
                "user" => GroupBy::User,
                "provider" => GroupBy::Provider,
                "model" => GroupBy::Model,
                other => return Err(format!("cannot group by {other:?} (use day, team, user, provider, model)")),
            };
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Team => "team",
            GroupBy::User => "user",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
        }
    }

    fn value(self, key: &LedgerKey) -> Value {
        let text = |s: &str| if s.is_empty() { Value::Null } else { Value::String(s.to_string()) };
        match self {
            GroupBy::Day => Value::String(crate::model::clock::format_day(i64::from(key.day))),
            GroupBy::Team => text(&key.team),
            GroupBy::User => text(&key.user),
            GroupBy::Provider => text(&key.provider),
            GroupBy::Model => text(&key.model),
        }
    }
}

/// The `/api/usage` answer: `{"rows": [UsageRow...], "totals": UsageRow}`.
pub fn report(cells: &[(LedgerKey, LedgerRow)], group_by: &[GroupBy]) -> Value {
    let mut groups: BTreeMap<Vec<String>, (Vec<Value>, LedgerRow)> = BTreeMap::new();
    let mut totals = LedgerRow::default();
    for (key, row) in cells {
        let values: Vec<Value> = group_by.iter().map(|g| g.value(key)).collect();
        let sort_key = values.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect();
        groups.entry(sort_key).or_insert_with(|| (values, LedgerRow::default())).1.add(row);
        totals.add(row);
    }
    let rows: Vec<Value> = groups
        .into_values()
        .map(|(values, row)| {
            let mut object = Map::new();
            for (g, v) in group_by.iter().zip(values) {
                object.insert(g.name().to_string(), v);
            }
            counters(&mut object, &row);
            Value::Object(object)
        })
        .collect();
    let mut total = Map::new();
    counters(&mut total, &totals);
    serde_json::json!({ "rows": rows, "totals": total })
}

fn counters(object: &mut Map<String, Value>, row: &LedgerRow) {
    object.insert("requests".into(), row.requests.into());
    object.insert("input_tokens".into(), row.input_tokens.into());
    object.insert("output_tokens".into(), row.output_tokens.into());
    object.insert("cost_usd".into(), serde_json::json!(row.cost_usd));
    object.insert("errors".into(), row.errors.into());
}

/// The report as an aligned text table (`csv = false`) or CSV.
pub fn format_report(report: &Value, csv: bool) -> String {
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let mut columns: Vec<String> = Vec::new();
    if let Some(first) = rows.first().and_then(Value::as_object) {
        columns.extend(first.keys().filter(|k| !COUNTERS.contains(&k.as_str())).cloned());
    }
    columns.extend(COUNTERS.iter().map(|c| c.to_string()));
    let cell = |row: &Value, column: &str| match &row[column] {
        Value::Null => {
            if COUNTERS.contains(&column) {
                "0".into()
            } else {
                "-".into()
            }
        }
        Value::String(s) => s.clone(),
        Value::Number(n) if column == "cost_usd" => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    let mut table: Vec<Vec<String>> = vec![columns.clone()];
    for row in &rows {
        table.push(columns.iter().map(|c| cell(row, c)).collect());
    }
    let totals = &report["totals"];
    let mut total_line: Vec<String> =
        columns.iter().map(|c| if COUNTERS.contains(&c.as_str()) { cell(totals, c) } else { String::new() }).collect();
    if let Some(first) = total_line.first_mut() {
        if first.is_empty() {
            *first = "TOTAL".into();
        }
    }
    table.push(total_line);
    if csv {
        return table
            .iter()
            .map(|r| r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(i, (c, w))| if i >= columns.len() - COUNTERS.len() { format!("{c:>w$}") } else { format!("{c:<w$}") },
            )
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

const COUNTERS: [&str; 5] = ["requests", "input_tokens", "output_tokens", "cost_usd", "errors"];

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger::test_key as key;

    #[test]
    fn report_groups_and_totals() {
        let row = |r, i, c, e| LedgerRow { requests: r, input_tokens: i, output_tokens: i, cost_usd: c, errors: e };
        let cells = vec![
            (key(20_000, "search", "gpt-4o"), row(2, 10, 0.5, 0)),
            (key(20_001, "search", "gpt-4o"), row(1, 5, 0.25, 1)),
            (key(20_001, "", "gpt-4o-mini"), row(4, 1, 0.0, 0)),
        ];
        let r = report(&cells, &[GroupBy::Team]);
        assert_eq!(r["rows"][0]["team"], Value::Null);
        assert_eq!(r["rows"][1]["team"], "search");
        assert_eq!(r["rows"][1]["requests"], 3);
        assert_eq!(r["rows"][1]["errors"], 1);
        assert_eq!(r["totals"]["requests"], 7);
        assert_eq!(r["totals"]["cost_usd"], 0.75);
        let by_day = report(&cells, &GroupBy::parse_list("day,model").unwrap());
        assert_eq!(by_day["rows"][0]["day"], "2024-10-04");
        assert!(GroupBy::parse_list("team,colour").is_err());
        let text = format_report(&r, false);
        assert!(text.lines().next().unwrap().starts_with("team"), "{text}");
        assert!(text.contains("TOTAL"), "{text}");
        let csv = format_report(&r, true);
        assert!(csv.starts_with("team,requests,input_tokens,output_tokens,cost_usd,errors\n-,4,"), "{csv}");
    }
}
