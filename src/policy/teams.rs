//! Team identity: who a call is accounted to.
//!
//! A caller may present a team key where it would put a provider key (`Authorization: Bearer`,
//! `x-api-key`, Azure's `api-key`, Gemini's `x-goog-api-key` or its `?key=` query parameter). Presented keys are hashed with SHA-256 and compared with
//! every configured key's hash in constant time (no early exit), so timing reveals nothing
//! about which key is close. Only a short fingerprint of the hash is ever stored or logged.
//! A call authenticated by a team key then carries the provider's own configured key upstream,
//! in the provider's header (a `?key=` team key is taken out of the query); the team key never
//! leaves tracegate. A Bedrock route signs such a call with SigV4 instead (`proxy::sigv4`), or
//! sends its configured Bedrock API key as a bearer token.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{Provider, Team};
use crate::formats::percent;
use crate::formats::providers::Api;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const AZURE_API_KEY: HeaderName = HeaderName::from_static("api-key");
const GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Where a team key was presented.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyCarrier {
    /// A request header (`authorization`, `x-api-key`, `api-key`, `x-goog-api-key`).
    Header(HeaderName),
    /// Gemini's `key` query parameter.
    Query,
}

/// The configured team keys, as hashes.
pub struct TeamDirectory {
    /// (SHA-256 of the key, index of its team).
    keys: Vec<([u8; 32], usize)>,
    names: Vec<String>,
}

/// A team key that matched.
#[derive(Clone, Debug, PartialEq)]
pub struct TeamKeyMatch {
    pub team_index: usize,
    pub team: String,
    /// `sha256:` and the first 12 hex digits of the key's hash: enough to tell keys apart.
    pub fingerprint: String,
    /// Where the key came (removed before the call goes upstream).
    pub carrier: KeyCarrier,
}

impl TeamDirectory {
    pub fn new(teams: &[Team]) -> Self {
        let keys = teams
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.keys.iter().map(move |k| (Sha256::digest(k.as_bytes()).into(), i)))
            .collect();
        TeamDirectory { keys, names: teams.iter().map(|t| t.name.clone()).collect() }
    }

    /// The team whose key the request presents, in its headers or (Gemini's `key`) its query.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Option<TeamKeyMatch> {
        if self.keys.is_empty() {
            return None;
        }
        let in_query = query.and_then(query_key);
        let presented = presented_keys(headers).map(|(h, k)| (KeyCarrier::Header(h), std::borrow::Cow::Borrowed(k)));
        for (carrier, key) in presented.chain(in_query.map(|k| (KeyCarrier::Query, std::borrow::Cow::Owned(k)))) {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            // Walk every key whatever matches, selecting the match without branching on it.
            let mut found = subtle::Choice::from(0);
            let mut index = 0u64;
            for (candidate, team) in &self.keys {
                let same = digest.ct_eq(candidate);
                index.conditional_assign(&(*team as u64), same);
                found |= same;
            }
            if bool::from(found) {
                let team_index = index as usize;
                return Some(TeamKeyMatch {
                    team_index,
                    team: self.names[team_index].clone(),
                    fingerprint: fingerprint(&digest),
                    carrier,
                });
            }
        }
        None
    }
}

/// The `key` parameter of a query string, percent-decoded.
fn query_key(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix("key=")).map(|k| percent::decode(k, true))
}

/// A query string without its `key` parameters (`None` when nothing is left).
pub fn query_without_key(query: &str) -> Option<String> {
    let kept: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && *p != "key" && !p.starts_with("key=")).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Keys the request presents: `Authorization: Bearer <key>`, `x-api-key`, `api-key`,
