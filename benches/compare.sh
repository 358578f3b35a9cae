#!/usr/bin/env bash
# Side by side, in one run: the same fake LLM upstream (nginx answering a fixed chat
# completion) reached directly, through nginx as a plain reverse proxy (the floor: a proxy that
# records nothing), and through tracegate with recording on. Quote results as ratios to the
# floor measured in the same run: machines are noisy, ratios much less so.
#
#   benches/compare.sh [TRACEGATE_BINARY]        (default: target/release/tracegate)
#
# Needs nginx and wrk (Debian: apt-get install -y nginx-light wrk). Knobs: SECS (10), CONNS
# (32), WORKLOAD=chat (a small chat call) or agent (a ~12 KB agent step: system prompt, tools,
# six tool-call rounds). The proxies run on CPU 1, the upstream and wrk on CPU 0, so a proxy's
# recorder shares its one core with its request path. Ports 19101-19105 on loopback.
set -euo pipefail
binary=${1:-target/release/tracegate}
secs=${SECS:-10}
conns=${CONNS:-32}
workload=${WORKLOAD:-chat}
for tool in nginx wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "benches/compare.sh needs $tool" >&2; exit 2; }
done
[ -x "$binary" ] || { echo "no tracegate binary at $binary (cargo build --release)" >&2; exit 2; }

dir=$(mktemp -d)
children=()
stop() {
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT

answer='{"id":"chatcmpl-bench","object":"chat.completion","created":1732406400,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Tracing shows where the time of each request goes, call by call."},"finish_reason":"stop"}],"usage":{"prompt_tokens":27,"completion_tokens":15,"total_tokens":42}}'

# nginx in one of two roles, each its own process with its own prefix directory.
nginx_role() { # name cpu server-block
  mkdir -p "$dir/$1/logs"
  cat > "$dir/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/$1/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 1m;
  client_body_temp_path $dir/$1/body;
  proxy_temp_path $dir/$1/proxy;
  $3
}
CONF
  taskset -c "$2" nginx -p "$dir/$1" -c "$dir/$1/nginx.conf" &
  children+=($!)
}
nginx_role upstream 0 "server { listen 127.0.0.1:19101; location / { default_type application/json; return 200 '$answer'; } }"
nginx_role floor 1 "upstream llm { server 127.0.0.1:19101; keepalive 256; }
  server { listen 127.0.0.1:19102; location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"

cat > "$dir/tracegate.toml" <<TOML
[server]
listen = "127.0.0.1:19104"
admin_listen = "127.0.0.1:19105"

[storage]
path = "$dir/store"

[[providers]]
name = "openai"
prefix = "/openai"
upstream = "http://127.0.0.1:19101"
api = "openai"
TOML
taskset -c 1 "$binary" serve --config "$dir/tracegate.toml" 2> "$dir/tracegate.log" &
children+=($!)
proxy_pid=$!

for port in 19101 19102 19104; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# The request body of the workload, and a wrk script that POSTs it.
case "$workload" in
  chat)
    body='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"In one sentence, what does distributed tracing show?"}],"temperature":0.2,"max_tokens":64}'
    ;;
  agent)
    tool='{"type":"function","function":{"name":"search_docs","description":"Search the product documentation and return the most relevant passages with their titles and links.","parameters":{"type":"object","properties":{"query":{"type":"string"},"limit":{"type":"integer"}},"required":["query"]}}}'
    system="You are an operations agent. Use the tools to find facts before you answer. $(printf 'Cite the passage you used and say when the documentation does not cover a question. %.0s' $(seq 20))"
    rounds=""
    for i in 1 2 3 4 5 6; do
      result="$(printf 'Passage %s: the proxy records every call as a span with its latency, tokens and cost. %.0s' "$i" $(seq 30))"
      rounds+=",{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_$i\",\"type\":\"function\",\"function\":{\"name\":\"search_docs\",\"arguments\":\"{\\\"query\\\":\\\"step $i\\\"}\"}}]}"
      rounds+=",{\"role\":\"tool\",\"tool_call_id\":\"call_$i\",\"content\":\"$result\"}"
    done
    body="{\"model\":\"gpt-4o-mini\",\"tools\":[$tool,$tool,$tool],\"messages\":[{\"role\":\"system\",\"content\":\"$system\"},{\"role\":\"user\",\"content\":\"Why did yesterday's batch cost more than usual?\"}$rounds]}"
    ;;
  *) echo "WORKLOAD is chat or agent" >&2; exit 2 ;;
esac
printf '%s' "$body" > "$dir/body.json"
cat > "$dir/post.lua" <<LUA
local f = io.open("$dir/body.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
LUA

to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v / 1000; else if (v ~ /ms$/) printf "%.3f", v + 0; else if (v ~ /s$/) printf "%.3f", v * 1000; else print v }'; }
echo "# workload: $workload ($(wc -c < "$dir/body.json") byte requests), $conns connections, $secs s each"
printf '%-12s %12s %9s %9s %9s %8s\n' target req_per_s vs_floor p50_ms p99_ms non_2xx
floor_rps=""
for target in direct=http://127.0.0.1:19101/v1/chat/completions \
              floor=http://127.0.0.1:19102/v1/chat/completions \
              tracegate=http://127.0.0.1:19104/openai/v1/chat/completions; do
  name=${target%%=*}
  url=${target#*=}
  taskset -c 0 wrk -t1 -c"$conns" -d2s -s "$dir/post.lua" "$url" > /dev/null 2>&1 || true
  result=$(taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" -s "$dir/post.lua" --latency "$url" 2>&1)
  rps=$(awk '/^Requests\/sec/ { print $2 }' <<< "$result")
  p50=$(awk '$1 == "50%" { print $2 }' <<< "$result")
  p99=$(awk '$1 == "99%" { print $2 }' <<< "$result")
  non=$(awk '/Non-2xx/ { print $NF }' <<< "$result")
  [ "$name" = floor ] && floor_rps=$rps
  ratio=$(awk -v r="$rps" -v f="${floor_rps:-0}" 'BEGIN { if (f > 0) printf "%.2fx", r / f; else print "-" }')
  printf '%-12s %12s %9s %9s %9s %8s\n' "$name" "$rps" "$ratio" "$(to_ms "$p50")" "$(to_ms "$p99")" "${non:-0}"
done
echo "# tracegate after the run:"
curl -s http://127.0.0.1:19105/metrics | grep -E '^tracegate_spans_(recorded|dropped)_total' || true
echo "# peak RSS of tracegate (kB): $(awk '/VmHWM/ { print $2 }' "/proc/$proxy_pid/status" 2>/dev/null || echo '?')"
