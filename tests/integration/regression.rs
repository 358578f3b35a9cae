//! Regression tests, each named after the defect it pins: it failed before the fix.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A team `search` (key `tk-search-0001`) with these limits, and the provider's own key.
fn limited_team(upstream: std::net::SocketAddr, limits: &str) -> String {
    format!(
        "{}api_key = \"sk-provider\"\n[[teams]]\nname = \"search\"\nkeys = [\"tk-search-0001\"]\n{limits}\n",
        provider("openai", "/openai", upstream, "openai")
    )
}

/// A prompt of 999,999 spaces made tiktoken-rs's `encode_ordinary` unwrap a regex error
/// (fancy-regex's backtracking limit) while the recorder estimated the tokens of a stream
/// without usage: the recorder thread died, and every later call was dropped. Now the call is
/// recorded as an error span with its bodies, the panic is counted, and recording goes on.
#[tokio::test]
async fn recorder_thread_died_on_a_prompt_of_a_million_spaces() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let hostile = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": " ".repeat(999_999)}],
    })
    .to_string();
    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], &hostile).await;
    assert_eq!(status, 200, "the client is served whatever the recorder meets");
    assert!(String::from_utf8_lossy(&body).contains("[DONE]"));

    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["status"], "error");
    assert!(span["error"].as_str().unwrap().contains("recorder panic"), "{}", span["error"]);
    assert_eq!((span["usage_source"].as_str(), &span["cost_usd"]), (Some("missing"), &Value::Null));
    let path =
        format!("/api/traces/{}/spans/{}", span["trace_id"].as_str().unwrap(), span["span_id"].as_str().unwrap());
    let (_, detail) = proxy.admin_get(&path).await;
    assert_eq!(detail["request_body"]["messages"][0]["content"].as_str().map(str::len), Some(999_999));

    // The next call is recorded as usual.
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!((span["status"].as_str(), span["usage_source"].as_str()), (Some("ok"), Some("reported")));
    let admin = proxy.admin_url("");
    assert_eq!(metric(&admin, "tracegate_recorder_panics_total").await, 1.0);
    assert_eq!(metric(&admin, "tracegate_spans_dropped_total").await, 0.0);
    assert_eq!(metric(&admin, "tracegate_spans_recorded_total").await, 2.0);
}

/// `max_tokens: 18446744073709551615` made the budget estimate `input + max_tokens` overflow:
/// a panic on the request path in debug builds, and in release a wrapped, tiny estimate that
/// let the call past a tokens-per-minute limit. The estimate now saturates, so the call is
/// refused like any call that cannot fit.
#[tokio::test]
async fn a_huge_max_tokens_wrapped_the_budget_estimate() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&limited_team(mock.addr, "tokens_per_minute = 100000")).await;
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":18446744073709551615,"messages":[{"role":"user","content":"hi"}]}"#;
    let auth = [("authorization", "Bearer tk-search-0001")];
    let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &auth, body).await;
    assert_eq!(status, 429, "a call that cannot fit the limit is refused");
    assert_eq!(header(&headers, "x-tracegate-error"), "rate_limited");
    let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &auth, CHAT).await;
    assert_eq!(status, 200, "the team's ordinary calls still go through");
}

/// An upstream reporting `prompt_tokens: 18446744073709551615` made the recorder's sum of a
/// limited team's tokens overflow when it settled the reservation (outside span building): in
/// debug builds the recorder thread died. The sum saturates now; later calls are recorded.
#[tokio::test]
async fn reported_tokens_near_u64_max_overflowed_the_settlement() {
    let upstream = Scripted::start(|_| {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u64::MAX, "completion_tokens": 1, "total_tokens": u64::MAX},
        });
        http::Response::builder().header("content-type", "application/json").body(full(body.to_string())).unwrap()
    })
    .await;
    let proxy = Proxy::start(&limited_team(upstream.addr, "requests_per_minute = 1000")).await;
    let auth = [("authorization", "Bearer tk-search-0001")];
    for _ in 0..2 {
        let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &auth, CHAT).await;
        assert_eq!(status, 200);
        let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
        assert_eq!(span["input_tokens"], u64::MAX);
    }
    assert_eq!(metric(&proxy.admin_url(""), "tracegate_spans_recorded_total").await, 2.0);
}