/// `x-goog-api-key`.
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = (HeaderName, &str)> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|k| (AUTHORIZATION, k.trim()));
    let api_key = headers.get(X_API_KEY).and_then(|v| v.to_str().ok()).map(|k| (X_API_KEY, k.trim()));
    let azure = headers.get(AZURE_API_KEY).and_then(|v| v.to_str().ok()).map(|k| (AZURE_API_KEY, k.trim()));
    let google = headers.get(GOOG_API_KEY).and_then(|v| v.to_str().ok()).map(|k| (GOOG_API_KEY, k.trim()));
    bearer.into_iter().chain(api_key).chain(azure).chain(google).filter(|(_, k)| !k.is_empty())
}

fn fingerprint(digest: &[u8; 32]) -> String {
    let mut out = String::from("sha256:");
    for b in &digest[..6] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Replaces the team key with the provider's key, in the header the provider expects
/// (OpenAI: `Authorization: Bearer`, Anthropic: `x-api-key`, Gemini: `x-goog-api-key`, Azure:
/// `api-key`, Bedrock: a Bedrock API key as `Authorization: Bearer`). A Bedrock route with AWS
/// credentials only loses the team key here: it is signed later, once the body is known.
/// Returns false when the provider has neither (the call must not go upstream).
pub fn swap_in_provider_key(headers: &mut HeaderMap, matched: &TeamKeyMatch, provider: &Provider) -> bool {
    if let KeyCarrier::Header(name) = &matched.carrier {
        headers.remove(name);
    }
    if provider.api == Api::Bedrock && provider.aws.is_some() {
        return true;
    }
    let Some(key) = &provider.api_key else { return false };
    let (name, value) = match provider.api {
        Api::Openai | Api::Bedrock => (AUTHORIZATION, format!("Bearer {key}")),
        Api::Anthropic => (X_API_KEY, key.clone()),
        Api::Gemini => (GOOG_API_KEY, key.clone()),
        Api::Azure => (AZURE_API_KEY, key.clone()),
    };
    match HeaderValue::from_str(&value) {
        Ok(mut value) => {
            value.set_sensitive(true);
            headers.insert(name, value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(name: &str, keys: &[&str]) -> Team {
        Team {
            name: name.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            daily_budget_usd: None,
            monthly_budget_usd: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }

    #[test]
    fn keys_in_any_credential_header_find_their_team() {
        let dir = TeamDirectory::new(&[team("search", &["tk-search-1", "tk-search-2"]), team("ads", &["tk-ads"])]);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tk-search-2"));
        let m = dir.authenticate(&h, None).unwrap();
        assert_eq!((m.team.as_str(), &m.carrier), ("search", &KeyCarrier::Header(AUTHORIZATION)));
        assert!(m.fingerprint.starts_with("sha256:") && m.fingerprint.len() == 19);
        assert!(!m.fingerprint.contains("tk-"));

        let mut h = HeaderMap::new();
        h.insert(X_API_KEY, HeaderValue::from_static("tk-ads"));
        assert_eq!(dir.authenticate(&h, None).unwrap().team, "ads");

        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-a-provider-key"));
        assert!(dir.authenticate(&h, None).is_none());
        assert!(dir.authenticate(&HeaderMap::new(), None).is_none());

        let mut h = HeaderMap::new();
        h.insert(GOOG_API_KEY, HeaderValue::from_static("tk-ads"));
        assert_eq!(dir.authenticate(&h, None).unwrap().team, "ads");
        let m = dir.authenticate(&HeaderMap::new(), Some("alt=sse&key=tk-search-1")).unwrap();
        assert_eq!((m.team.as_str(), m.carrier), ("search", KeyCarrier::Query));
        assert!(dir.authenticate(&HeaderMap::new(), Some("key=AIza-a-google-key")).is_none());
    }

    #[test]
    fn a_query_key_is_taken_out_and_nothing_else() {
        assert_eq!(query_without_key("alt=sse&key=tk-1").as_deref(), Some("alt=sse"));
        assert_eq!(query_without_key("key=tk-1&alt=sse&keyword=x").as_deref(), Some("alt=sse&keyword=x"));
        assert_eq!(query_without_key("key=tk-1"), None);
        assert_eq!(query_key("alt=sse&key=tk%2D1").as_deref(), Some("tk-1"));
    }
}
