#!/usr/bin/env bash
# `voxline bench` against a fresh `voxline serve` started here with the bank persona and
# max_calls set to the most calls the bench places at once (its --calls; 8 without it), as
# the bench sizes the stock stack's LLM server; every argument goes to `voxline bench`.
# The table in docs/benchmarks.md:
#
#   flock /tmp/voxline-heavy.lock bash benchmarks/bench_serve.sh --calls 1 4 8 --turns 2 --baseline-pipecat
#
# BENCH_LLM=llama_cpp serves on llama.cpp instead of vLLM (serve's default);
# BENCH_REMEMBER_LINES=false makes Piper synthesize the greeting and phrases on every call
# (engines.remember_lines); BENCH_YAML adds top-level lines to the server's voxline.yaml
# (BENCH_YAML='twilio: {send_ahead_ms: 300}'). The server's log and its call records (records.sqlite3: read
# them with `voxline calls list --config <folder>/voxline.yaml`) are kept in the temporary
# folder printed at the start, not in the user's default records file.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${BENCH_LLM:-vllm}
remember=${BENCH_REMEMBER_LINES:-true}
# The largest number after --calls (and before the next option).
max_calls=$(.venv/bin/python - "$@" <<'PY'
import sys

args, most, counting = sys.argv[1:], 0, False
for arg in args:
    if arg == "--calls":
        counting = True
    elif arg.startswith("--calls=") and arg[8:].isdigit():
        most, counting = max(most, int(arg[8:])), False
    elif arg.startswith("-"):
        counting = False
    elif counting and arg.isdigit():
        most = max(most, int(arg))
print(most or 8)
PY
)
tmp=$(mktemp -d -t voxline-bench-serve-XXXX)
port=$(.venv/bin/python -c 'from voxline.engines.llm import free_port; print(free_port())')
cat >"$tmp/voxline.yaml" <<YAML
public_url: http://127.0.0.1:$port
default_persona: $PWD/personas/bank_support.yaml
max_calls: $max_calls
records_url: sqlite:///records.sqlite3
engines: {llm: {backend: $backend}, remember_lines: $remember}
${BENCH_YAML:-}
YAML
export TWILIO_AUTH_TOKEN=${TWILIO_AUTH_TOKEN:-voxline-bench-token} VOXLINE_OFFLINE=1
echo "bench_serve: voxline serve on $backend (remember_lines: $remember, max_calls: $max_calls), port $port, log $tmp/serve.log" >&2
.venv/bin/voxline serve --config "$tmp/voxline.yaml" --port "$port" >"$tmp/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
until grep -q "voxline ready" "$tmp/serve.log"; do
    if ! kill -0 "$server" 2>/dev/null; then
        tail -20 "$tmp/serve.log" >&2
        exit 1
    fi
    sleep 1  # polling the log for readiness
done
.venv/bin/voxline bench "http://127.0.0.1:$port" "$@"