/// A plain-HTTP upstream that sent two SSE chunks of a chunked stream and then closed the
/// socket without the last chunk: the client got the first chunk only. hyper's server drops
/// what it buffered when the body it relays fails, and both chunks came in one read with the
/// end of the connection. Everything the upstream sent now reaches the client before the cut.
#[tokio::test]
async fn an_upstream_dying_mid_stream_lost_the_last_chunk_it_sent() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FIRST: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n";
    const SECOND: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n";
    let addr = raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let mut answer =
            String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        for chunk in [FIRST, SECOND] {
            answer.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        let _ = stream.write_all(answer.as_bytes()).await; // and close: no `0\r\n\r\n`
    })
    .await;
    let proxy = Proxy::start(&provider("openai", "/openai", addr, "openai")).await;
    let request = http::Request::post(proxy.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(CHAT_STREAM.as_bytes())))
        .unwrap();
    let response = send(request).await;
    let trace_id = header(response.headers(), "x-tracegate-trace-id").to_string();
    let mut body = response.into_body();
    let (mut received, mut cut) = (Vec::new(), false);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert_eq!(String::from_utf8_lossy(&received), format!("{FIRST}{SECOND}"), "every byte the upstream sent");
    assert!(cut, "the client's stream is cut, not ended as if complete");
    let span = proxy.wait_spans(&trace_id, 1).await.remove(0);
    assert_eq!(span["status"], "error");
    let path = format!("/api/traces/{trace_id}/spans/{}", span["span_id"].as_str().unwrap());
    let (_, detail) = proxy.admin_get(&path).await;
    assert!(detail["response_body"].as_str().unwrap().contains(" world"), "{}", detail["response_body"]);
}

/// With `tokens_per_minute` below ~4,100 every call without `max_tokens` was refused, even the
/// first of an empty window: its reservation assumed 4,096 output tokens. Now such a call
/// reserves at most what the window has left, calls are refused once the window is used up,
/// and a call whose `max_tokens` alone cannot fit is refused at once.
#[tokio::test]
async fn a_small_tokens_per_minute_refused_every_call_without_max_tokens() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&limited_team(mock.addr, "tokens_per_minute = 60")).await;
    let auth = [("authorization", "Bearer tk-search-0001")];
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _, _) = post(&proxy.url("/openai/v1/chat/completions"), &auth, CHAT).await;
        statuses.push(status);
        proxy.server().flush().await; // the recorder settles each call with its real 23 tokens
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "23 tokens a call: three fit in 60, then the window is used up");
    let proxy = Proxy::start(&limited_team(mock.addr, "tokens_per_minute = 60")).await;
    let capped = r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &auth, capped).await;
    assert_eq!((status, header(&headers, "x-tracegate-error")), (429, "rate_limited"), "100 tokens cannot fit 60");
}

/// `kill -HUP` (a closed terminal, a supervisor's polite stop) killed `serve` on the spot: a call
/// answered just before it was missing after a restart. SIGHUP and SIGINT now shut down as
/// SIGTERM does: drain, flush, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_killed_serve_without_flushing_answered_calls() {
    let mock = Mock::start(Duration::ZERO).await;
    for (name, signal) in [("SIGHUP", libc::SIGHUP), ("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        let dir = tempfile::tempdir().unwrap();
        let (config, proxy_port, admin_port) =
            binary_config(dir.path(), &provider("openai", "/openai", mock.addr, "openai"));
        let mut binary = Binary::start(&config, admin_port, &[], None).await;
        let url = format!("http://127.0.0.1:{proxy_port}/openai/v1/chat/completions");
        let (status, headers, _) = post(&url, &[], CHAT).await;
        assert_eq!(status, 200);
        let trace = header(&headers, "x-tracegate-trace-id").to_string();
        // SAFETY: kill(2) on our own child process touches no memory of ours.
        assert_eq!(unsafe { libc::kill(binary.0.id() as i32, signal) }, 0);
        let exit = binary.0.wait().unwrap();
        assert!(exit.success(), "{name}: serve exited with {exit}");

        let _restarted = Binary::start(&config, admin_port, &[], None).await;
        let (status, _, _) = get(&format!("http://127.0.0.1:{admin_port}/api/traces/{trace}")).await;
        assert_eq!(status, 200, "{name}: the call answered before the signal was lost");
    }
}

