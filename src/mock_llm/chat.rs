//! `POST /v1/chat/completions` (OpenAI): a chat completion, or a stream of chunks with the
//! usage chunk when `stream_options.include_usage` asks for it.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{json_response, openai_chunk, sse_done, sse_response, MockBody};
use crate::mock_llm::reply::{
    chat_prompt_tokens, include_usage, is_stream, max_tokens, model_of, next_id, openai_usage, piece, unix_now, Opts,
    Reply,
};

/// `POST /v1/chat/completions`.
pub(super) fn chat_completions(req: &Value, opts: &Opts) -> Response<MockBody> {
    let model = model_of(req);
    let prompt_tokens = chat_prompt_tokens(req.get("messages"), 0);
    let reply = Reply::plan(max_tokens(req, &["max_completion_tokens", "max_tokens"]), opts);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let usage = openai_usage(prompt_tokens, reply.words as u64);
    let id = format!("chatcmpl-mock-{}", next_id());
    let created = unix_now();

    if !is_stream(req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": usage,
                "system_fingerprint": "fp_mock",
            }),
        );
    }

    // Events: role chunk, one chunk per word, finish chunk, [usage chunk], [DONE].
    let with_usage = include_usage(req);
    let n = reply.words;
    let total = n + 3 + usize::from(with_usage);
    let chunk = openai_chunk(id, "chat.completion.chunk", created, model, with_usage);
    let choice = |delta: Value, finish: Option<&str>| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    sse_response(total, opts.delay, move |k| match k {
        0 => chunk(choice(json!({"role": "assistant", "content": "", "refusal": null}), None), None),
        k if k <= n => chunk(choice(json!({"content": piece(k - 1)}), None), None),
        k if k == n + 1 => chunk(choice(json!({}), Some(finish_reason)), None),
        k if k == n + 2 && with_usage => chunk(json!([]), Some(&usage)),
        _ => sse_done(),
    })
}
