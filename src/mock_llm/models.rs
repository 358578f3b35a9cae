//! `GET /v1/models` and `GET /v1/models/{id}`, OpenAI- or Anthropic-shaped by the request's
//! `anthropic-version` header.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{json_response, MockBody};

/// Model ids listed by `GET /v1/models`.
const MODEL_IDS: [&str; 6] =
    ["mock-model", "gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "claude-sonnet-4-5"];

/// `GET /v1/models`, in Anthropic's shape when the caller is an Anthropic client.
pub(super) fn list_models(anthropic: bool) -> Response<MockBody> {
    let data: Vec<Value> = MODEL_IDS.iter().map(|id| model_object(id, anthropic)).collect();
    let body = if anthropic {
        json!({
            "data": data,
            "has_more": false,
            "first_id": MODEL_IDS.first(),
            "last_id": MODEL_IDS.last(),
        })
    } else {
        json!({"object": "list", "data": data})
    };
    json_response(StatusCode::OK, &body)
}

/// `GET /v1/models/{id}`: any id exists.
pub(super) fn get_model(id: &str, anthropic: bool) -> Response<MockBody> {
    json_response(StatusCode::OK, &model_object(id, anthropic))
}

pub(super) fn model_object(id: &str, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"})
    } else {
        json!({"id": id, "object": "model", "created": 1_735_689_600u64, "owned_by": "tracegate-mock"})
    }
}