/// `/api/traces?user=nobody` answered every trace: a filter the API did not know was ignored,
/// so the answer looked like a match. Unknown parameters now get 400 naming the accepted ones,
/// and `user` is a filter (issue "Find any call, however old"): nobody's calls are none.
#[tokio::test]
async fn an_unknown_filter_was_ignored_and_listed_every_trace() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    let (status, body) = proxy.admin_get("/api/traces?colour=blue").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"colour\"") && message.contains("team, user, model"), "{message}");
    let (status, body) = proxy.admin_get("/api/traces?user=nobody").await;
    assert_eq!((status, body["traces"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    let (status, _) = proxy.admin_get("/api/usage?group=team").await;
    assert_eq!(status, 400);
    let (status, listed) = proxy.admin_get("/api/traces?team=&limit=10").await;
    assert_eq!(
        (status, listed["traces"].as_array().map(Vec::len)),
        (200, Some(1)),
        "an empty filter still filters nothing"
    );
}

/// The Dockerfile's build stage never copied `vendor/`, from which Cargo.toml patches sled, so
/// `docker build` failed at once. No Docker engine runs here: this assembles exactly the build
/// stage's context (its `COPY` lines, minus `.dockerignore`) in a temporary directory and runs
/// the stage's cargo command there, as `cargo check` (same manifest, lock file and sources; the
/// release build itself would add minutes) offline, on a target directory kept between runs.
#[test]
fn the_docker_build_context_lacked_the_vendored_sled() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    let ignored: Vec<String> = std::fs::read_to_string(repo.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let context = tempfile::tempdir().unwrap();
    let mut cargo_command = None;
    // The build stage: from the first FROM to the next.
    for line in dockerfile.lines().skip_while(|l| !l.starts_with("FROM")).skip(1).take_while(|l| !l.starts_with("FROM"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["COPY", sources @ .., destination] if !sources.iter().any(|s| s.starts_with("--")) => {
                for source in sources {
                    let target = if destination.ends_with('/') || sources.len() > 1 {
                        context.path().join(destination).join(source)
                    } else {
                        context.path().join(destination)
                    };
                    copy_into(&repo.join(source), &target, source, &ignored);
                }
            }
            ["RUN", "cargo", rest @ ..] => {
                let command: Vec<&str> = rest.iter().copied().take_while(|w| *w != "&&").collect();
                cargo_command = Some(command.iter().map(|w| w.to_string()).collect::<Vec<_>>());
            }
            _ => {}
        }
    }
    let mut args = cargo_command.expect("the build stage runs cargo");
    assert_eq!(args[0], "build", "the build stage's cargo command: {args:?}");
    args[0] = "check".into();
    args.retain(|a| a != "--release");
    let output = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .arg("--offline")
        .arg("--quiet")
        .current_dir(context.path())
        .env("CARGO_TARGET_DIR", repo.join("target").join("docker-context"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo {args:?} on the Dockerfile's context:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copies `from` (a file or a folder) to `to`, leaving out what `.dockerignore` names.
fn copy_into(from: &std::path::Path, to: &std::path::Path, relative: &str, ignored: &[String]) {
    if ignored.iter().any(|i| relative == i.trim_end_matches('/')) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_string_lossy();
            copy_into(&from.join(&*name), &to.join(&*name), &format!("{relative}/{name}"), ignored);
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("COPY {}: {e}", from.display()));
    }
}

/// A second `serve` on the same store said `could not acquire lock on "…/db": Os { code: 11,
/// kind: WouldBlock … }`. It now says another process holds the store, at which path, and what
/// to do.
#[tokio::test]
async fn a_second_serve_on_the_same_store_spoke_of_wouldblock() {
    let dir = std::sync::Arc::new(tempfile::TempDir::new().unwrap());
    let _first = Proxy::start_in(dir.clone(), "").await;
    let path = dir.path().join("store");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n",
        path.display()
    );
    let config = tracegate::config::Config::from_toml(&text, &|_| None).unwrap();
    let Err(error) = tracegate::server::Server::start(config).await else { panic!("two servers on one store") };
    let message = error.to_string();
    assert!(message.contains("another process holds this store"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!message.contains("WouldBlock"), "{message}");
}

/// `tracegate traces` with no server running said `client error (Connect)`. It now says that no
/// tracegate answers at which address, and how to start one.
#[tokio::test]
async fn the_cli_without_a_server_said_client_error_connect() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let target = tracegate::cli::AdminTarget { url: Some(url.clone()), config: None };
    let message = tracegate::cli::traces(10, &Default::default(), &target).await.unwrap_err();
    assert!(message.contains(&format!("no tracegate answers at {url}")), "{message}");
    assert!(message.contains("tracegate serve"), "{message}");
    assert!(!message.contains("client error"), "{message}");
}

/// A config with a TOML syntax error said `invalid TOML: <message>` with no place to look. It
/// now names the line and column.
#[test]
fn invalid_toml_gave_no_line_or_column() {
    // An unquoted address: `127.0` reads as a number, and the parser stops at the next dot.
    let text = "[server]\nlisten = \"127.0.0.1:8787\"\nadmin_listen = 127.0.0.1:8788\n";
    let error = tracegate::config::Config::from_toml(text, &|_| None).unwrap_err().to_string();
    assert!(error.contains("invalid TOML at line 3, column 21"), "{error}");
}

/// A path under no configured prefix got a 404 that suggested `/openai/v1/...` whatever the
/// config said. It now lists the prefixes that are configured.
#[tokio::test]
async fn an_unknown_route_did_not_say_which_prefixes_exist() {
    let mock = Mock::start(Duration::ZERO).await;
    let providers = format!(
        "{}{}",
        provider("local", "/local", mock.addr, "openai"),
        provider("claude", "/claude", mock.addr, "anthropic")
    );
    let proxy = Proxy::start(&providers).await;
    let (status, _, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(status, 404);
    let error: Value = serde_json::from_slice(&body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("the configured prefixes are /claude, /local"), "{message}");
}

/// Start-up did not say which config file it had loaded, so a user editing the wrong file
/// could not tell. The start-up line now names the config file (or the built-in defaults) and
/// the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_did_not_say_which_config_it_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, admin_port) = binary_config(dir.path(), "");
    let log = dir.path().join("serve.log");
    let _binary = Binary::start(&config, admin_port, &[("RUST_LOG", "info")], Some(&log)).await;
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("tracegate listening") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let line =
        text.lines().find(|l| l.contains("tracegate listening")).unwrap_or_else(|| panic!("no start-up line: {text}"));
    assert!(line.contains(&format!("config={}", config.display())), "{line}");
    assert!(line.contains(&format!("store={}", dir.path().join("store").display())), "{line}");
}

/// `server.listen = "localhost:8787"` was refused as "not an address". Host names are resolved
/// now; a name that does not resolve, or no port, is still an error naming the field.
#[tokio::test]
async fn a_listen_address_by_host_name_was_refused() {
    let text = "[server]\nlisten = \"localhost:0\"\nadmin_listen = \"localhost:0\"\n";
    let config = tracegate::config::Config::from_toml(text, &|_| None).expect("host names are accepted");
    assert!(config.server.listen.ip().is_loopback(), "{}", config.server.listen);
    for bad in ["localhost", "localhost:http", ":8787"] {
        let text = format!("[server]\nlisten = \"{bad}\"\n");
        let error = tracegate::config::Config::from_toml(&text, &|_| None).unwrap_err().to_string();
        assert!(error.starts_with("server.listen: "), "{bad}: {error}");
    }
}

/// A 5 MB chat completion — longer than `storage.max_capture_bytes` (1 MiB), its `usage` at the
/// end as usual — was recorded with `estimated` tokens, 0 of them output: the budget and the
/// ledger saw it as nearly free. The usage is now read from the capture's tail.
#[tokio::test]
async fn a_response_longer_than_the_capture_lost_its_reported_usage() {
    let upstream = Scripted::start(|_| {
        let body = json!({
            "id": "chatcmpl-big", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(1_000_000)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 31, "completion_tokens": 1_000_000, "total_tokens": 1_000_031},
        });
        http::Response::builder().header("content-type", "application/json").body(full(body.to_string())).unwrap()
    })
    .await;
    let proxy = Proxy::start(&provider("openai", "/openai", upstream.addr, "openai")).await;
    let (status, headers, body) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert_eq!((status, body.len() > 5_000_000), (200, true));
    let span = proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0);
    assert_eq!(span["usage_source"], "reported");
    assert_eq!((span["input_tokens"].as_u64(), span["output_tokens"].as_u64()), (Some(31), Some(1_000_000)));
}

