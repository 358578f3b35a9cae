//! mock-llm over real HTTP on loopback: every endpoint's shape, streams and their pacing, the
//! test hooks, and the errors.

use super::*;
use crate::mock_llm::embeddings::base64_encode;
use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::Instant as StdInstant;
use tokio::net::TcpStream;

/// Starts a mock on an ephemeral loopback port; it lives as long as the test's runtime.
async fn start(delay_ms: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = MockConfig { chunk_delay: Duration::from_millis(delay_ms) };
    tokio::spawn(serve(listener, config));
    addr
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// Data frames with the time they arrived, measured from sending the request.
    frames: Vec<(Duration, Bytes)>,
}

impl Reply {
    fn raw(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }

    fn body(&self) -> String {
        String::from_utf8(self.raw()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body()).unwrap()
    }

    /// SSE events as (event name, data) pairs.
    fn events(&self) -> Vec<(Option<String>, String)> {
        let body = self.body();
        assert!(body.ends_with("\n\n"), "stream must end with a complete event");
        body.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_owned();
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    fn data_json(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap())
            .collect()
    }
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut builder = Request::builder().method(method).uri(path).header("host", addr.to_string());
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let started = StdInstant::now();
    let response = sender.send_request(request).await.unwrap();
    let (parts, mut incoming) = response.into_parts();
    let mut frames = Vec::new();
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push((started.elapsed(), data));
        }
    }
    Reply { status: parts.status, headers: parts.headers, frames }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(addr, "POST", path, &[], &body.to_string()).await
}

const HELLO: &str = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to me"}]"#;

#[tokio::test]
async fn chat_non_stream_has_openai_shape_and_usage() {
    let addr = start(0).await;
    let messages: Value = serde_json::from_str(HELLO).unwrap();
    let r = post(addr, "/v1/chat/completions", json!({"model": "gpt-4o-mini", "messages": messages})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], REPLY_TEXT);
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    // (2 words + 3) + (4 words + 3) + 3
    assert_eq!(v["usage"]["prompt_tokens"], 15);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 27);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(v["system_fingerprint"], "fp_mock");
}

#[tokio::test]
async fn chat_max_tokens_cuts_the_reply_with_length() {
    let addr = start(0).await;
    let r = post(addr, "/v1/chat/completions", json!({"model": "m", "messages": [], "max_tokens": 3})).await;
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "This is a");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage() {
    let addr = start(0).await;
    let r = post(addr, "/v1/chat/completions", json!({"model": "m", "messages": [], "stream": true})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["cache-control"], "no-cache");
    let events = r.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = r.data_json();
    assert_eq!(chunks.len(), 12 + 2);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let text: String =
        chunks[1..13].iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(text, REPLY_TEXT);
    let last = &chunks[13]["choices"][0];
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_usage_chunk_and_done() {
    let addr = start(0).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_completion_tokens": 5,
    });
    let r = post(addr, "/v1/chat/completions", body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = r.data_json();
    assert_eq!(chunks.len(), 1 + 5 + 1 + 1);
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some());
    }
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 3 + 3 + 3);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 14);
}

#[tokio::test]
async fn stream_chunks_are_spread_over_time() {
    let addr = start(0).await;
    let headers = [("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "50")];
    let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
    let r = send(addr, "POST", "/v1/chat/completions", &headers, &body).await;
    // role + 5 words + finish + [DONE] = 8 events, 7 gaps of 50 ms = 350 ms.
    assert_eq!(r.events().len(), 8);
    let first = r.frames.first().unwrap().0;
    let last = r.frames.last().unwrap().0;
    assert!(last >= Duration::from_millis(300), "stream took only {last:?}");
    assert!(last - first >= Duration::from_millis(200), "first {first:?}, last {last:?}");
    assert!(r.frames.len() >= 3, "events arrived in only {} frames", r.frames.len());
}

#[tokio::test]
async fn config_delay_applies_and_zero_header_overrides_it() {
    let addr = start(40).await;
    let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
    let slow = send(addr, "POST", "/v1/chat/completions", &[("x-mock-chunks", "4")], &body).await;
    assert!(slow.frames.last().unwrap().0 >= Duration::from_millis(150));
    let fast =
        send(addr, "POST", "/v1/chat/completions", &[("x-mock-chunks", "200"), ("x-mock-chunk-delay-ms", "0")], &body)
            .await;
    assert_eq!(fast.data_json().len(), 202);
    assert!(fast.frames.last().unwrap().0 < Duration::from_secs(5));
}

#[tokio::test]
async fn anthropic_stream_has_the_event_order_and_final_usage() {
    let addr = start(0).await;
    let body = json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 1024,
        "system": "be nice",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        "stream": true,
    });
    let r = post(addr, "/v1/messages", body).await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", 12));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"], name.as_deref().unwrap());
    }
    let start_msg = &data[0]["message"];
    assert!(start_msg["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(start_msg["content"], json!([]));
    // 2 system words + (2 words + 3) + 3
    assert_eq!(start_msg["usage"]["input_tokens"], 10);
    assert_eq!(start_msg["usage"]["output_tokens"], 1);
    let text: String = data[3..15]
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, REPLY_TEXT);
    assert_eq!(data[16]["delta"]["stop_reason"], "end_turn");
    assert_eq!(data[16]["usage"]["output_tokens"], 12);
}

#[tokio::test]
async fn anthropic_non_stream_and_max_tokens() {
    let addr = start(0).await;
    let body = json!({"model": "claude", "max_tokens": 2, "messages": [{"role": "user", "content": "hey"}]});
    let v = post(addr, "/v1/messages", body).await.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"], json!([{"type": "text", "text": "This is"}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 7, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );
}

