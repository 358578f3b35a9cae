//! `POST /v1/completions` (OpenAI legacy completions), JSON or streamed; Azure OpenAI's
//! (`azure`) carries its content-filter results in the JSON answer.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::azure::{content_filter_results, prompt_filter_results};
use crate::mock_llm::body::{json_response, openai_chunk, sse_done, sse_response, MockBody};
use crate::mock_llm::reply::{
    include_usage, input_tokens, is_stream, max_tokens, model_of, next_id, piece, unix_now, Opts, Reply,
};

/// `POST /v1/completions` (the legacy text completions API).
pub(super) fn completions(req: &Value, opts: &Opts, azure: bool) -> Response<MockBody> {
    let model = model_of(req);
    let prompt_tokens = req.get("prompt").map_or(0, input_tokens);
    let reply = Reply::plan(max_tokens(req, &["max_tokens"]), opts);
    let finish_reason = if reply.truncated { "length" } else { "stop" };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": reply.words,
        "total_tokens": prompt_tokens + reply.words as u64,
    });
    let id = format!("cmpl-mock-{}", next_id());
    let created = unix_now();

    if !is_stream(req) {
        let mut completion = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "text": reply.text(),
                "index": 0,
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

    // Events: one chunk per word, finish chunk, [usage chunk], [DONE].
    let with_usage = include_usage(req);
    let n = reply.words;
    let total = n + 2 + usize::from(with_usage);
    let chunk = openai_chunk(id, "text_completion", created, model, with_usage);
    let choice = |text: &str, finish: Option<&str>| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
    sse_response(total, opts.delay, move |k| match k {
        k if k < n => chunk(choice(piece(k), None), None),
        k if k == n => chunk(choice("", Some(finish_reason)), None),
        k if k == n + 1 && with_usage => chunk(json!([]), Some(&usage)),
        _ => sse_done(),
    })
}
