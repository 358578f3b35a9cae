//! Token counting throughput (tokens/s) of the estimator the recorder uses when a provider
//! reports no usage, beside a naive baseline that loads the encoding for every call (what a
//! proxy without a shared, lazily loaded tokenizer pays). Run: `cargo bench --bench tokens`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tracegate::formats::providers::{Api, Operation};
use tracegate::formats::tokens::{estimate_input, Encoding};

const PARAGRAPH: &str = "Distributed tracing follows one request through every service it touches, \
recording how long each step took and how the steps nest. For LLM calls that means latency, time \
to first token, tokens and cost per call, grouped by the trace the application already propagates. ";

fn chat_request(paragraphs: usize) -> Vec<u8> {
    let content = PARAGRAPH.repeat(paragraphs);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content},
        ]
    }))
    .unwrap()
}

fn counting(c: &mut Criterion) {
    for (name, encoding) in [("o200k_base", Encoding::O200kBase), ("cl100k_base", Encoding::Cl100kBase)] {
        let text = PARAGRAPH.repeat(20);
        let tokens = encoding.count(&text); // also loads the encoding before timing
        let mut group = c.benchmark_group(format!("count_text/{name}"));
        group.throughput(Throughput::Elements(tokens));
        group.bench_function("shared encoder", |b| b.iter(|| encoding.count(std::hint::black_box(&text))));
        group.sample_size(10);
        group.bench_function("baseline: load per call", |b| {
            b.iter(|| {
                let bpe = match encoding {
                    Encoding::O200kBase => tiktoken_rs::o200k_base().unwrap(),
                    Encoding::Cl100kBase => tiktoken_rs::cl100k_base().unwrap(),
                };
                bpe.encode_ordinary(std::hint::black_box(&text)).len()
            })
        });
        group.finish();
    }

    let request = chat_request(4);
    let tokens = estimate_input(Api::Openai, &Operation::Chat, &request, Encoding::O200kBase).unwrap();
    let mut group = c.benchmark_group("estimate_input/chat request");
    group.throughput(Throughput::Elements(tokens));
    group.bench_function("parse + count", |b| {
        b.iter(|| estimate_input(Api::Openai, &Operation::Chat, std::hint::black_box(&request), Encoding::O200kBase))
    });
    group.finish();
}

criterion_group!(benches, counting);
criterion_main!(benches);
