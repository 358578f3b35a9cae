//! Export and ingest: spans reach OTLP and Zipkin collectors exactly once through outages and
//! restarts (decoded by the `opentelemetry-proto` crate, not by tracegate), and spans that an
//! app exports to tracegate join the LLM spans of the same trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;
use serde_json::Value;

use crate::support::*;

/// A collector that answers 503 while `failing` > 0 (counting down) or `down` is set, and
/// decodes what it accepts with the `opentelemetry-proto` crate.
struct Collector {
    upstream: Scripted,
    spans: Arc<Mutex<Vec<(OtlpSpan, String)>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Collector {
    async fn start(failing: usize) -> Collector {
        let spans: Arc<Mutex<Vec<(OtlpSpan, String)>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::new(AtomicUsize::new(failing));
        let (log, is_down) = (spans.clone(), down.clone());
        let upstream = Scripted::start(move |req| {
            if is_down.load(Ordering::SeqCst)
                || failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            {
                return http::Response::builder().status(503).body(full("overloaded")).unwrap();
            }
            let mut body = req.body.to_vec();
            if header(&req.headers, "content-encoding") == "gzip" {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).unwrap();
                body = out;
            }
            let request: ExportTraceServiceRequest = if header(&req.headers, "content-type") == "application/json" {
                serde_json::from_slice(&body).expect("OTLP JSON decodes")
            } else {
                ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf decodes")
            };
            for rs in request.resource_spans {
                let service = rs.resource.unwrap().attributes.into_iter().find(|a| a.key == "service.name").unwrap();
                let service = text_of(service.value.as_ref().unwrap());
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        log.lock().unwrap().push((span, service.clone()));
                    }
                }
            }
            http::Response::builder().header("content-type", "application/x-protobuf").body(full(Bytes::new())).unwrap()
        })
        .await;
        Collector { upstream, spans, down }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.upstream.addr)
    }

    /// Waits (bounded) until `n` spans arrived; returns them by span id (hex).
    async fn wait_for(&self, n: usize) -> HashMap<String, (OtlpSpan, String)> {
        for _ in 0..400 {
            if self.spans.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let spans = self.spans.lock().unwrap().clone();
        assert_eq!(spans.len(), n, "the collector received {} spans, expected {n}", spans.len());
        let by_id: HashMap<String, (OtlpSpan, String)> =
            spans.into_iter().map(|(s, svc)| (hex(&s.span_id), (s, svc))).collect();
        assert_eq!(by_id.len(), n, "a span arrived twice");
        by_id
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_of(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(text_of).collect::<Vec<_>>().join(","),
        _ => String::new(),
    }
}

fn attr(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).map(text_of)
}

fn export_config(mock: &Mock, export: &str) -> String {
    format!("{}[export]\n{export}", provider("openai", "/openai", mock.addr, "openai"))
}

