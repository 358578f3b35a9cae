//! tracegate's own headers (`x-tracegate-*`, SPEC "Headers"): every name in one place, and how
//! the values a caller sends are read into a span's tags.
//!
//! The request path removes every `x-tracegate-*` header before the request goes upstream and
//! hands them to the recorder as they came; [`read_tags`] reads them there, off the request
//! path. Their values (team, user, properties) are stored on the span; no other request
//! header is stored.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};

/// The prefix of every tracegate header; none of them ever goes upstream.
pub const PREFIX: &str = "x-tracegate-";
/// Names the team a call is accounted to (a team key, when presented, wins).
pub const TEAM: &str = "x-tracegate-team";
/// Names the user a call is made for.
pub const USER: &str = "x-tracegate-user";
/// All calls with the same session share one trace (see `trace_context`).
pub const SESSION: &str = "x-tracegate-session";
/// `x-tracegate-property-<name>: <value>` is stored on the span as property `<name>`.
pub const PROPERTY_PREFIX: &str = "x-tracegate-property-";
/// `true`: keep the span, not the bodies.
pub const OMIT_BODIES: &str = "x-tracegate-omit-bodies";

/// Response: the call's trace id.
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-tracegate-trace-id");
/// Response: the call's span id.
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-tracegate-span-id");
/// Response: the code of an error tracegate produced itself (`no_route`, `limited`, ...).
pub const ERROR: HeaderName = HeaderName::from_static("x-tracegate-error");
/// Response: a limited team's budget left, in USD.
pub const BUDGET_REMAINING_USD: HeaderName = HeaderName::from_static("x-tracegate-budget-remaining-usd");
/// Response: the prefix of a limited team's rate-limit headers on an admitted call (the
/// provider's own `x-ratelimit-*` pass through untouched).
pub const RATELIMIT_PREFIX: &str = "x-tracegate-ratelimit-";

/// What a caller's tracegate headers say about its call.
#[derive(Debug, Default, PartialEq)]
pub struct Tags {
    pub team: Option<String>,
    pub user: Option<String>,
    pub omit_bodies: bool,
    pub properties: BTreeMap<String, String>,
}

/// Reads the `x-tracegate-*` headers the request path removed. Values that are not visible
/// ASCII are ignored; empty team, user and property names are ignored.
pub fn read_tags(headers: &[(HeaderName, HeaderValue)]) -> Tags {
    let mut tags = Tags::default();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        match name.as_str() {
            TEAM if !value.is_empty() => tags.team = Some(value.to_string()),
            USER if !value.is_empty() => tags.user = Some(value.to_string()),
            OMIT_BODIES => tags.omit_bodies = value.trim().eq_ignore_ascii_case("true"),
            other => {
                if let Some(property) = other.strip_prefix(PROPERTY_PREFIX).filter(|p| !p.is_empty()) {
                    tags.properties.insert(property.to_string(), value.to_string());
                }
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_the_removed_headers() {
        let header = |n: &'static str, v: &'static str| (HeaderName::from_static(n), HeaderValue::from_static(v));
        let tags = read_tags(&[
            header("x-tracegate-team", "search"),
            header("x-tracegate-user", ""),
            header("x-tracegate-omit-bodies", " TRUE "),
            header("x-tracegate-property-env", "prod"),
            header("x-tracegate-property-", "nameless"),
        ]);
        assert_eq!(tags.team.as_deref(), Some("search"));
        assert_eq!(tags.user, None, "an empty user names nobody");
        assert!(tags.omit_bodies);
        assert_eq!(tags.properties.into_iter().collect::<Vec<_>>(), vec![("env".to_string(), "prod".to_string())]);
    }
}