/// The W3C `random` trace flag (0x02) of an incoming `traceparent` was dropped on the way
/// upstream, and new traces did not set it though their ids are random (Trace Context
/// Level 2). Both are kept now.
#[tokio::test]
async fn the_random_trace_flag_was_dropped_on_the_way_upstream() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let caller = "00-12345678901234567890123456789012-1234567890123456-02";
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[("traceparent", caller)], CHAT).await;
    let span_id = header(&headers, "x-tracegate-span-id");
    let sent = upstream_saw(&headers)["traceparent"].as_str().unwrap().to_string();
    assert_eq!(sent, format!("00-12345678901234567890123456789012-{span_id}-02"), "not sampled, random");
    let (_, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    assert!(upstream_saw(&headers)["traceparent"].as_str().unwrap().ends_with("-03"), "a new trace: sampled, random");
}

/// A `tracestate` with a repeated key, or with a key of the current grammar (`foo@`, `foo@@bar`,
/// a leading digit) that the older `tenant@system` grammar refused, was dropped whole: the
/// other vendors' entries were lost. The later duplicate alone is dropped now, and such keys
/// pass.
#[tokio::test]
async fn a_tracestate_with_a_repeated_or_new_grammar_key_was_dropped_whole() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let traceparent = ("traceparent", "00-12345678901234567890123456789012-1234567890123456-01");
    for (sent, expected) in [
        ("rojo=1,congo=2,rojo=3", "rojo=1,congo=2"),
        ("foo@=1,foo@@bar=2,1tenant@9sys=3,bar=4", "foo@=1,foo@@bar=2,1tenant@9sys=3,bar=4"),
    ] {
        let (_, headers, _) =
            post(&proxy.url("/openai/v1/chat/completions"), &[traceparent, ("tracestate", sent)], CHAT).await;
        assert_eq!(upstream_saw(&headers)["tracestate"], expected, "{sent}");
    }
}

