#!/bin/bash
# The results table of bench/README.md, one sitting: every scenario against the gate
# (gate.shards = 1) and, where the tool speaks its protocol, nats-server, each server pinned to
# core 0 and imgate-bench to core 1, one run per row (RUNS=3 for medians of fan-out max).
# Prints markdown rows; keeps every JSON line, progress log and command under OUTDIR.
#
#   GATE=target/release/gate TOOL=target/release/imgate-bench bench/scripts/results.sh OUTDIR
#
# Needs nats-server on PATH for the nats rows (Debian: apt-get install nats-server) and jq.
# Bounded: every run has a fixed duration and each server is stopped by its PID.
set -u
out=${1:?usage: $0 OUTDIR}; mkdir -p "$out"
GATE=${GATE:-target/release/gate}
TOOL=${TOOL:-target/release/imgate-bench}
RUNS=${RUNS:-1}
DUR=${DUR:-10}
PORT=7420
SECRET=results-secret-0123456789

# Message scenarios log in with dev auth; connect and idle with JWTs the tool signs.
for auth in dev jwt; do
  {
    printf '[gate]\nlisten = "127.0.0.1:%s"\nshards = 1\nheartbeat_secs = 300\n\n' "$PORT"
    [ "$auth" = jwt ] && printf '[auth]\nmode = "jwt"\nsecret = "%s"\n\n' "$SECRET"
    # Memory only, like nats-server core (no persistence): the comparison is of delivery.
    printf '[backend]\npush_threshold = 2000\ndata_dir = ""\n\n'
    printf '[limits]\nmsgs_per_sec = 1000000\nburst = 1000000\n\n'
    printf '[delivery]\nmax_pending = 100000\n'
  } > "$out/gate-$auth.toml"
done

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_port() { local i; for i in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
start_server() { # target scenario -> sets spid, port
  if [ "$1" = gate ]; then
    local auth=dev; case "$2" in connect|idle) auth=jwt;; esac
    taskset -c 0 "$GATE" --config "$out/gate-$auth.toml" > "$out/server-$tag.log" 2>&1 & spid=$!; port=$PORT
  else
    taskset -c 0 nats-server -a 127.0.0.1 -p 4222 > "$out/server-$tag.log" 2>&1 & spid=$!; port=4222
  fi
  wait_port "$port" || { echo "server for $tag did not start" >&2; kill "$spid"; exit 1; }
}
# run TAG TARGET SCENARIO ARGS...: one tool run against a fresh server; leaves $out/TAG.json
run() {
  tag=$1; local target=$2; shift 2
  start_server "$target" "$1"
  local auth=(); [ "$target" = gate ] && auth=(--addr "127.0.0.1:$port")
  [ "$target" = nats ] && auth=(--target nats --addr "127.0.0.1:$port")
  local cmd=(taskset -c 1 "$TOOL" "$@" "${auth[@]}" --json)
  case "$1" in connect|idle) cmd+=(--gate-pid "$spid");; esac
  echo "${cmd[*]}" > "$out/$tag.cmd"
  local s0; s0=$(ticks "$spid"); local t0; t0=$(date +%s.%N)
  "${cmd[@]}" > "$out/$tag.json" 2> "$out/$tag.err"; echo "rc $?" >> "$out/$tag.cmd"
  local s1; s1=$(ticks "$spid"); local t1; t1=$(date +%s.%N)
  # Server CPU over the whole tool run (setup and drain included), in % of one core.
  echo "$(( (s1 - s0) ))" "$t0" "$t1" | awk '{printf "%.0f\n", $1 / ($3 - $2)}' > "$out/$tag.servercpu"
  kill "$spid"; wait "$spid" 2>/dev/null
}
j() { jq -r "$2" "$out/$1.json"; }
pct() { awk -v x="$1" 'BEGIN { printf "%.0f %%", x * 100 }'; }
ms() { awk -v x="$1" 'BEGIN { printf "%.2f ms", x / 1000 }'; }
mil() { awk -v x="$1" 'BEGIN { printf "%.2f M", x / 1e6 }'; }