fn decode_f32s(b64: &str) -> Vec<f32> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut bytes = Vec::new();
    for c in b64.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | alphabet.iter().position(|&a| a == c).unwrap() as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            bytes.push((bits >> nbits) as u8);
        }
    }
    bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[tokio::test]
async fn embeddings_floats_and_base64_agree() {
    let addr = start(0).await;
    let floats = post(addr, "/v1/embeddings", json!({"model": "e", "input": ["hello world", "bye"]})).await.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "e");
    assert_eq!(floats["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    assert_eq!(floats["data"].as_array().unwrap().len(), 2);
    assert_eq!(floats["data"][1]["index"], 1);
    assert_eq!(floats["data"][0]["object"], "embedding");
    let first: Vec<f32> =
        floats["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(first.len(), 8);
    let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 0.01, "norm {norm}");

    let b64 = post(addr, "/v1/embeddings", json!({"model": "e", "input": "hello world", "encoding_format": "base64"}))
        .await
        .json();
    let encoded = b64["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded.len(), 44); // 32 bytes
    assert_eq!(decode_f32s(encoded), first, "same input, same vector");

    let tokens = post(addr, "/v1/embeddings", json!({"input": [[1, 2, 3], [4]], "dimensions": 3})).await.json();
    assert_eq!(tokens["usage"]["prompt_tokens"], 4);
    assert_eq!(tokens["data"][1]["embedding"].as_array().unwrap().len(), 3);

    let bad = post(addr, "/v1/embeddings", json!({"model": "e"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in cases {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
    }
    assert_eq!(base64_encode(&[0xfb, 0xff, 0xfe]), "+//+");
}

#[tokio::test]
async fn responses_non_stream_shape() {
    let addr = start(0).await;
    let v =
        post(addr, "/v1/responses", json!({"model": "gpt-4o", "input": "tell me a joke", "instructions": "be funny"}))
            .await
            .json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_mock_"));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let item = &v["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0], json!({"type": "output_text", "text": REPLY_TEXT, "annotations": []}));
    // 2 instruction words + (4 words + 3) + 3
    assert_eq!(v["usage"]["input_tokens"], 12);
    assert_eq!(v["usage"]["output_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 24);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn responses_stream_ends_with_completed_and_usage() {
    let addr = start(0).await;
    let body = json!({"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a b"}]}], "stream": true});
    let r = post(addr, "/v1/responses", body).await;
    let events = r.events();
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for (i, ((name, _), d)) in events.iter().zip(&data).enumerate() {
        assert_eq!(d["type"], name.as_deref().unwrap());
        assert_eq!(d["sequence_number"], i);
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names[..4],
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    );
    assert!(names[4..16].iter().all(|n| *n == "response.output_text.delta"));
    assert_eq!(
        names[16..],
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    );
    let deltas: String = data[4..16].iter().map(|d| d["delta"].as_str().unwrap().to_owned()).collect();
    assert_eq!(deltas, REPLY_TEXT);
    assert_eq!(data[0]["response"]["status"], "in_progress");
    let done = &data.last().unwrap()["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], REPLY_TEXT);
    assert_eq!(done["usage"]["input_tokens"], 2 + 3 + 3);
    assert_eq!(done["usage"]["output_tokens"], 12);
}

/// A strict schema as the SDKs send it: a nested object by `$ref`, an enum, a list, a
/// nullable string.
fn ticket_schema() -> Value {
    json!({
        "$defs": {"Who": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]}},
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "level": {"enum": ["low", "high"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "who": {"$ref": "#/$defs/Who"},
            "note": {"type": ["string", "null"]},
            "due": {"type": "string", "format": "date-time"},
        },
        "required": ["title", "level", "tags", "who", "note", "due"],
        "additionalProperties": false,
    })
}

fn ticket_answer() -> Value {
    json!({
        "title": "mock", "level": "low", "tags": ["mock", "mock"], "who": {"email": "mock@example.com"},
        "note": "mock", "due": "2024-01-01T00:00:00Z",
    })
}

#[tokio::test]
async fn chat_json_schema_answers_fitting_json_whole_and_streamed() {
    let addr = start(0).await;
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "ticket", "schema": ticket_schema(), "strict": true}});
    let body = json!({"model": "m", "messages": [], "response_format": format});
    let v = post(addr, "/v1/chat/completions", body.clone()).await.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert_eq!(serde_json::from_str::<Value>(&content).unwrap(), ticket_answer());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let pieces = reply::json_pieces(&content).len();
    assert_eq!(v["usage"]["completion_tokens"], pieces);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = post(addr, "/v1/chat/completions", streamed).await.data_json();
    let deltas: Vec<&str> = chunks[1..].iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!((deltas.len(), deltas.concat()), (pieces, content), "one chunk per piece, the same JSON");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], pieces);

    // json_object: a small object; max_tokens cuts the JSON like the real API does.
    let body = json!({"model": "m", "messages": [], "response_format": {"type": "json_object"}});
    let v = post(addr, "/v1/chat/completions", body).await.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(content).unwrap(), json!({"reply": REPLY_TEXT}));
    let body = json!({"model": "m", "messages": [], "response_format": {"type": "json_object"}, "max_tokens": 2});
    let v = post(addr, "/v1/chat/completions", body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "{\"reply\":");
    assert_eq!(
        (v["choices"][0]["finish_reason"].as_str(), v["usage"]["completion_tokens"].as_u64()),
        (Some("length"), Some(2))
    );
}

