//! An agent step as the benches that read bodies use it (`#[path]`-included by `pieces` and
//! `recorder`): what an agent loop sends after six tool-call rounds.

/// An agent step as agent loops send it: a long system prompt, three tools, and six rounds of
/// tool calls (arguments are JSON inside strings) and tool results; ~12 KB.
pub fn body(model: &str) -> Vec<u8> {
    let policies: String = (1..=64)
        .map(|i| format!("Policy {i}: when a customer asks about case {i}, check the order status, confirm the address, and explain the refund window.\n"))
        .collect();
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {"name": name, "description": format!("Looks up {name} for an order id, returning status, dates and the carrier's last scan."),
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "description": "The order id, as printed on the receipt."}}, "required": ["order_id"]}}})
    };
    let mut messages = vec![serde_json::json!({"role": "system", "content": policies})];
    for round in 0..6 {
        messages.push(serde_json::json!({"role": "user", "content": format!("Where is my order A-{round}? It was due on Monday and the tracking page says nothing since.")}));
        let arguments =
            serde_json::json!({"order_id": format!("A-{round}"), "fields": ["status", "carrier", "last_scan"]})
                .to_string();
        messages.push(serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{round}"), "type": "function", "function": {"name": "order_status", "arguments": arguments}}]}));
        let result = serde_json::json!({"status": "in transit", "carrier": "DHL", "last_scan": "2026-12-01T10:00:00Z", "note": "Parcel left the sorting centre; the next scan comes at the local depot."}).to_string();
        messages.push(serde_json::json!({"role": "tool", "tool_call_id": format!("call_{round}"), "content": result}));
    }
    serde_json::to_vec(&serde_json::json!({
        "messages": messages,
        "model": model,
        "tools": [tool("order_status"), tool("shipping_address"), tool("refund_window")],
        "temperature": 0.2,
        "stream": true,
        "stream_options": {"include_usage": true},
    }))
    .unwrap()
}
