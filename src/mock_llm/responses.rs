//! `POST /v1/responses` (OpenAI Responses API): a response object, or its typed event stream.
//! A `text.format` of type `json_schema` or `json_object` makes the output text JSON (a value
//! that fits the schema), so the SDKs' `responses.parse` works offline; the response echoes
//! the format in its `text`.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{error_response, json_response, sse_event, sse_response, MockBody};
use crate::mock_llm::reply::{
    chat_prompt_tokens, is_stream, model_of, next_id, structured_text, text_words, unix_now, Api, Opts, Reply,
};

/// `POST /v1/responses` (the OpenAI Responses API).
pub(super) fn responses(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let instructions = req.get("instructions").cloned().unwrap_or(Value::Null);
    let input_tokens = chat_prompt_tokens(req.get("input"), text_words(&instructions));
    let max_output = req.get("max_output_tokens").and_then(Value::as_u64);
    let format = req.pointer("/text/format");
    let json_text = match structured_text(format, "text.format") {
        Ok(text) => text,
        Err(message) => return error_response(Api::OpenAi, StatusCode::BAD_REQUEST, &message),
    };
    let text_config =
        json!({"format": format.filter(|f| !f.is_null()).cloned().unwrap_or_else(|| json!({"type": "text"}))});
    let reply = Reply::for_format(json_text, max_output, opts);
    let truncated = reply.truncated;
    let output_tokens = reply.words as u64;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let n = next_id();
    let resp_id = format!("resp_mock_{n}");
    let item_id = format!("msg_mock_{n}");
    let final_status = if reply.truncated { "incomplete" } else { "completed" };
    let text = reply.text();
    let message_item = |status: &str, content: Value| {
        json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let text_part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let final_item = message_item(final_status, json!([text_part(&text)]));
    // The whole response object; fields beyond the brief's list keep SDK models complete.
    let response_object = |status: &str, output: Value, usage: Value| {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": unix_now(),
            "status": status,
            "error": null,
            "incomplete_details": if truncated && status == "incomplete" {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "instructions": instructions,
            "max_output_tokens": max_output,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": 1.0,
            "text": text_config,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    };

    if !is_stream(req) {
        let body = response_object(final_status, json!([final_item]), usage);
        return json_response(StatusCode::OK, &body);
    }

    // Precompute the bulky events; the per-word deltas are built lazily.
    let created = response_object("in_progress", json!([]), Value::Null);
    let completed = response_object(final_status, json!([final_item.clone()]), usage);
    let item_added = message_item("in_progress", json!([]));
    let empty_part = text_part("");
    let full_part = text_part(&text);
    let last_type = if truncated { "response.incomplete" } else { "response.completed" };
    let words = reply.words;
    // Events: created, in_progress, output_item.added, content_part.added, one delta per
    // word, output_text.done, content_part.done, output_item.done, completed.
    let total = words + 8;
    sse_response(total, opts.delay, move |k| {
        let seq = k;
        let (kind, event) = match k {
            0 => ("response.created", json!({"response": created})),
            1 => ("response.in_progress", json!({"response": created})),
            2 => ("response.output_item.added", json!({"output_index": 0, "item": item_added})),
            3 => (
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": empty_part}),
            ),
            k if k < 4 + words => (
                "response.output_text.delta",
                json!({
                    "item_id": item_id, "output_index": 0, "content_index": 0,
                    "delta": reply.piece(k - 4), "logprobs": [],
                }),
            ),
            k if k == 4 + words => (
                "response.output_text.done",
                json!({
                    "item_id": item_id, "output_index": 0, "content_index": 0,
                    "text": text, "logprobs": [],
                }),
            ),
            k if k == 5 + words => (
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": full_part}),
            ),
            k if k == 6 + words => ("response.output_item.done", json!({"output_index": 0, "item": final_item})),
            _ => (last_type, json!({"response": completed})),
        };
        let mut event = event;
        event["type"] = Value::from(kind);
        event["sequence_number"] = Value::from(seq);
        sse_event(kind, &event)
    })
}