#[tokio::test]
async fn otlp_export_carries_ids_times_and_genai_attributes() {
    let mock = Mock::start(Duration::from_millis(1)).await;
    let collector = Collector::start(0).await;
    let proxy = Proxy::start(&export_config(&mock, &format!("otlp_endpoint = \"{}\"\n", collector.url()))).await;
    let caller = "00f067aa0ba902b7";
    let traceparent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{caller}-01");
    let mut ids = Vec::new();
    for body in [CHAT, CHAT_STREAM_USAGE, CHAT_STREAM] {
        let (_, headers, _) =
            post(&proxy.url("/openai/v1/chat/completions"), &[("traceparent", &traceparent)], body).await;
        ids.push(header(&headers, "x-tracegate-span-id").to_string());
    }
    let received = collector.wait_for(3).await;
    let stored = proxy.spans("4bf92f3577b34da6a3ce929d0e0e4736").await;
    for stored_span in &stored {
        let id = stored_span["span_id"].as_str().unwrap();
        assert!(ids.contains(&id.to_string()));
        let (span, service) = &received[id];
        assert_eq!(service, "tracegate");
        assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&span.parent_span_id), caller);
        assert_eq!(span.name, "chat gpt-4o-mini");
        assert_eq!(span.kind, 3, "CLIENT");
        assert_eq!(span.start_time_unix_nano, stored_span["start_time_unix_nano"].as_u64().unwrap());
        let duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
        assert!((duration_ms - stored_span["duration_ms"].as_f64().unwrap()).abs() < 0.01);
        assert_eq!(attr(span, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert_eq!(attr(span, "gen_ai.provider.name").as_deref(), Some("openai"));
        assert_eq!(attr(span, "gen_ai.request.model").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(attr(span, "gen_ai.response.model").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(
            attr(span, "gen_ai.usage.input_tokens"),
            stored_span["input_tokens"].as_u64().map(|n| n.to_string())
        );
        assert_eq!(
            attr(span, "gen_ai.usage.output_tokens"),
            stored_span["output_tokens"].as_u64().map(|n| n.to_string())
        );
        assert_eq!(attr(span, "gen_ai.response.finish_reasons").as_deref(), Some("stop"));
        assert_eq!(attr(span, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(span, "tracegate.usage_source").as_deref(), stored_span["usage_source"].as_str());
        assert_eq!(attr(span, "gen_ai.response.time_to_first_chunk").is_some(), stored_span["stream"] == true);
    }
    let (_, metrics) = proxy.admin_get("/healthz").await;
    assert_eq!(metrics["status"], "ok");
}

#[tokio::test]
async fn a_collector_answering_503_twice_gets_everything_exactly_once() {
    let mock = Mock::start(Duration::ZERO).await;
    let collector = Collector::start(2).await;
    let proxy = Proxy::start(&export_config(&mock, &format!("otlp_endpoint = \"{}\"\n", collector.url()))).await;
    for _ in 0..10 {
        post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    }
    collector.wait_for(10).await;
    assert!(collector.upstream.requests().len() >= 3, "two refusals, then delivery");
    tokio::time::sleep(Duration::from_millis(600)).await; // room for a duplicate to show up
    assert_eq!(collector.spans.lock().unwrap().len(), 10);
    let text = metrics_text(&proxy).await;
    assert!(text.contains("tracegate_export_sent_spans_total{exporter=\"otlp\"} 10"), "{text}");
    assert!(text.contains("tracegate_export_retries_total{exporter=\"otlp\"} 2"), "{text}");
    assert!(text.contains("tracegate_export_backlog_spans{exporter=\"otlp\"} 0"), "{text}");
}

async fn metrics_text(proxy: &Proxy) -> String {
    let resp =
        send(http::Request::get(proxy.admin_url("/metrics")).body(http_body_util::Full::new(Bytes::new())).unwrap())
            .await;
    String::from_utf8(http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_restart_in_the_middle_of_an_outage_loses_nothing() {
    let mock = Mock::start(Duration::ZERO).await;
    let collector = Collector::start(0).await;
    collector.down.store(true, Ordering::SeqCst);
    let config = export_config(&mock, &format!("otlp_endpoint = \"{}\"\n", collector.url()));
    let proxy = Proxy::start(&config).await;
    for _ in 0..7 {
        post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics_text(&proxy).await;
    assert!(text.contains("tracegate_export_backlog_spans{exporter=\"otlp\"} 7"), "{text}");
    let dir = proxy.shutdown().await;
    assert!(collector.spans.lock().unwrap().is_empty());

    collector.down.store(false, Ordering::SeqCst);
    let proxy = Proxy::start_in(dir, &config).await;
    post(&proxy.url("/openai/v1/chat/completions"), &[], CHAT).await;
    collector.wait_for(8).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(collector.spans.lock().unwrap().len(), 8, "every span once, none twice");
}

#[tokio::test]
async fn otlp_json_without_compression_and_zipkin_are_delivered() {
    let mock = Mock::start(Duration::ZERO).await;
    let collector = Collector::start(0).await;
    let zipkin_spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = zipkin_spans.clone();
    let zipkin = Scripted::start(move |req| {
        // `compression = "none"` holds for every exporter.
        assert_eq!(header(&req.headers, "content-encoding"), "");
        let batch: Vec<Value> = serde_json::from_slice(&req.body).unwrap();
        log.lock().unwrap().extend(batch);
        http::Response::builder().status(202).body(full(Bytes::new())).unwrap()
    })
    .await;
    let export = format!(
        "otlp_endpoint = \"{}\"\notlp_protocol = \"json\"\ncompression = \"none\"\nzipkin_endpoint = \"http://{}/api/v2/spans\"\nservice_name = \"llm-gateway\"\nheaders = {{ authorization = \"Bearer collector-token\" }}\n",
        collector.url(),
        zipkin.addr
    );
    let proxy = Proxy::start(&export_config(&mock, &export)).await;
    let (_, headers, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("x-tracegate-team", "search")], CHAT).await;
    let received = collector.wait_for(1).await;
    let (span, service) = received.values().next().unwrap();
    assert_eq!(service, "llm-gateway");
    assert_eq!(hex(&span.span_id), header(&headers, "x-tracegate-span-id"));
    assert_eq!(attr(span, "tracegate.team").as_deref(), Some("search"));
    assert_eq!(header(&collector.upstream.requests()[0].headers, "authorization"), "Bearer collector-token");
    assert_eq!(header(&collector.upstream.requests()[0].headers, "content-type"), "application/json");

    for _ in 0..200 {
        if !zipkin_spans.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let z = zipkin_spans.lock().unwrap()[0].clone();
    assert_eq!(z["traceId"], header(&headers, "x-tracegate-trace-id"));
    assert_eq!(z["id"], header(&headers, "x-tracegate-span-id"));
    assert_eq!(z["kind"], "CLIENT");
    assert_eq!(z["localEndpoint"]["serviceName"], "llm-gateway");
    assert_eq!(z["tags"]["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(z["tags"]["tracegate.team"], "search");
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

#[tokio::test]
async fn ingested_app_spans_join_the_trace_of_the_llm_call_protobuf_and_json() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "1111111111111111";
    let (_, headers, _) =
        post(&proxy.url("/openai/v1/chat/completions"), &[("traceparent", &format!("00-{trace}-{app_span}-01"))], CHAT)
            .await;
    let llm_span = header(&headers, "x-tracegate-span-id").to_string();

    let span = OtlpSpan {
        trace_id: (0..16).map(|i| u8::from_str_radix(&trace[i * 2..i * 2 + 2], 16).unwrap()).collect(),
        span_id: vec![0x11; 8],
        name: "agent step".into(),
        kind: 1,
        start_time_unix_nano: 1_795_000_000_000_000_000,
        end_time_unix_nano: 1_795_000_000_500_000_000,
        attributes: vec![kv("agent.goal", "say hello")],
        ..Default::default()
    };
    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "agent-app")],
                ..Default::default()
            }),
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans: vec![span.clone()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let resp = send(
        http::Request::post(proxy.admin_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(http_body_util::Full::new(Bytes::from(request.encode_to_vec())))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // The same kind of request as OTLP JSON (hex ids), a child of the first.
    let json = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent-app"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace, "spanId": "2222222222222222", "parentSpanId": app_span, "name": "retrieve",
            "kind": 1, "startTimeUnixNano": "1795000000100000000", "endTimeUnixNano": "1795000000200000000",
            "status": {"code": 2, "message": "index offline"}}]}]}]});
    let (status, _, _) = post(&proxy.admin_url("/v1/traces"), &[], &json.to_string()).await;
    assert_eq!(status, 200);

    let spans = proxy.wait_spans(trace, 3).await;
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap(), s)).collect();
    assert_eq!(by_id[app_span]["kind"], "app");
    assert_eq!(by_id[app_span]["name"], "agent step");
    assert_eq!(by_id[app_span]["properties"]["agent.goal"], "say hello");
    assert_eq!(by_id[app_span]["properties"]["service.name"], "agent-app");
    assert_eq!(by_id["2222222222222222"]["status"], "error");
    assert_eq!(by_id["2222222222222222"]["parent_span_id"], app_span);
    assert_eq!(by_id[llm_span.as_str()]["parent_span_id"], app_span);
    let (_, listing) = proxy.admin_get("/api/traces?limit=5").await;
    let summary = listing["traces"].as_array().unwrap().iter().find(|t| t["trace_id"] == trace).unwrap().clone();
    assert_eq!(summary["root_name"], "agent step", "the app's span is the root");

    let (status, _, _) = post(&proxy.admin_url("/v1/traces"), &[], "{not otlp").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_opentelemetry_python_sdk_join_the_llm_call() {
    let mock = Mock::start(Duration::ZERO).await;
    let proxy = Proxy::start(&provider("openai", "/openai", mock.addr, "openai")).await;
    let ids = sdk_script("otel_app.py", vec![proxy.admin_url(""), proxy.url("")]).await;
    assert_eq!(ids["proxy_trace_id"], ids["trace_id"], "the proxy joined the app's trace");
    let spans = proxy.wait_spans(ids["trace_id"].as_str().unwrap(), 3).await;
    let step = spans.iter().find(|s| s["name"] == "agent step").expect("the app's span was ingested");
    assert_eq!(step["kind"], "app");
    assert_eq!(step["span_id"], ids["step_span_id"]);
    assert_eq!(step["properties"]["service.name"], "agent-app");
    let retrieve = spans.iter().find(|s| s["name"] == "retrieve documents").unwrap();
    assert_eq!(retrieve["parent_span_id"], ids["step_span_id"]);
    let llm = spans.iter().find(|s| s["kind"] == "llm").unwrap();
    assert_eq!(llm["span_id"], ids["proxy_span_id"]);
    assert_eq!(llm["parent_span_id"], ids["step_span_id"], "the LLM call is a child of the agent step");
}