/// A config without `[pricing]` priced nothing: every `cost_usd` was null and a team's daily
/// budget never bound, however much it spent. The built-in catalog prices gpt-4o-mini now, so
/// the span has a cost and the budget refuses once it is spent.
#[tokio::test]
async fn a_config_without_pricing_priced_nothing_and_budgets_never_bound() {
    let mock = Mock::start(Duration::ZERO).await;
    // Each call costs ~1e-5 USD at the catalog's gpt-4o-mini price; the budget holds a few.
    let proxy = Proxy::start(&limited_team(mock.addr, "daily_budget_usd = 0.00004")).await;
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"Say hello to the tests"}]}"#;
    let key = [("authorization", "Bearer tk-search-0001")];
    let mut statuses = Vec::new();
    let mut first_span = None;
    for _ in 0..12 {
        let (status, headers, _) = post(&proxy.url("/openai/v1/chat/completions"), &key, body).await;
        if status == 200 && first_span.is_none() {
            first_span = Some(proxy.spans(header(&headers, "x-tracegate-trace-id")).await.remove(0));
        }
        statuses.push(status);
    }
    let span = first_span.expect("the first call goes through");
    let cost = span["cost_usd"].as_f64().unwrap_or_else(|| panic!("no cost without [pricing]: {span}"));
    let expected =
        (span["input_tokens"].as_f64().unwrap() * 0.15 + span["output_tokens"].as_f64().unwrap() * 0.60) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert!(statuses.contains(&429), "the budget binds: {statuses:?}");
    assert_eq!(statuses[0], 200);
}

/// The CLI's hand-made parser answered `tracegate serve --help` with `--help needs a value`
/// (status 2), and `-h`, `--version`, `-V` with "unknown command". They print help or the
/// version now (status 0), `-n` is `--limit`, and an error is one line naming the problem.
#[test]
fn cli_help_said_help_needs_a_value() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_tracegate")).args(args).output().unwrap();
    for args in
        [&["serve", "--help"][..], &["serve", "-h"], &["usage", "--help"], &["--help"], &["-h"], &["help", "traces"]]
    {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("Usage: tracegate"), "{args:?}: {stdout}");
    }
    assert!(String::from_utf8_lossy(&run(&["traces", "--help"]).stdout).contains("-n, --limit <N>"));
    for args in [&["--version"][..], &["-V"]] {
        let out = run(args);
        assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).trim()), (Some(0), "tracegate 0.1.0"));
    }
    let out = run(&["traces", "-n", "zero"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.starts_with("error: invalid value 'zero' for '--limit <N>'"), "{stderr}");
    assert!(!stderr.contains("check-config"), "no dump of every command: {stderr}");
}

