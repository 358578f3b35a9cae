//! `POST /v1/messages` (Anthropic): a message, or its event stream (`message_start` …
//! `message_stop`).

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{json_response, sse_event, sse_response, MockBody};
use crate::mock_llm::reply::{
    chat_prompt_tokens, is_stream, max_tokens, model_of, next_id, piece, text_words, Opts, Reply,
};

/// `POST /v1/messages` (Anthropic Messages API).
pub(super) fn messages(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let system_words = req.get("system").map_or(0, text_words);
    let input_tokens = chat_prompt_tokens(req.get("messages"), system_words);
    let reply = Reply::plan(max_tokens(req, &["max_tokens"]), opts);
    let stop_reason = if reply.truncated { "max_tokens" } else { "end_turn" };
    let id = format!("msg_mock_{}", next_id());
    let usage = |output_tokens: u64| {
        json!({
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        })
    };

    if !is_stream(req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply.text()}],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": usage(reply.words as u64),
            }),
        );
    }

    let start = json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(1),
        },
    });
    let words = reply.words;
    // Events: message_start, content_block_start, ping, one delta per word,
    // content_block_stop, message_delta, message_stop.
    let total = words + 6;
    sse_response(total, opts.delay, move |k| match k {
        0 => sse_event("message_start", &start),
        1 => sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        2 => sse_event("ping", &json!({"type": "ping"})),
        k if k < 3 + words => sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece(k - 3)}}),
        ),
        k if k == 3 + words => sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
        k if k == 4 + words => sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": words},
            }),
        ),
        _ => sse_event("message_stop", &json!({"type": "message_stop"})),
    })
}