echo "| scenario | server | result | p50 / p99 | server CPU | tool CPU |"
echo "|---|---|---|---|---|---|"
for target in gate nats; do
  for i in $(seq "$RUNS"); do
    run "fanout-max-$target-$i" "$target" fanout --members 1000 --publishers 1 --inflight 1000 --size 64 --duration "$DUR"
  done
  best=$(for i in $(seq "$RUNS"); do echo "$(j "fanout-max-$target-$i" .deliveries_per_sec) $i"; done | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p" | cut -d' ' -f2)
  t="fanout-max-$target-$best"
  echo "| fan-out 1,000 members, max (1,000 in flight) | $target | $(mil "$(j "$t" .deliveries_per_sec)") deliveries/s, missing $(j "$t" .missing) | $(ms "$(j "$t" .latency_us.p50)") / $(ms "$(j "$t" .latency_us.p99)") | $(cat "$out/$t.servercpu") % | $(pct "$(j "$t" .cpu)") |"
done
for target in gate nats; do
  t="fanout-200-$target"; run "$t" "$target" fanout --members 1000 --rate 200 --size 64 --duration "$DUR"
  echo "| fan-out 1,000 members at 200 msg/s | $target | $(mil "$(j "$t" .deliveries_per_sec)") deliveries/s, missing $(j "$t" .missing) | $(ms "$(j "$t" .latency_us.p50)") / $(ms "$(j "$t" .latency_us.p99)") | $(cat "$out/$t.servercpu") % | $(pct "$(j "$t" .cpu)") |"
done
for rate in 20000 50000 0; do
  for target in gate nats; do
    t="chat-$rate-$target"; run "$t" "$target" chat --pairs 1000 --rate "$rate" --size 64 --duration "$DUR"
    label="chat 1,000 pairs at $rate msg/s"; [ "$rate" = 0 ] && label="chat 1,000 pairs, max"
    echo "| $label | $target | $(awk -v x="$(j "$t" .delivered_per_sec)" 'BEGIN{printf "%.0f", x}') delivered/s, missing $(j "$t" .missing) | $(ms "$(j "$t" .latency_us.p50)") / $(ms "$(j "$t" .latency_us.p99)") | $(cat "$out/$t.servercpu") % | $(pct "$(j "$t" .cpu)") |"
  done
done
t=uplink-20000-gate; run "$t" gate uplink --connections 1000 --rate 20000 --size 64 --duration "$DUR"
echo "| uplink 1,000 connections at 20,000 SEND/s | gate | $(awk -v x="$(j "$t" .ok_per_sec)" 'BEGIN{printf "%.0f", x}') SendResp/s | $(ms "$(j "$t" .latency_us.p50)") / $(ms "$(j "$t" .latency_us.p99)") | $(cat "$out/$t.servercpu") % | $(pct "$(j "$t" .cpu)") |"
t=connect-gate; run "$t" gate connect --jwt-secret "$SECRET" --duration "$DUR"
echo "| connect (JWT), 12,000 concurrent | gate | $(j "$t" .logins_per_sec) logins/s, $(j "$t" .gate_cpu_us_per_login) µs gate CPU per login, failures $(j "$t" .failures) | $(ms "$(j "$t" .latency_us.p50)") / $(ms "$(j "$t" .latency_us.p99)") | $(pct "$(j "$t" .gate_cpu)") | $(pct "$(j "$t" .tool_cpu)") |"
t=idle-gate; run "$t" gate idle --jwt-secret "$SECRET" --connections 15000 --duration 5
echo "| idle 15,000 logged-in connections | gate | $(j "$t" .gate_bytes_per_conn) bytes per connection (RSS(N) − RSS(0)) / N, failures $(j "$t" .failures) | – | $(pct "$(j "$t" .gate_cpu)") | $(pct "$(j "$t" .tool_cpu)") |"