/// `tracegate prices | head` (any reader that stops early) made the CLI panic with "failed
/// printing to stdout: Broken pipe". The output now just ends.
#[test]
fn cli_panicked_when_its_reader_closed_the_pipe() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracegate"))
        .args(["prices", "--config", "/dev/null"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status:?} {stderr}");
}

/// A model name with a newline broke the `usage` table's lines; `--by day,team,model` printed
/// the columns in alphabetical order (day, model, team); and the CSV ended with a TOTAL row
/// that spreadsheets read as data. Control characters are escaped now, the columns come as
/// asked, and the CSV is header + data.
#[tokio::test]
async fn usage_table_broke_on_a_model_name_with_a_newline_and_lost_the_asked_column_order() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&limited_team(mock.addr, "")).await;
    let body = r#"{"model":"evil\nmodel","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("authorization", "Bearer tk-search-0001")], body).await;
    assert_eq!(status, 200);
    proxy.server().flush().await;
    let target = tracegate::cli::AdminTarget { url: Some(proxy.admin_url("")), config: None };
    let mut query =
        tracegate::cli::UsageQuery { by: ["day", "team", "model"].map(String::from).to_vec(), ..Default::default() };
    let table = tracegate::cli::usage(&query, &target).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "header, one row, TOTAL: {table}");
    assert!(lines[0].starts_with("day         team    model"), "{table}");
    assert!(lines[1].contains("search  evil\\nmodel"), "{table}");
    query.csv = true;
    let csv = tracegate::cli::usage(&query, &target).await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("day,team,model,requests"), "{csv}");
    assert!(!csv.contains("TOTAL"), "{csv}");
}

/// `mock-llm` ignored `response_format` (chat) and `text.format` (Responses API) and answered
/// its sentence, so the OpenAI SDK's structured-output helpers (`chat.completions.parse`,
/// `responses.parse`, and their streaming twins) failed offline: the sentence is not JSON. It
/// now answers JSON that fits the schema the SDK derived from a Pydantic model (nested model,
/// list, enum, `Literal`, optional, int/float/bool), streamed piece by piece, with usage that
/// counts those pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_llm_answers_structured_output_requests_with_schema_fitting_json() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let seen = sdk_script("structured_output.py", vec![proxy.url("")]).await;

    let chat = &seen["chat"];
    let ticket = &chat["value"];
    assert_eq!(ticket["priority"], "low", "an enum answers its first value: {ticket}");
    assert_eq!(ticket["kind"], "bug", "a Literal answers its first value: {ticket}");
    assert!(ticket["title"].as_str().is_some_and(|s| !s.is_empty()), "{ticket}");
    assert!(ticket["address"]["city"].is_string() && ticket["history"][0]["street"].is_string(), "{ticket}");
    assert!(ticket["tags"].as_array().is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_string)), "{ticket}");
    assert!(ticket["assignee"].is_string(), "an optional field gets a value, not null: {ticket}");
    let types = json!({
        "title": "str", "count": "int", "score": "float", "urgent": "bool", "priority": "Priority",
        "kind": "str", "tags": "list", "address": "Address", "history": "list", "assignee": "str",
    });
    for helper in ["chat", "chat_stream", "responses", "responses_stream"] {
        assert_eq!(seen[helper]["types"], types, "{helper}: the SDK parsed every field with its type");
        assert_eq!(seen[helper]["value"], *ticket, "{helper}: the same deterministic answer");
        assert!(seen[helper]["input_tokens"].as_u64().is_some_and(|n| n > 0), "{helper}");
    }
    let pieces = chat["output_tokens"].as_u64().unwrap();
    assert!(pieces > 10, "one output token per streamed piece of the JSON: {pieces}");
    for helper in ["chat_stream", "responses", "responses_stream"] {
        assert_eq!(seen[helper]["output_tokens"], pieces, "{helper}: usage counts the same pieces");
    }
    assert_eq!(seen["chat_stream"]["chunks"], pieces, "the JSON streams in as many chunks as output tokens");
    assert_eq!(seen["responses_stream"]["chunks"], pieces);
    assert_eq!(seen["chat_stream"]["content"], chat["content"], "the streamed text is the whole JSON");
    assert!(seen["json_object"].is_object(), "json_object mode answers an object: {}", seen["json_object"]);
}

