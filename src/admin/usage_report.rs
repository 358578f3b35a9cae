//! Usage reports: the ledger's cells grouped by day, team, user, provider or model, with
//! totals: the JSON of `/api/usage` (`cli::print` shows it as a table or CSV).

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
    }
}
