//! `POST /v1/chat/completions` (OpenAI): a chat completion, or a stream of chunks with the
//! usage chunk when `stream_options.include_usage` asks for it. A `response_format` of type
//! `json_schema` or `json_object` makes the content JSON (a value that fits the schema), so
//! the SDKs' `chat.completions.parse` works offline. Azure OpenAI's answers (`azure`) also
//! carry its content-filter results: `prompt_filter_results` on the completion, or a stream
//! opening with a chunk of nothing else, and `content_filter_results` on each choice.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::azure::{content_filter_results, prompt_filter_chunk, prompt_filter_results};
use crate::mock_llm::body::{error_response, json_response, openai_chunk, sse_data, sse_done, sse_response, MockBody};
use crate::mock_llm::reply::{
    chat_prompt_tokens, include_usage, is_stream, max_tokens, model_of, next_id, openai_usage, structured_text,
    unix_now, Api, Opts, Reply,
};

/// `POST /v1/chat/completions`, or Azure OpenAI's (`azure`).
pub(super) fn chat_completions(req: &Value, opts: &Opts, azure: bool) -> Response<MockBody> {
    let model = model_of(req);
    let prompt_tokens = chat_prompt_tokens(req.get("messages"), 0);
    let json_text = match structured_text(req.get("response_format"), "response_format") {
        Ok(text) => text,
        Err(message) => return error_response(Api::OpenAi, StatusCode::BAD_REQUEST, &message),
    };
    let reply = Reply::for_format(json_text, max_tokens(req, &["max_completion_tokens", "max_tokens"]), opts);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let usage = openai_usage(prompt_tokens, reply.words as u64);
    let id = format!("chatcmpl-mock-{}", next_id());
    let created = unix_now();

    if !is_stream(req) {
        let mut completion = json!({
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
        });
        if azure {
            completion["choices"][0]["content_filter_results"] = content_filter_results();
            completion["prompt_filter_results"] = prompt_filter_results();
        }
        return json_response(StatusCode::OK, &completion);
    }

    // Events: [Azure's prompt-filter chunk], role chunk, one chunk per word, finish chunk,
    // [usage chunk], [DONE].
    let with_usage = include_usage(req);
    let n = reply.words;
    let skip = usize::from(azure);
    let total = n + 3 + usize::from(with_usage) + skip;
    let chunk = openai_chunk(id, "chat.completion.chunk", created, model, with_usage);
    let choice = move |delta: Value, finish: Option<&str>, filtered: bool| {
        let mut choice = json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish});
        if azure {
            choice["content_filter_results"] = if filtered { content_filter_results() } else { json!({}) };
        }
        json!([choice])
    };
    sse_response(total, opts.delay, move |k| match k {
        0 if azure => sse_data(&prompt_filter_chunk()),
        k => match k - skip {
            0 => chunk(choice(json!({"role": "assistant", "content": "", "refusal": null}), None, false), None),
            k if k <= n => chunk(choice(json!({"content": reply.piece(k - 1)}), None, true), None),
            k if k == n + 1 => chunk(choice(json!({}), Some(finish_reason), false), None),
            k if k == n + 2 && with_usage => chunk(json!([]), Some(&usage)),
            _ => sse_done(),
        },
    })
}
