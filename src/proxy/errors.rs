//! Errors the proxy itself produces, answered in the shape of the provider's own errors.
//!
//! A client SDK parses a tracegate error exactly like one from the provider: OpenAI routes get
//! `{"error":{"message","type","param","code"}}`, Anthropic routes get
//! `{"type":"error","error":{"type","message"}}`. Each error knows its HTTP status and a short
//! stable label (`code`) usable in metrics and logs.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::formats::headers as tracegate_headers;
use crate::formats::providers::Api;

/// An error produced by tracegate (not relayed from the upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyError {
    pub status: StatusCode,
    /// Stable short label, e.g. `no_route`, `upstream_unreachable`.
    pub code: &'static str,
    pub message: String,
    /// Seconds the client should wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ProxyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ProxyError { status, code, message: message.into(), retry_after: None }
    }

    pub fn no_route(path: &str, prefixes: &[&str]) -> Self {
        let shown: String = path.chars().take(200).collect();
        let known = match prefixes {
            [] => "no provider is configured at all".to_string(),
            _ => format!("the configured prefixes are {}", prefixes.join(", ")),
        };
        ProxyError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!(
                "tracegate: no provider is configured for path {shown:?}; {known} (e.g. {}/v1/...)",
                prefixes.first().unwrap_or(&"/openai")
            ),
        )
    }

    pub fn absolute_form() -> Self {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "absolute_form_rejected",
            "tracegate: absolute-form request targets are not accepted; tracegate only forwards to its configured upstreams",
        )
    }

    pub fn connect_method() -> Self {
        ProxyError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_rejected",
            "tracegate: CONNECT is not supported; tracegate only forwards to its configured upstreams",
        )
    }

    pub fn team_key_required() -> Self {
        ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "team_key_required",
            "tracegate: this proxy requires a team key (Authorization: Bearer <team key> or x-api-key)",
        )
    }

    pub fn provider_key_missing(provider: &str) -> Self {
        ProxyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "provider_key_missing",
            format!("tracegate: provider {provider:?} has no api_key configured for team-key callers"),
        )
    }

    pub fn limited(message: String, retry_after_secs: u64) -> Self {
        ProxyError {
            retry_after: Some(retry_after_secs),
            ..ProxyError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn body_too_large(limit: u64) -> Self {
        ProxyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("tracegate: request body larger than {limit} bytes (server.max_request_bytes)"),
        )
    }

    pub fn headers_too_large(limit: usize) -> Self {
        ProxyError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_too_large",
            format!("tracegate: request headers larger than {limit} bytes (server.max_header_bytes)"),
        )
    }

    pub fn unsafe_path() -> Self {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "unsafe_path",
            "tracegate: paths with dot segments or encoded slashes are not forwarded",
        )
    }

    pub fn request_body_incomplete() -> Self {
        ProxyError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_body_incomplete",
            "tracegate: the request body did not arrive",
        )
    }

    pub fn upstream_unreachable(provider: &str, detail: &str) -> Self {
        ProxyError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("tracegate: upstream {provider:?} could not be reached: {detail}"),
        )
    }

    pub fn upstream_timeout(provider: &str, what: &str) -> Self {
        ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("tracegate: upstream {provider:?} timed out ({what})"),
        )
    }

    /// The provider's error `type` for this status.
    fn error_type(&self, api: Api) -> &'static str {
        match (api, self.status.as_u16()) {
            (Api::Openai, 400 | 404 | 405 | 408 | 413 | 431) => "invalid_request_error",
            (Api::Openai, 401) => "authentication_error",
            (Api::Openai, 429) => "rate_limit_error",
            (Api::Openai, _) => "api_error",
            (Api::Anthropic, 413) => "request_too_large",
            (Api::Anthropic, 400 | 405 | 408 | 431) => "invalid_request_error",
            (Api::Anthropic, 401) => "authentication_error",
            (Api::Anthropic, 404) => "not_found_error",
            (Api::Anthropic, 429) => "rate_limit_error",
            (Api::Anthropic, 504) => "timeout_error",
            (Api::Anthropic, _) => "api_error",
        }
    }

    /// The JSON body in the provider's error shape.
    pub fn body(&self, api: Api) -> String {
        let value = match api {
            Api::Openai => serde_json::json!({
                "error": {"message": self.message, "type": self.error_type(api), "param": null, "code": self.code}
            }),
            Api::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.error_type(api), "message": self.message}
            }),
        };
        value.to_string()
    }

    /// The full HTTP response.
    pub fn to_response(&self, api: Api) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body(api))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(tracegate_headers::ERROR, HeaderValue::from_static(self.code));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let body: serde_json::Value =
            serde_json::from_str(&ProxyError::no_route("/x", &["/anthropic", "/openai"]).body(Api::Openai)).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "no_route");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"/x\"") && message.contains("the configured prefixes are /anthropic, /openai"),
            "{message}"
        );
    }

    #[test]
    fn anthropic_shape() {
        let e = ProxyError::upstream_timeout("anthropic", "response headers");
        let body: serde_json::Value = serde_json::from_str(&e.body(Api::Anthropic)).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "timeout_error");
        assert_eq!(e.to_response(Api::Anthropic).status(), 504);
    }
}