#[tokio::test]
async fn responses_text_format_answers_fitting_json_and_echoes_the_format() {
    let addr = start(0).await;
    let format = json!({"type": "json_schema", "name": "ticket", "schema": ticket_schema(), "strict": true});
    let body = json!({"model": "gpt-4o", "input": "file it", "text": {"format": format}});
    let v = post(addr, "/v1/responses", body.clone()).await.json();
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), ticket_answer());
    assert_eq!(v["text"]["format"], format);
    assert_eq!(v["usage"]["output_tokens"], reply::json_pieces(&text).len());

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let data: Vec<Value> = post(addr, "/v1/responses", streamed)
        .await
        .events()
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: String = data
        .iter()
        .filter(|d| d["type"] == "response.output_text.delta")
        .map(|d| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, text);
    let done = &data.last().unwrap()["response"];
    assert_eq!((done["status"].as_str(), &done["text"]["format"]), (Some("completed"), &format));
    assert_eq!(done["usage"]["output_tokens"], v["usage"]["output_tokens"]);

    let body = json!({"model": "gpt-4o", "input": "x", "text": {"format": {"type": "json_object"}}});
    let v = post(addr, "/v1/responses", body).await.json();
    assert!(serde_json::from_str::<Value>(v["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap().is_object());
}

#[tokio::test]
async fn malformed_output_formats_are_400s_and_odd_schemas_are_answered() {
    let addr = start(0).await;
    let chat = |format: Value| json!({"model": "m", "messages": [], "response_format": format});
    let responses = |format: Value| json!({"model": "m", "input": "x", "text": {"format": format}});
    for (path, body) in [
        ("/v1/chat/completions", chat(json!("json"))),
        ("/v1/chat/completions", chat(json!({"type": "yaml"}))),
        ("/v1/chat/completions", chat(json!({"type": "json_schema"}))),
        ("/v1/chat/completions", chat(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}))),
        ("/v1/responses", responses(json!({"type": "json_schema", "name": "x", "schema": "object"}))),
        ("/v1/responses", responses(json!({}))),
    ] {
        let r = post(addr, path, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{body}");
    }
    // Any schema object is answered with valid JSON; `text` is the plain reply.
    for schema in [json!({"type": 5, "items": "x"}), json!({"$ref": "#/nowhere"}), json!(true), json!({"$ref": "#"})] {
        let body = chat(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}));
        let v = post(addr, "/v1/chat/completions", body).await.json();
        assert!(
            serde_json::from_str::<Value>(v["choices"][0]["message"]["content"].as_str().unwrap()).is_ok(),
            "{schema}"
        );
    }
    let v = post(addr, "/v1/chat/completions", chat(json!({"type": "text"}))).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], REPLY_TEXT);
}

#[test]
fn json_pieces_split_at_punctuation_and_spaces_and_concatenate_back() {
    let text = r#"{"a b":[1,{"c":"x \" y"}],"d":null}"#;
    let pieces = reply::json_pieces(text);
    assert_eq!(
        pieces,
        [
            r#"{"#, r#""a"#, r#" b":"#, "[", "1,", "{", r#""c":"#, r#""x"#, r#" \""#, r#" y""#, "}", "],", r#""d":"#,
            "null", "}"
        ]
    );
    assert_eq!(pieces.concat(), text);
}