/// Sends one OTLP/JSON export request with these spans (resource `service.name` = `agent-app`)
/// to the admin listener's `/v1/traces`.
async fn ingest(proxy: &Proxy, spans: Value) {
    let request = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent-app"}}]},
        "scopeSpans": [{"spans": spans}]}]});
    let (status, _, body) = post(&proxy.admin_url("/v1/traces"), &[], &request.to_string()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// An ingested span's OpenTelemetry SpanKind (client, server, ...) was dropped: every span
/// became `kind = "app"` with nothing else to tell a server span from a client call. `kind`
/// stays `app` (SPEC); the OpenTelemetry kind is kept in `span_kind` now.
#[tokio::test]
async fn ingested_span_keeps_its_otel_span_kind() {
    let proxy = Proxy::start("").await;
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let span = |id: &str, kind: u8| {
        json!({"traceId": trace, "spanId": id, "name": format!("kind {kind}"), "kind": kind,
            "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000100000000"})
    };
    ingest(&proxy, json!([span("1000000000000001", 2), span("1000000000000002", 3), span("1000000000000003", 0)]))
        .await;
    let spans = proxy.wait_spans(trace, 3).await;
    let kinds: Vec<(&str, &Value, &Value)> =
        spans.iter().map(|s| (s["span_id"].as_str().unwrap(), &s["kind"], &s["span_kind"])).collect();
    assert_eq!(
        kinds,
        [
            ("1000000000000001", &json!("app"), &json!("server")),
            ("1000000000000002", &json!("app"), &json!("client")),
            ("1000000000000003", &json!("app"), &Value::Null),
        ]
    );
}

/// A GenAI span an app exported (OpenTelemetry's openai instrumentation: `gen_ai.usage.*`,
/// `gen_ai.request.model`, `gen_ai.system`) showed no tokens or model: its numbers sat in
/// properties only. They fill the span's token and model fields now (`reported`), unpriced and
/// not charged to any ledger row, and the trace's totals count the proxied call's tokens
/// once, not again for the app's span that describes the same call.
#[tokio::test]
async fn ingested_genai_span_shows_its_usage_as_tokens() {
    let mock = Mock::start(Duration::ZERO).await;
    let config = format!(
        "{}[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n",
        provider("openai", "/openai", mock.addr, "openai")
    );
    let proxy = Proxy::start(&config).await;
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "2000000000000001";
    let (_, headers, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("traceparent", &format!("00-{trace}-{app_span}-01"))], CHAT)
            .await;
    let llm_span = header(&headers, "x-tracegate-span-id").to_string();
    let int = |n: u64| json!({"intValue": n.to_string()});
    let text = |s: &str| json!({"stringValue": s});
    ingest(
        &proxy,
        json!([{"traceId": trace, "spanId": app_span, "name": "chat gpt-4o-mini", "kind": 3,
        "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000900000000",
        "attributes": [
            {"key": "gen_ai.system", "value": text("openai")},
            {"key": "gen_ai.operation.name", "value": text("chat")},
            {"key": "gen_ai.request.model", "value": text("gpt-4o-mini")},
            {"key": "gen_ai.response.model", "value": text("gpt-4o-mini-2024-07-18")},
            {"key": "gen_ai.usage.input_tokens", "value": int(120)},
            {"key": "gen_ai.usage.output_tokens", "value": int(30)},
            {"key": "gen_ai.usage.cache_read.input_tokens", "value": int(100)},
            {"key": "gen_ai.usage.reasoning.output_tokens", "value": int(10)},
        ]}]),
    )
    .await;
    let spans = proxy.wait_spans(trace, 2).await;
    let app = spans.iter().find(|s| s["span_id"] == app_span).unwrap();
    let llm = spans.iter().find(|s| s["span_id"] == llm_span.as_str()).unwrap();
    assert_eq!(app["kind"], "app");
    assert_eq!((app["input_tokens"].as_u64(), app["output_tokens"].as_u64()), (Some(120), Some(30)));
    assert_eq!((app["cache_read_input_tokens"].as_u64(), app["reasoning_tokens"].as_u64()), (Some(100), Some(10)));
    assert_eq!(app["usage_source"], "reported");
    assert_eq!(
        (&app["provider"], &app["operation"], &app["request_model"], &app["response_model"]),
        (&json!("openai"), &json!("chat"), &json!("gpt-4o-mini"), &json!("gpt-4o-mini-2024-07-18"))
    );
    assert_eq!(app["properties"]["gen_ai.usage.input_tokens"], "120", "attributes stay properties too");
    assert_eq!(app["cost_usd"], Value::Null, "an ingested span is not priced");

    // The trace's totals and the usage ledger count the proxied call only.
    let (_, listing) = proxy.admin_get("/api/traces").await;
    let summary = listing["traces"].as_array().unwrap().iter().find(|t| t["trace_id"] == trace).unwrap().clone();
    assert_eq!(
        (summary["input_tokens"].as_u64(), summary["output_tokens"].as_u64()),
        (llm["input_tokens"].as_u64(), llm["output_tokens"].as_u64())
    );
    assert_eq!(summary["cost_usd"], llm["cost_usd"]);
    let (_, usage) = proxy.admin_get("/api/usage?group_by=model").await;
    assert_eq!(usage["totals"]["requests"], 1, "{usage}");
    assert_eq!(usage["totals"]["input_tokens"], llm["input_tokens"], "{usage}");
}

