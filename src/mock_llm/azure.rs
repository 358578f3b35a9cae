//! Azure OpenAI: its paths onto the OpenAI endpoints, and the content-filter results its
//! answers carry.
//!
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (also
//! `/completions` and `/embeddings`) is answered like the OpenAI endpoint, the `model` being
//! the body's or else the model deployed ([`deployed_model`]; Azure never names the
//! deployment); without an `api-version` query it is a 404, as
//! Azure answers it. The v1 API, `/openai/v1/{path}`, is the OpenAI API under another prefix
//! (no `api-version` needed).

use serde_json::{json, Value};

/// The model a deployment of the mock runs, by the endpoint it is called on, as Azure names it
/// in its answers: chat, completions (an instruct model), embeddings.
pub(super) fn deployed_model(openai_path: &str) -> &'static str {
    match openai_path {
        "/v1/completions" => "gpt-35-turbo-instruct",
        "/v1/embeddings" => "text-embedding-3-small",
        _ => "gpt-4o-mini-2024-07-18",
    }
}

/// Where an Azure path goes: the OpenAI path it stands for, and the deployment (which names
/// the model) when it is a deployment path.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AzurePath {
    pub(super) openai_path: String,
    pub(super) deployment: Option<String>,
}

/// The OpenAI path an Azure path stands for, or `None` when it is not an Azure path.
pub(super) fn azure_path(path: &str) -> Option<AzurePath> {
    if let Some(rest) = path.strip_prefix("/openai/v1/") {
        return Some(AzurePath { openai_path: format!("/v1/{rest}"), deployment: None });
    }
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, endpoint) = rest.split_once('/')?;
    if deployment.is_empty() || !matches!(endpoint, "chat/completions" | "completions" | "embeddings") {
        return None;
    }
    let deployment = crate::formats::percent::decode(deployment, false);
    Some(AzurePath { openai_path: format!("/v1/{endpoint}"), deployment: Some(deployment) })
}

/// Whether a query string has a non-empty `api-version` parameter.
pub(super) fn has_api_version(query: Option<&str>) -> bool {
    query.unwrap_or("").split('&').any(|pair| pair.strip_prefix("api-version=").is_some_and(|v| !v.is_empty()))
}

fn safe() -> Value {
    json!({"filtered": false, "severity": "safe"})
}

/// A choice's (a completion's) `content_filter_results`: nothing filtered.
pub(super) fn content_filter_results() -> Value {
    json!({
        "hate": safe(),
        "protected_material_code": {"filtered": false, "detected": false},
        "protected_material_text": {"filtered": false, "detected": false},
        "self_harm": safe(),
        "sexual": safe(),
        "violence": safe(),
    })
}

/// A completion's `prompt_filter_results`: the prompt's filter results, nothing filtered.
pub(super) fn prompt_filter_results() -> Value {
    json!([{
        "prompt_index": 0,
        "content_filter_results": {
            "hate": safe(),
            "jailbreak": {"filtered": false, "detected": false},
            "self_harm": safe(),
            "sexual": safe(),
            "violence": safe(),
        },
    }])
}

/// The chunk an Azure chat stream opens with: no choices, only the prompt's filter results.
pub(super) fn prompt_filter_chunk() -> Value {
    json!({
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": prompt_filter_results(),
    })
}
