#!/usr/bin/env bash
# Start-up time and idle memory of the release binary: spawns `tracegate serve` on a fresh
# store RUNS times (default 3) and prints, for each start, the time from spawn to the first
# TCP connection the proxy accepts, and its RSS one second after that.
#
#   cargo build --release && benches/startup.sh [BINARY]
set -euo pipefail
bin=${1:-target/release/tracegate}
runs=${RUNS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for run in $(seq 1 "$runs"); do
  rm -rf "$work/store"
  cat > "$work/tracegate.toml" <<TOML
[server]
listen = "127.0.0.1:9204"
admin_listen = "127.0.0.1:9205"

[storage]
path = "$work/store"

[[providers]]
name = "openai"
prefix = "/openai"
upstream = "http://127.0.0.1:9201"
api = "openai"
TOML
  python3 - "$bin" "$work/tracegate.toml" <<'PY'
import socket, subprocess, sys, time
binary, config = sys.argv[1], sys.argv[2]
start = time.perf_counter()
proc = subprocess.Popen([binary, "serve", "--config", config],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        socket.create_connection(("127.0.0.1", 9204), timeout=0.05).close()
        break
    except OSError:
        if proc.poll() is not None:
            sys.exit("tracegate exited before listening")
        time.sleep(0.0005)
ready_ms = (time.perf_counter() - start) * 1000
time.sleep(1)
rss_kb = next(int(l.split()[1]) for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS:"))
proc.terminate()
proc.wait()
print(f"start-up to first accepted connection: {ready_ms:6.1f} ms   idle RSS after 1 s: {rss_kb / 1024:5.1f} MB")
PY
done
