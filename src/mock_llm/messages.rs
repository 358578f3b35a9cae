//! `POST /v1/messages` (Anthropic): a message, or its event stream (`message_start` …
//! `message_stop`). Bedrock's `InvokeModel` on an `anthropic.*` model answers the same message
//! and events ([`AnthropicReply`]).

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{json_response, sse_event, sse_response, MockBody};
use crate::mock_llm::reply::{
    chat_prompt_tokens, is_stream, max_tokens, model_of, next_id, piece, text_words, Opts, Reply,
};

/// One Anthropic answer: the message, or the events that stream it.
pub(super) struct AnthropicReply {
    id: String,
    model: String,
    pub(super) input_tokens: u64,
    pub(super) reply: Reply,
    stop_reason: &'static str,
    /// Whether the stream has the `ping` event after `content_block_start` (the Messages API
    /// sends one, Bedrock does not).
    ping: bool,
}

impl AnthropicReply {
    /// The answer to a Messages request (`messages`, `system`, `max_tokens`) for `model`.
    pub(super) fn plan(req: &Value, model: String, opts: &Opts, ping: bool) -> AnthropicReply {
        let system_words = req.get("system").map_or(0, text_words);
        let input_tokens = chat_prompt_tokens(req.get("messages"), system_words);
        let reply = Reply::plan(max_tokens(req, &["max_tokens"]), opts);
        let stop_reason = if reply.truncated { "max_tokens" } else { "end_turn" };
        AnthropicReply { id: format!("msg_mock_{}", next_id()), model, input_tokens, reply, stop_reason, ping }
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        })
    }

    /// The whole message.
    pub(super) fn message(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.reply.text()}],
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage(self.reply.words as u64),
        })
    }

    /// How many events the stream has: message_start, content_block_start, [ping], one delta
    /// per word, content_block_stop, message_delta, message_stop.
    pub(super) fn event_count(&self) -> usize {
        self.reply.words + 5 + usize::from(self.ping)
    }

    /// The `k`-th event of the stream: its name and data (which carries the name in `type`).
    pub(super) fn event(&self, k: usize) -> (&'static str, Value) {
        let words = self.reply.words;
        let first_delta = 2 + usize::from(self.ping);
        match k {
            0 => (
                "message_start",
                json!({
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": self.usage(1),
                    },
                }),
            ),
            1 => (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            2 if self.ping => ("ping", json!({"type": "ping"})),
            k if k < first_delta + words => (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece(k - first_delta)}}),
            ),
            k if k == first_delta + words => ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            k if k == first_delta + words + 1 => (
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": words},
                }),
            ),
            _ => ("message_stop", json!({"type": "message_stop"})),
        }
    }
}

/// `POST /v1/messages` (Anthropic Messages API).
pub(super) fn messages(req: &Value, opts: &Opts) -> Response<MockBody> {
    let answer = AnthropicReply::plan(req, model_of(req), opts, true);
    if !is_stream(req) {
        return json_response(StatusCode::OK, &answer.message());
    }
    sse_response(answer.event_count(), opts.delay, move |k| {
        let (name, data) = answer.event(k);
        sse_event(name, &data)
    })
}
