//! `POST /v1/embeddings` (OpenAI): deterministic vectors from a hash of each input, as floats
//! or base64.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::mock_llm::body::{error_response, json_response, MockBody};
use crate::mock_llm::reply::{model_of, Api};

/// Upper bound for the embedding `dimensions` parameter.
const MAX_EMBEDDING_DIMS: usize = 4096;
/// Embedding size when the request does not ask for `dimensions`.
const DEFAULT_EMBEDDING_DIMS: usize = 8;

/// One embedding input: a text or a token array.
pub(super) enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

/// Splits the `input` of an embeddings request into its items, as the real API does.
pub(super) fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, &'static str> {
    const SHAPE: &str = "'input' must be a string, an array of strings, or an array of token arrays";
    match input {
        Some(Value::String(s)) => Ok(vec![EmbeddingInput::Text(s)]),
        Some(Value::Array(items)) if items.is_empty() => Err("'input' must not be empty"),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => Ok(vec![EmbeddingInput::Tokens(items)]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(EmbeddingInput::Text(s)),
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => Ok(EmbeddingInput::Tokens(tokens)),
                _ => Err(SHAPE),
            })
            .collect(),
        Some(_) => Err(SHAPE),
        None => Err("missing required parameter: 'input'"),
    }
}

/// `POST /v1/embeddings`.
pub(super) fn embeddings(req: &Value) -> Response<MockBody> {
    let inputs = match embedding_inputs(req.get("input")) {
        Ok(inputs) => inputs,
        Err(msg) => return error_response(Api::OpenAi, StatusCode::BAD_REQUEST, msg),
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_EMBEDDING_DIMS, |d| (d as usize).clamp(1, MAX_EMBEDDING_DIMS));
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");

    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let seed = match input {
                EmbeddingInput::Text(text) => {
                    prompt_tokens += text.split_whitespace().count() as u64;
                    fnv1a(text.as_bytes())
                }
                EmbeddingInput::Tokens(tokens) => {
                    prompt_tokens += tokens.len() as u64;
                    let ids: Vec<u8> = tokens.iter().flat_map(|t| t.as_i64().unwrap_or(0).to_le_bytes()).collect();
                    fnv1a(&ids)
                }
            };
            let vector = embedding_vector(seed, dims);
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64_encode(&raw))
            } else {
                Value::Array(vector.iter().map(|&x| json!(f64::from(x))).collect())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();

    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model_of(req),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

/// A deterministic, roughly unit-length vector derived from `seed`. Components are
/// multiples of 1/1024, so they print exactly and survive the f32 base64 round trip.
pub(super) fn embedding_vector(seed: u64, dims: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dims as u64)
        .map(|j| {
            let bits = splitmix64(seed ^ j.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (bits >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    raw.iter().map(|x| ((x / norm) * 1024.0).round() as f32 / 1024.0).collect()
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard base64 (RFC 4648 alphabet, with `=` padding).
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
