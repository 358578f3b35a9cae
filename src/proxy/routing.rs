//! Routing: which configured provider a request path belongs to.
//!
//! A path matches a provider when it equals the provider's prefix or continues it with `/`
//! (so `/openai-v2` never matches `/openai`); the longest matching prefix wins. Paths that
//! match no prefix go to `server.default_provider` when one is set, else nowhere (404). The
//! router never looks at the request's Host or at an absolute-form target: the upstream is
//! always one the config names.

use std::sync::Arc;

use crate::config::{Config, Provider};

/// Prefix table, longest prefix first.
pub struct Router {
    routes: Vec<Arc<Provider>>,
    default: Option<Arc<Provider>>,
}

/// A routed request: the provider and the path to send upstream (below the upstream's base path).
pub struct Route<'a> {
    pub provider: &'a Arc<Provider>,
    pub upstream_path: &'a str,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut routes = config.providers.clone();
        routes.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        let default = config.server.default_provider.map(|i| config.providers[i].clone());
        Router { routes, default }
    }

    /// The configured prefixes, as the config lists them (for a 404 that says where to go).
    pub fn prefixes(&self) -> Vec<&str> {
        let mut prefixes: Vec<&str> = self.routes.iter().map(|p| p.prefix.as_str()).collect();
        prefixes.sort_unstable();
        prefixes
    }

    pub fn route<'a>(&'a self, path: &'a str) -> Option<Route<'a>> {
        for provider in &self.routes {
            if let Some(rest) = path.strip_prefix(provider.prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Some(Route { provider, upstream_path: rest });
                }
            }
        }
        self.default.as_ref().map(|provider| Route { provider, upstream_path: path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(extra: &str) -> Router {
        let text = format!(
            "{extra}\n[[providers]]\nname='o'\nprefix='/openai'\nupstream='http://a'\napi='openai'\n[[providers]]\nname='o2'\nprefix='/openai/v2'\nupstream='http://b'\napi='openai'"
        );
        Router::new(&Config::from_toml(&text, &|_| None).unwrap())
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = router("");
        let hit = r.route("/openai/v1/chat/completions").unwrap();
        assert_eq!((hit.provider.name.as_str(), hit.upstream_path), ("o", "/v1/chat/completions"));
        let hit = r.route("/openai/v2/x").unwrap();
        assert_eq!((hit.provider.name.as_str(), hit.upstream_path), ("o2", "/x"));
        assert_eq!(r.route("/openai").unwrap().upstream_path, "");
        assert!(r.route("/openaiX/v1").is_none());
        assert!(r.route("/v1/chat/completions").is_none());
    }

    #[test]
    fn default_provider_takes_unprefixed_paths() {
        let r = router("[server]\ndefault_provider='o'");
        let hit = r.route("/v1/chat/completions").unwrap();
        assert_eq!((hit.provider.name.as_str(), hit.upstream_path), ("o", "/v1/chat/completions"));
    }
}
