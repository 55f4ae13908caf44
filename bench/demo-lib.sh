# Shared by the bench scripts that work on a finished `distill demo` run: source it after setting
# $distill (the binary), $run (the demo run) and $work (the script's folder inside it).

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# serve MODEL [flags...]: `distill serve` on a free port, logging to $work/serve.log; returns once
# /health answers 200 and sets $url (the /v1 base) and $server_pid. stop ends it; the EXIT trap
# stops one left running.
server_pid=
serve() {
  local port
  port=$(free_port)
  "$distill" --quiet serve -m "$1" --alias m --port "$port" --parallel 16 "${@:2}" >"$work/serve.log" 2>&1 &
  server_pid=$!
  url=http://127.0.0.1:$port/v1
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log"; return 1; }
    sleep 0.1
  done
  echo "the server did not come up"; return 1
}
stop() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=; }
trap stop EXIT

# student_config FILE: the demo's student shape (0.89M parameters) over the teacher's vocabulary.
student_config() {
  cat >"$1" <<JSON
{"vocab_size": $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$run/teacher/model/config.json"),
 "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "intermediate_size": 344, "max_position_embeddings": 512, "tie_word_embeddings": true}
JSON
}
