//! SigV4 for Bedrock routes: a call made with a tracegate team key is signed here with the
//! provider's configured AWS credentials (AWS's own `aws-sigv4` signer), and a request that
//! arrives already SigV4-signed is recognised so it can be refused with a useful message — it
//! was signed for tracegate's host, which AWS would reject.
//!
//! What is signed: the method, the upstream URI exactly as it is sent (percent-encoded model
//! ids are double-encoded in the canonical request, as AWS and botocore expect for every
//! service but S3), `host` (the upstream's authority, which both upstream clients send), the
//! `content-type` and the whole body's SHA-256. The signer adds `x-amz-date` (and
//! `x-amz-security-token` for temporary credentials) and `authorization`. Other headers, such
//! as `traceparent`, are sent unsigned, as AWS allows.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::config::AwsSigning;

/// The signing name of the Bedrock runtime API.
const SERVICE: &str = "bedrock";

/// Whether the request carries a SigV4 signature of its own (an `AWS4-HMAC-SHA256`
/// authorization, or a presigned URL's `X-Amz-Signature`).
pub fn is_client_signed(headers: &HeaderMap, query: Option<&str>) -> bool {
    let signed_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("AWS4-HMAC-SHA256"));
    let presigned = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Signature=")));
    signed_header || presigned
}

/// Signs the request in `parts` (its URI already the upstream's) whose whole body is `body`,
/// replacing any AWS signing headers it carried.
pub fn sign_request(parts: &mut Parts, body: &[u8], aws: &AwsSigning) -> Result<(), String> {
    for name in ["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"] {
        parts.headers.remove(name);
    }
    let host = parts.uri.authority().map(|a| a.as_str().to_owned()).ok_or("the upstream URI has no host")?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut signed: Vec<(&str, &str)> = vec![("host", &host)];
    if let Some(ct) = &content_type {
        signed.push(("content-type", ct));
    }
    let identity: Identity = Credentials::new(
        &aws.access_key_id,
        &aws.secret_access_key,
        aws.session_token.clone(),
        None,
        "tracegate-config",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = parts.uri.to_string();
    let request = SignableRequest::new(parts.method.as_str(), uri, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| e.to_string())?.into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let mut value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        if name == header::AUTHORIZATION || name.as_str() == "x-amz-security-token" {
            value.set_sensitive(true);
        }
        parts.headers.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> AwsSigning {
        AwsSigning {
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn a_signed_request_names_its_scope_and_signed_headers() {
        let (mut parts, ()) = http::Request::post(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        )
        .header("content-type", "application/json")
        .header("authorization", "Bearer tk-team")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(())
        .unwrap()
        .into_parts();
        sign_request(&mut parts, br#"{"messages":[]}"#, &aws()).unwrap();
        let auth = parts.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{auth}");
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date"), "{auth}");
        assert!(!auth.contains("tk-team"));
        assert!(parts.headers.contains_key("x-amz-date"));
        assert!(is_client_signed(&parts.headers, None), "what we send is what a client-signed request looks like");
    }

    #[test]
    fn bearer_tokens_are_not_signatures() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer ABSKQmVkcm9ja0FQSUtleS1"));
        assert!(!is_client_signed(&headers, None));
        assert!(is_client_signed(&HeaderMap::new(), Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab")));
    }
}
