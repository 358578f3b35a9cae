//! Errors the proxy itself produces, answered in the shape of the provider's own errors.
//!
//! A client SDK parses a tracegate error exactly like one from the provider: OpenAI routes get
//! `{"error":{"message","type","param","code"}}`, Anthropic routes get
//! `{"type":"error","error":{"type","message"}}`, Gemini routes Google's
//! `{"error":{"code","message","status"}}`, Azure routes OpenAI's, and Bedrock routes AWS's
//! `{"message"}` with the error's type in `x-amzn-errortype` (where boto3 reads it). Each error
//! knows its HTTP status and a short stable label (`code`) usable in metrics and logs.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::formats::headers as tracegate_headers;
use crate::formats::providers::Api;

/// Where AWS services name an error's type (boto3's `ClientError` code).
const AMZN_ERROR_TYPE: http::HeaderName = http::HeaderName::from_static("x-amzn-errortype");

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
            "tracegate: this proxy requires a team key (Authorization: Bearer <team key>, x-api-key, api-key or x-goog-api-key)",
        )
    }

    pub fn client_signed_sigv4(provider: &str) -> Self {
        ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "client_signed_request",
            format!(
                "tracegate: this request is SigV4-signed for tracegate's own host, which AWS would reject; \
                 send a tracegate team key as a bearer token instead (boto3: set AWS_BEARER_TOKEN_BEDROCK to the \
                 team key) and tracegate signs the call to {provider:?} with its configured AWS credentials, \
                 or send a Bedrock API key the same way to have it forwarded unchanged"
            ),
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

    /// The provider's error `type` for this status (Gemini: its `status`, Bedrock: the
    /// exception name).
    fn error_type(&self, api: Api) -> &'static str {
        match (api, self.status.as_u16()) {
            (Api::Openai | Api::Azure, 400 | 404 | 405 | 408 | 413 | 431) => "invalid_request_error",
            (Api::Openai | Api::Azure, 401) => "authentication_error",
            (Api::Openai | Api::Azure, 429) => "rate_limit_error",
            (Api::Openai | Api::Azure, _) => "api_error",
            (Api::Gemini, 400 | 405 | 408 | 413 | 431) => "INVALID_ARGUMENT",
            (Api::Gemini, 401) => "UNAUTHENTICATED",
            (Api::Gemini, 403) => "PERMISSION_DENIED",
            (Api::Gemini, 404) => "NOT_FOUND",
            (Api::Gemini, 429) => "RESOURCE_EXHAUSTED",
            (Api::Gemini, 502 | 503) => "UNAVAILABLE",
            (Api::Gemini, 504) => "DEADLINE_EXCEEDED",
            (Api::Gemini, _) => "INTERNAL",
            (Api::Bedrock, 400 | 405 | 413 | 431) => "ValidationException",
            (Api::Bedrock, 401) => "UnrecognizedClientException",
            (Api::Bedrock, 403) => "AccessDeniedException",
            (Api::Bedrock, 404) => "ResourceNotFoundException",
            (Api::Bedrock, 408 | 504) => "ModelTimeoutException",
            (Api::Bedrock, 429) => "ThrottlingException",
            (Api::Bedrock, 502 | 503) => "ServiceUnavailableException",
            (Api::Bedrock, _) => "InternalServerException",
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
            Api::Openai | Api::Azure => serde_json::json!({
                "error": {"message": self.message, "type": self.error_type(api), "param": null, "code": self.code}
            }),
            Api::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.error_type(api), "message": self.message}
            }),
            Api::Gemini => serde_json::json!({
                "error": {"code": self.status.as_u16(), "message": self.message, "status": self.error_type(api)}
            }),
            Api::Bedrock => serde_json::json!({"message": self.message}),
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
        if api == Api::Bedrock {
            headers.insert(AMZN_ERROR_TYPE, HeaderValue::from_static(self.error_type(api)));
        }
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
    fn gemini_and_bedrock_shapes() {
        let e = ProxyError::limited("tracegate: over budget".into(), 30);
        let body: serde_json::Value = serde_json::from_str(&e.body(Api::Gemini)).unwrap();
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["message"], "tracegate: over budget");
        let response = ProxyError::client_signed_sigv4("bedrock").to_response(Api::Bedrock);
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["x-amzn-errortype"], "UnrecognizedClientException");
        let body: serde_json::Value =
            serde_json::from_str(&ProxyError::client_signed_sigv4("bedrock").body(Api::Bedrock)).unwrap();
        assert!(body["message"].as_str().unwrap().contains("AWS_BEARER_TOKEN_BEDROCK"));
        assert_eq!(ProxyError::no_route("/x", &[]).body(Api::Azure), ProxyError::no_route("/x", &[]).body(Api::Openai));
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