#[tokio::test]
async fn legacy_completions_plain_and_stream() {
    let addr = start(0).await;
    let v = post(addr, "/v1/completions", json!({"model": "i", "prompt": "once upon a time", "max_tokens": 4}))
        .await
        .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "This is a mock");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}));

    let body = json!({"model": "i", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
    let r = post(addr, "/v1/completions", body).await;
    assert_eq!(r.events().last().unwrap().1, "[DONE]");
    let chunks = r.data_json();
    assert_eq!(chunks.len(), 12 + 2);
    let text: String = chunks[..12].iter().map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(text, REPLY_TEXT);
    assert_eq!(chunks[12]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[13]["usage"]["completion_tokens"], 12);
}

#[tokio::test]
async fn x_mock_status_gives_provider_shaped_errors() {
    let addr = start(0).await;
    let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
    let r = send(addr, "POST", "/v1/chat/completions", &[("x-mock-status", "429")], &body).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["content-type"], "application/json");
    let e = r.json();
    assert_eq!(e["error"]["type"], "requests");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["param"], Value::Null);
    assert!(e["error"]["message"].as_str().unwrap().contains("429"));

    let r = send(addr, "POST", "/v1/messages", &[("x-mock-status", "529")], "{}").await;
    assert_eq!(r.status.as_u16(), 529);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "overloaded_error");

    let r = send(addr, "POST", "/v1/embeddings", &[("x-mock-status", "500")], "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn unknown_paths_and_bad_json_are_errors() {
    let addr = start(0).await;
    let r = send(addr, "POST", "/v2/nothing", &[], "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"]["message"].is_string());
    let r = send(addr, "POST", "/v1/chat/completions", &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = send(addr, "POST", "/v1/messages", &[], "[1]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(r.json()["type"], "error");
    let r = send(addr, "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn request_headers_are_echoed() {
    let addr = start(0).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("traceparent", tp),
        ("tracestate", "a=1"),
        ("authorization", "Bearer sk-test"),
        ("x-tracegate-team", "search"),
        ("x-b3-traceid", "abc"),
        ("x-goog-api-key", "g"),
        ("api-key", "az"),
        ("x-amz-date", "20261206T193000Z"),
        ("x-amz-security-token", "tok"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-other", "not echoed"),
    ];
    let body = json!({"model": "m", "messages": []}).to_string();
    let r = send(addr, "POST", "/v1/chat/completions", &headers, &body).await;
    let echoed: Value = serde_json::from_str(r.headers["x-mock-request-headers"].to_str().unwrap()).unwrap();
    assert_eq!(
        echoed,
        json!({
            "host": addr.to_string(),
            "traceparent": tp,
            "tracestate": "a=1",
            "authorization": "Bearer sk-test",
            "x-tracegate-team": "search",
            "x-b3-traceid": "abc",
            "x-goog-api-key": "g",
            "api-key": "az",
            "x-amz-date": "20261206T193000Z",
            "x-amz-security-token": "tok",
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        })
    );
    // Present on errors and streams too; `host` is always there (the test client sends it).
    let host = format!(r#""host":"{addr}""#);
    let r = send(addr, "GET", "/nope", &[("x-api-key", "k")], "").await;
    assert_eq!(r.headers["x-mock-request-headers"], format!(r#"{{{host},"x-api-key":"k"}}"#).as_str());
    let r = send(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(r.headers["x-mock-request-headers"], format!("{{{host}}}").as_str());
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn models_list_in_both_shapes() {
    let addr = start(0).await;
    let v = send(addr, "GET", "/v1/models", &[], "").await.json();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-4o-mini" && m["object"] == "model"));
    let v = send(addr, "GET", "/v1/models", &[("anthropic-version", "2023-06-01")], "").await.json();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["data"][0]["type"], "model");
    let v = send(addr, "GET", "/v1/models/gpt-4o", &[], "").await.json();
    assert_eq!(v["id"], "gpt-4o");
}

#[tokio::test]
async fn keep_alive_and_h2c() {
    let addr = start(0).await;
    // Several requests over one HTTP/1.1 connection.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::post("/v1/chat/completions")
            .header("host", "mock")
            .body(Full::new(Bytes::from(r#"{"model":"m","messages":[],"stream":true}"#)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    }
    // Cleartext HTTP/2 with prior knowledge.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/v1/messages"))
        .body(Full::new(Bytes::from(r#"{"model":"c","max_tokens":100,"messages":[]}"#)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["content"][0]["text"], REPLY_TEXT);
}

#[tokio::test]
async fn dropping_serve_closes_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, MockConfig { chunk_delay: Duration::from_millis(200) }));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/v1/chat/completions")
        .header("host", "mock")
        .header("x-mock-chunks", "100")
        .body(Full::new(Bytes::from(r#"{"model":"m","messages":[],"stream":true}"#)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.is_some());
    server.abort();
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "stream kept going after the server was dropped");
}

// ---- Gemini

const GEMINI_HELLO: &str = r#"{"systemInstruction":{"parts":[{"text":"Be brief."}]},"contents":[{"role":"user","parts":[{"text":"Say hello"},{"text":"to me"}]}]}"#;

#[tokio::test]
async fn gemini_generate_content_has_google_shape_and_usage_on_v1beta_and_v1() {
    let addr = start(0).await;
    for prefix in ["/v1beta", "/v1"] {
        let path = format!("{prefix}/models/gemini-2.0-flash:generateContent");
        let r = send(addr, "POST", &path, &[("x-goog-api-key", "k")], GEMINI_HELLO).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], "application/json");
        let v = r.json();
        let candidate = &v["candidates"][0];
        assert_eq!(candidate["content"], json!({"parts": [{"text": REPLY_TEXT}], "role": "model"}));
        assert_eq!(candidate["finishReason"], "STOP");
        assert_eq!(candidate["index"], 0);
        // "Be brief." (2) + "Say hello" (2) + "to me" (2): words only, no per-message overhead.
        assert_eq!(
            v["usageMetadata"],
            json!({"promptTokenCount": 6, "candidatesTokenCount": 12, "totalTokenCount": 18})
        );
        assert_eq!(v["modelVersion"], "gemini-2.0-flash");
        assert!(v["responseId"].as_str().unwrap().starts_with("mock-"));
        let echoed: Value = serde_json::from_str(r.headers["x-mock-request-headers"].to_str().unwrap()).unwrap();
        assert_eq!(echoed["x-goog-api-key"], "k");
    }
}

#[tokio::test]
async fn gemini_thinking_and_max_output_tokens() {
    let addr = start(0).await;
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let contents = json!([{"parts": [{"text": "hi"}]}]);
    // A budget asks for thinking: 8 thoughts tokens (fewer under a smaller budget), in the total.
    for (config, thoughts) in [
        (json!({"thinkingConfig": {"thinkingBudget": 1024}}), 8),
        (json!({"thinkingConfig": {"thinkingBudget": 3}}), 3),
        (json!({"thinkingConfig": {"thinkingBudget": -1}}), 8),
        (json!({"thinking_config": {"thinking_budget": 100}}), 8),
    ] {
        let r = post(addr, path, json!({"contents": contents, "generationConfig": config})).await;
        let usage = &r.json()["usageMetadata"];
        assert_eq!(usage["thoughtsTokenCount"], thoughts, "{config}");
        assert_eq!(usage["totalTokenCount"], 1 + 12 + thoughts, "{config}");
    }
    let r =
        post(addr, path, json!({"contents": contents, "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}))
            .await;
    assert!(r.json()["usageMetadata"].get("thoughtsTokenCount").is_none());
    // includeThoughts: a thought part before the text.
    let config = json!({"thinkingConfig": {"includeThoughts": true}});
    let v = post(addr, path, json!({"contents": contents, "generationConfig": config})).await.json();
    let parts = &v["candidates"][0]["content"]["parts"];
    assert_eq!(parts[0]["thought"], true);
    assert_eq!(parts[1], json!({"text": REPLY_TEXT}));
    assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 8);
    // maxOutputTokens cuts the reply.
    let v = post(addr, path, json!({"contents": contents, "generationConfig": {"maxOutputTokens": 2}})).await.json();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "This is");
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 2);
}

#[tokio::test]
async fn gemini_sse_stream_has_a_chunk_per_word_and_the_full_usage_last() {
    let addr = start(0).await;
    let path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";
    let r = send(addr, "POST", path, &[], GEMINI_HELLO).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let body = r.body();
    assert!(body.ends_with("\r\n\r\n"));
    let chunks: Vec<Value> = body
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks.len(), 12);
    let text: String =
        chunks.iter().map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, REPLY_TEXT);
    for early in &chunks[..11] {
        assert_eq!(early["usageMetadata"], json!({"promptTokenCount": 6, "totalTokenCount": 6}));
        assert!(early["candidates"][0].get("finishReason").is_none());
        assert_eq!(early["candidates"][0]["content"]["role"], "model");
    }
    let last = &chunks[11];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount": 6, "candidatesTokenCount": 12, "totalTokenCount": 18})
    );
    assert_eq!(last["responseId"], chunks[0]["responseId"]);
}

#[tokio::test]
async fn gemini_stream_without_alt_sse_is_a_json_array_sent_element_by_element() {
    let addr = start(0).await;
    let headers = [("x-mock-chunks", "4"), ("x-mock-chunk-delay-ms", "40")];
    let r = send(addr, "POST", "/v1/models/gemini-2.0-flash:streamGenerateContent", &headers, GEMINI_HELLO).await;
    assert_eq!(r.headers["content-type"], "application/json");
    let body = r.body();
    assert!(body.starts_with("[{") && body.ends_with("}]"), "{body}");
    assert_eq!(body.matches(",\r\n{").count(), 3);
    let array = r.json();
    let elements = array.as_array().unwrap();
    assert_eq!(elements.len(), 4);
    assert_eq!(elements[3]["usageMetadata"]["candidatesTokenCount"], 4);
    assert_eq!(elements[3]["candidates"][0]["finishReason"], "STOP");
    // Each element is its own write, 40 ms apart.
    assert!(r.frames.len() >= 3, "elements arrived in only {} frames", r.frames.len());
    assert!(r.frames.last().unwrap().0 >= Duration::from_millis(100));
}

#[tokio::test]
async fn gemini_count_tokens_and_embeddings() {
    let addr = start(0).await;
    let contents: Value = serde_json::from_str(GEMINI_HELLO).unwrap();
    let r = post(addr, "/v1beta/models/gemini-2.0-flash:countTokens", contents.clone()).await;
    assert_eq!(r.json(), json!({"totalTokens": 6}));
    let wrapped =
        json!({"generateContentRequest": {"model": "models/gemini-2.0-flash", "contents": contents["contents"]}});
    let r = post(addr, "/v1beta/models/gemini-2.0-flash:countTokens", wrapped).await;
    assert_eq!(r.json(), json!({"totalTokens": 4}));

    let one = |text: &str| json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": text}]}});
    let r = post(addr, "/v1beta/models/text-embedding-004:embedContent", one("hello world")).await;
    let single = r.json()["embedding"]["values"].clone();
    assert_eq!(single.as_array().unwrap().len(), 8);
    // The same vector as OpenAI's embeddings endpoint gives the same text.
    let openai = post(addr, "/v1/embeddings", json!({"model": "m", "input": "hello world"})).await.json();
    assert_eq!(single, openai["data"][0]["embedding"]);
    let mut sized = one("hello world");
    sized["outputDimensionality"] = json!(3);
    let r = post(addr, "/v1beta/models/text-embedding-004:embedContent", sized).await;
    assert_eq!(r.json()["embedding"]["values"].as_array().unwrap().len(), 3);

    let batch = json!({"requests": [one("hello world"), one("bye")]});
    let v = post(addr, "/v1beta/models/text-embedding-004:batchEmbedContents", batch).await.json();
    let embeddings = v["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(embeddings[0]["values"], single);
    assert_ne!(embeddings[1]["values"], single);
}

#[tokio::test]
async fn gemini_errors_have_google_shape() {
    let addr = start(0).await;
    let path = "/v1beta/models/gemini-2.0-flash:generateContent";
    for (code, status) in [
        ("400", "INVALID_ARGUMENT"),
        ("401", "UNAUTHENTICATED"),
        ("403", "PERMISSION_DENIED"),
        ("404", "NOT_FOUND"),
        ("429", "RESOURCE_EXHAUSTED"),
        ("500", "INTERNAL"),
        ("503", "UNAVAILABLE"),
        ("504", "DEADLINE_EXCEEDED"),
    ] {
        let r = send(addr, "POST", path, &[("x-mock-status", code)], GEMINI_HELLO).await;
        assert_eq!(r.status.as_str(), code);
        let e = r.json();
        assert_eq!(e["error"]["code"], code.parse::<u64>().unwrap());
        assert_eq!(e["error"]["status"], status);
        assert!(e["error"]["message"].as_str().unwrap().contains(code));
    }
    // x-mock-status on a stream is a plain error too.
    let r = send(addr, "POST", &format!("{path}?alt=sse"), &[("x-mock-status", "503")], GEMINI_HELLO).await;
    assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
    let r = send(addr, "POST", path, &[], "{nope").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    let r = post(addr, path, json!({})).await;
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    let r = post(addr, "/v1beta/models/gemini-2.0-flash:teleport", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    let r = send(addr, "GET", path, &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json()["error"]["status"].is_string());
}

// ---- Azure OpenAI

#[tokio::test]
async fn azure_deployment_chat_is_openai_shaped_with_filter_results() {
    let addr = start(0).await;
    let messages: Value = serde_json::from_str(HELLO).unwrap();
    let path = "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21";
    let r = send(addr, "POST", path, &[("api-key", "az")], &json!({"messages": messages}).to_string()).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18", "the model deployed, not the deployment");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], REPLY_TEXT);
    assert_eq!(v["usage"]["prompt_tokens"], 15);
    assert_eq!(v["choices"][0]["content_filter_results"]["hate"], json!({"filtered": false, "severity": "safe"}));
    assert_eq!(v["prompt_filter_results"][0]["prompt_index"], 0);
    assert_eq!(v["prompt_filter_results"][0]["content_filter_results"]["jailbreak"]["detected"], false);
    let echoed: Value = serde_json::from_str(r.headers["x-mock-request-headers"].to_str().unwrap()).unwrap();
    assert_eq!(echoed["api-key"], "az");
    // The body's model wins over the deployment's name.
    let r = post(addr, path, json!({"model": "gpt-4o-2024-11-20", "messages": []})).await;
    assert_eq!(r.json()["model"], "gpt-4o-2024-11-20");
    // The plain OpenAI endpoint has no filter results.
    let r = post(addr, "/v1/chat/completions", json!({"model": "m", "messages": []})).await;
    assert!(r.json().get("prompt_filter_results").is_none());
}

#[tokio::test]
async fn azure_chat_stream_opens_with_the_prompt_filter_chunk() {
    let addr = start(0).await;
    let body = json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}});
    let r = post(addr, "/openai/deployments/dep/chat/completions?api-version=2024-10-21", body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = r.data_json();
    // prompt filter + role + 12 words + finish + usage.
    assert_eq!(chunks.len(), 16);
    assert_eq!(chunks[0]["id"], "");
    assert_eq!(chunks[0]["object"], "");
    assert_eq!(chunks[0]["created"], 0);
    assert_eq!(chunks[0]["model"], "");
    assert_eq!(chunks[0]["choices"], json!([]));
    assert_eq!(chunks[0]["prompt_filter_results"][0]["prompt_index"], 0);
    assert_eq!(chunks[1]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for chunk in &chunks[2..14] {
        assert_eq!(chunk["model"], "gpt-4o-mini-2024-07-18");
        assert_eq!(chunk["choices"][0]["content_filter_results"]["violence"]["filtered"], false);
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert_eq!(text, REPLY_TEXT);
    assert_eq!(chunks[14]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[15]["usage"]["completion_tokens"], 12);
}

#[tokio::test]
async fn azure_completions_embeddings_v1_and_missing_api_version() {
    let addr = start(0).await;
    let r =
        post(addr, "/openai/deployments/inst/completions?api-version=2024-10-21", json!({"prompt": "hi there"})).await;
    let v = r.json();
    assert_eq!(v["model"], "gpt-35-turbo-instruct");
    assert_eq!(v["choices"][0]["text"], REPLY_TEXT);
    assert!(v["prompt_filter_results"].is_array());
    let r =
        post(addr, "/openai/deployments/emb/embeddings?api-version=2024-10-21", json!({"input": "hello world"})).await;
    assert_eq!(r.json()["model"], "text-embedding-3-small");
    assert_eq!(r.json()["data"][0]["embedding"].as_array().unwrap().len(), 8);
    // The v1 API: OpenAI's paths under /openai/v1/, no api-version needed.
    let r = post(addr, "/openai/v1/chat/completions", json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(r.json()["model"], "gpt-4o");
    assert!(r.json()["prompt_filter_results"].is_array());
    let r = post(addr, "/openai/v1/responses", json!({"model": "gpt-4o", "input": "hi"})).await;
    assert_eq!(r.status, StatusCode::OK);
    // A deployment path without api-version is a 404 in OpenAI's shape.
    let r = post(addr, "/openai/deployments/dep/chat/completions", json!({"messages": []})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r =
        send(addr, "POST", "/openai/deployments/dep/chat/completions?api-version=1", &[("x-mock-status", "429")], "{}")
            .await;
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
}

// ---- Bedrock

/// The event-stream frames of a body, every one CRC-checked: (`:event-type`, payload JSON).
fn bedrock_frames(r: &Reply) -> Vec<(String, Value)> {
    let raw = r.raw();
    crate::formats::eventstream::frames(&raw)
        .map(|frame| {
            let frame = frame.expect("a CRC-valid frame");
            assert_eq!(frame.header(":message-type"), Some("event"));
            assert_eq!(frame.header(":content-type"), Some("application/json"));
            (frame.header(":event-type").unwrap().to_owned(), serde_json::from_slice(frame.payload).unwrap())
        })
        .collect()
}

/// The decoded chunk JSONs of an `invoke-with-response-stream` body.
fn bedrock_chunks(r: &Reply) -> Vec<Value> {
    use base64::Engine;
    bedrock_frames(r)
        .into_iter()
        .map(|(event, payload)| {
            assert_eq!(event, "chunk");
            let bytes = base64::engine::general_purpose::STANDARD.decode(payload["bytes"].as_str().unwrap()).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect()
}

const HAIKU: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0";

#[test]
fn bedrock_paths_percent_decode_their_model_ids() {
    use crate::mock_llm::bedrock::{bedrock_path, family, Family, Op};
    assert_eq!(
        bedrock_path("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
        Some(("anthropic.claude-3-haiku-20240307-v1:0".to_owned(), Some(Op::Converse)))
    );
    let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream";
    let (id, op) = bedrock_path(arn).unwrap();
    assert_eq!(
        id,
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
    );
    assert_eq!(op, Some(Op::InvokeStream));
    assert_eq!(family(&id, &json!({})), Some(Family::Anthropic));
    assert_eq!(bedrock_path("/model/x/unknown"), Some(("x".to_owned(), None)));
    assert_eq!(bedrock_path("/model//converse"), None);
    assert_eq!(family("meta.llama3-8b-instruct-v1:0", &json!({})), Some(Family::Meta));
    assert_eq!(family("amazon.titan-text-express-v1", &json!({})), Some(Family::TitanText));
    assert_eq!(family("amazon.titan-embed-text-v2:0", &json!({})), Some(Family::TitanEmbed));
    assert_eq!(family("eu.meta.llama3-2-1b-instruct-v1:0", &json!({})), Some(Family::Meta));
    assert_eq!(family("application-inference-profile/abc", &json!({"prompt": "x"})), Some(Family::Meta));
    assert_eq!(family("mystery", &json!({})), None);
}

#[tokio::test]
async fn bedrock_converse_shape_and_usage() {
    let addr = start(0).await;
    let body = json!({
        "messages": [{"role": "user", "content": [{"text": "Say hello to me"}]}],
        "system": [{"text": "Be brief."}],
    });
    let r = post(addr, &format!("{HAIKU}/converse"), body.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["output"]["message"], json!({"role": "assistant", "content": [{"text": REPLY_TEXT}]}));
    assert_eq!(v["stopReason"], "end_turn");
    // (4 words + 3) + "Be brief." (2) + 3, the Anthropic rule.
    assert_eq!(v["usage"], json!({"inputTokens": 12, "outputTokens": 12, "totalTokens": 24}));
    assert!(v["metrics"]["latencyMs"].as_u64().unwrap() >= 1);
    let mut short = body;
    short["inferenceConfig"] = json!({"maxTokens": 4});
    let v = post(addr, &format!("{HAIKU}/converse"), short).await.json();
    assert_eq!(v["output"]["message"]["content"][0]["text"], "This is a mock");
    assert_eq!(v["stopReason"], "max_tokens");
}

#[tokio::test]
async fn bedrock_converse_stream_frames_are_crc_valid_and_in_order() {
    let addr = start(0).await;
    let headers = [("x-mock-chunk-delay-ms", "30")];
    let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).to_string();
    let r = send(addr, "POST", &format!("{HAIKU}/converse-stream"), &headers, &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/vnd.amazon.eventstream");
    let frames = bedrock_frames(&r);
    assert_eq!(frames.len(), 16);
    assert_eq!(frames[0], ("messageStart".to_owned(), json!({"role": "assistant"})));
    let mut text = String::new();
    for (event, payload) in &frames[1..13] {
        assert_eq!(event, "contentBlockDelta");
        assert_eq!(payload["contentBlockIndex"], 0);
        text.push_str(payload["delta"]["text"].as_str().unwrap());
    }
    assert_eq!(text, REPLY_TEXT);
    assert_eq!(frames[13], ("contentBlockStop".to_owned(), json!({"contentBlockIndex": 0})));
    assert_eq!(frames[14], ("messageStop".to_owned(), json!({"stopReason": "end_turn"})));
    assert_eq!(frames[15].0, "metadata");
    assert_eq!(frames[15].1["usage"], json!({"inputTokens": 7, "outputTokens": 12, "totalTokens": 19}));
    assert!(frames[15].1["metrics"]["latencyMs"].is_u64());
    // Paced: 15 gaps of 30 ms, written frame by frame.
    assert!(r.frames.last().unwrap().0 >= Duration::from_millis(400));
    assert!(r.frames.len() >= 5, "frames arrived in only {} writes", r.frames.len());
}

#[tokio::test]
async fn bedrock_invoke_speaks_each_model_family() {
    let addr = start(0).await;
    let anthropic = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(addr, "/model/us.anthropic.claude-3-haiku-20240307-v1%3A0/invoke", anthropic).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "us.anthropic.claude-3-haiku-20240307-v1:0");
    assert_eq!(v["content"], json!([{"type": "text", "text": REPLY_TEXT}]));
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(r.headers["x-amzn-bedrock-input-token-count"], "7");
    assert_eq!(r.headers["x-amzn-bedrock-output-token-count"], "12");
    assert!(r.headers["x-amzn-bedrock-invocation-latency"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Bedrock requires anthropic_version.
    let r = post(addr, &format!("{HAIKU}/invoke"), json!({"max_tokens": 5, "messages": []})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["x-amzn-errortype"], "ValidationException");

    let r = post(
        addr,
        "/model/meta.llama3-8b-instruct-v1%3A0/invoke",
        json!({"prompt": "Say hello to me", "max_gen_len": 3}),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"generation": "This is a", "prompt_token_count": 4, "generation_token_count": 3, "stop_reason": "length"})
    );
    assert_eq!(r.headers["x-amzn-bedrock-output-token-count"], "3");

    let r = post(addr, "/model/amazon.titan-text-express-v1/invoke", json!({"inputText": "hello there"})).await;
    assert_eq!(
        r.json(),
        json!({"inputTextTokenCount": 2, "results": [{"tokenCount": 12, "outputText": REPLY_TEXT, "completionReason": "FINISH"}]})
    );

    let r = post(addr, "/model/amazon.titan-embed-text-v2%3A0/invoke", json!({"inputText": "hello world"})).await;
    let v = r.json();
    assert_eq!(v["inputTextTokenCount"], 2);
    let openai = post(addr, "/v1/embeddings", json!({"model": "m", "input": "hello world"})).await.json();
    assert_eq!(v["embedding"], openai["data"][0]["embedding"]);
    assert_eq!(r.headers["x-amzn-bedrock-input-token-count"], "2");
    assert_eq!(r.headers["x-amzn-bedrock-output-token-count"], "0");
}

#[tokio::test]
async fn bedrock_invoke_stream_wraps_the_family_chunks_in_base64() {
    let addr = start(0).await;
    let anthropic = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(addr, &format!("{HAIKU}/invoke-with-response-stream"), anthropic).await;
    assert_eq!(r.headers["content-type"], "application/vnd.amazon.eventstream");
    assert_eq!(r.headers["x-amzn-bedrock-content-type"], "application/json");
    let chunks = bedrock_chunks(&r);
    let types: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types[..2], ["message_start", "content_block_start"]);
    assert_eq!(types[2..14], ["content_block_delta"; 12]);
    assert_eq!(types[14..], ["content_block_stop", "message_delta", "message_stop"]);
    let text: String = chunks[2..14].iter().map(|c| c["delta"]["text"].as_str().unwrap()).collect();
    assert_eq!(text, REPLY_TEXT);
    assert_eq!(chunks[15]["usage"]["output_tokens"], 12);
    let metrics = &chunks[16]["amazon-bedrock-invocationMetrics"];
    assert_eq!(metrics["inputTokenCount"], 7);
    assert_eq!(metrics["outputTokenCount"], 12);
    assert!(metrics["invocationLatency"].is_u64() && metrics["firstByteLatency"].is_u64());
    assert!(chunks[..16].iter().all(|c| c.get("amazon-bedrock-invocationMetrics").is_none()));

    let r = send(
        addr,
        "POST",
        "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream",
        &[("x-mock-chunks", "3")],
        r#"{"prompt":"hi there"}"#,
    )
    .await;
    let chunks = bedrock_chunks(&r);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[0]["prompt_token_count"], 2);
    assert_eq!(chunks[1]["prompt_token_count"], Value::Null);
    assert_eq!(chunks[2]["generation_token_count"], 3);
    assert_eq!(chunks[2]["stop_reason"], "stop");
    assert_eq!(chunks[2]["amazon-bedrock-invocationMetrics"]["outputTokenCount"], 3);
    let text: String = chunks.iter().map(|c| c["generation"].as_str().unwrap()).collect();
    assert_eq!(text, "This is a");

    let r = send(
        addr,
        "POST",
        "/model/amazon.titan-text-lite-v1/invoke-with-response-stream",
        &[("x-mock-chunks", "2")],
        r#"{"inputText":"hi"}"#,
    )
    .await;
    let chunks = bedrock_chunks(&r);
    assert_eq!(chunks[0]["outputText"], "This");
    assert_eq!(chunks[0]["inputTextTokenCount"], 1);
    assert_eq!(chunks[1]["completionReason"], "FINISH");
    assert_eq!(chunks[1]["totalOutputTextTokenCount"], 2);

    // An embeddings model does not stream.
    let r = post(addr, "/model/amazon.titan-embed-text-v2%3A0/invoke-with-response-stream", json!({"inputText": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["x-amzn-errortype"], "ValidationException");
}

#[tokio::test]
async fn bedrock_errors_name_their_exception() {
    let addr = start(0).await;
    let body = r#"{"messages":[]}"#;
    for (code, kind) in [
        ("400", "ValidationException"),
        ("401", "UnrecognizedClientException"),
        ("403", "AccessDeniedException"),
        ("404", "ResourceNotFoundException"),
        ("408", "ModelTimeoutException"),
        ("429", "ThrottlingException"),
        ("500", "InternalServerException"),
        ("503", "ServiceUnavailableException"),
        ("504", "ModelTimeoutException"),
    ] {
        for op in ["converse", "converse-stream", "invoke", "invoke-with-response-stream"] {
            let r = send(addr, "POST", &format!("{HAIKU}/{op}"), &[("x-mock-status", code)], body).await;
            assert_eq!(r.status.as_str(), code, "{op}");
            assert_eq!(r.headers["x-amzn-errortype"], kind, "{op} {code}");
            assert_eq!(r.headers["content-type"], "application/json");
            let e = r.json();
            assert!(e["message"].as_str().unwrap().contains(code));
            assert_eq!(e.as_object().unwrap().len(), 1);
        }
    }
    let r = send(addr, "POST", &format!("{HAIKU}/converse"), &[], "{nope").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["x-amzn-errortype"], "ValidationException");
    let r = post(addr, "/model/mystery-model/invoke", json!({"foo": 1})).await;
    assert_eq!(r.headers["x-amzn-errortype"], "ValidationException");
    let r = post(addr, &format!("{HAIKU}/teleport"), json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["x-amzn-errortype"], "ResourceNotFoundException");
}