/// Array attributes of ingested spans were flattened to `[a,b]`: `["stop","a,b"]` became
/// `[stop,a,b]`, the same text as three values. Arrays and maps are JSON text now; a scalar
/// string stays as it is.
#[tokio::test]
async fn ingested_array_attribute_was_flattened_ambiguously() {
    let proxy = Proxy::start("").await;
    let trace = "8bf92f3577b34da6a3ce929d0e0e4736";
    let strings =
        |v: &[&str]| json!({"arrayValue": {"values": v.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()}});
    ingest(
        &proxy,
        json!([{"traceId": trace, "spanId": "3000000000000001", "name": "step",
            "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000100000000",
            "attributes": [
                {"key": "gen_ai.response.finish_reasons", "value": strings(&["stop", "a,b"])},
                {"key": "three", "value": strings(&["stop", "a", "b"])},
                {"key": "mixed", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"boolValue": true}, {"doubleValue": 0.5}]}}},
                {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v=1,x"}}]}}},
                {"key": "plain", "value": {"stringValue": "[not json"}},
            ]}]),
    )
    .await;
    let span = proxy.wait_spans(trace, 1).await.remove(0);
    let p = &span["properties"];
    assert_eq!(p["gen_ai.response.finish_reasons"], r#"["stop","a,b"]"#);
    assert_eq!(p["three"], r#"["stop","a","b"]"#);
    assert_eq!(p["mixed"], "[1,true,0.5]");
    assert_eq!(p["map"], r#"{"k":"v=1,x"}"#);
    assert_eq!(p["plain"], "[not json");
}

/// Span events of ingested spans were dropped, `exception` events too: a failed span whose
/// status carried no message said only `error`. Events are kept now (bounded), and an
/// exception event gives the error its `exception.type: exception.message`.
#[tokio::test]
async fn ingested_exception_event_was_dropped() {
    let proxy = Proxy::start("").await;
    let trace = "9cf92f3577b34da6a3ce929d0e0e4736";
    let text = |s: &str| json!({"stringValue": s});
    ingest(
        &proxy,
        json!([{"traceId": trace, "spanId": "4000000000000001", "name": "tool call",
            "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000100000000",
            "status": {"code": 2},
            "events": [
                {"name": "retry", "timeUnixNano": "1795000000010000000", "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]},
                {"name": "exception", "timeUnixNano": "1795000000090000000", "attributes": [
                    {"key": "exception.type", "value": text("ValueError")},
                    {"key": "exception.message", "value": text("no such city")},
                    {"key": "exception.stacktrace", "value": text(&"frame\n".repeat(10_000))},
                ]},
            ]}]),
    )
    .await;
    let span = proxy.wait_spans(trace, 1).await.remove(0);
    assert_eq!((&span["status"], &span["error"]), (&json!("error"), &json!("ValueError: no such city")));
    let events = span["events"].as_array().expect("events are kept");
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0],
        json!({"name": "retry", "time_unix_nano": 1_795_000_000_010_000_000u64, "attributes": {"attempt": "2"}})
    );
    assert_eq!(
        (&events[1]["name"], &events[1]["attributes"]["exception.type"]),
        (&json!("exception"), &json!("ValueError"))
    );
    let stack = events[1]["attributes"]["exception.stacktrace"].as_str().unwrap();
    assert!(stack.starts_with("frame\n") && stack.len() < 10_000, "a long attribute is cut: {} bytes", stack.len());
}
