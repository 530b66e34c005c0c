#!/bin/bash
# Fan-out side by side, one sitting: gate and nats-server alternately, RUNS runs each (default 3),
# server pinned to core 0, imgate-bench to core 1, 1,000 members, 1 publisher, 1,000 in flight,
# 64-byte payload, 10 s. Each run first waits for a quiet machine (both cores under 10 % for 2 s)
# and is repeated (up to 5 tries) when something else took over 10 % of either core meanwhile.
# Servers are started per run and stopped by their PID.
#
#   GATE=path/to/gate TOOL=path/to/imgate-bench bench/scripts/fanout-vs-nats.sh OUTDIR
#
# OUTDIR gets, per run: the command line (.cmd), the tool's progress (.err) and JSON summary
# (.json), CPU ticks of server and tool over 5 s of the window (.cpu), `top -H` (.top), and a
# log; the medians are printed at the end.
set -u
out=${1:?usage: $0 OUTDIR}; mkdir -p "$out"
GATE=${GATE:-target/release/gate}
TOOL=${TOOL:-target/release/imgate-bench}
RUNS=${RUNS:-3}
cat > "$out/gate.toml" <<'TOML'
[gate]
listen = "127.0.0.1:7400"
shards = 1
heartbeat_secs = 300

[backend]
push_threshold = 2000
# Memory only, like nats-server core: the comparison is of delivery.
data_dir = ""

[limits]
msgs_per_sec = 1000000
burst = 1000000

[delivery]
max_pending = 100000
TOML
busy() { awk -v c="$1" '$1==c{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
quiet() { local k a0 a1 b0 b1
  for k in $(seq 900); do
    a0=$(busy cpu0); a1=$(busy cpu1); sleep 2; b0=$(busy cpu0); b1=$(busy cpu1)
    [ $((b0-a0)) -lt 20 ] && [ $((b1-a1)) -lt 20 ] && return 0
  done; return 1; }
wait_port() { local i; for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for i in $(seq "$RUNS"); do
  for target in gate nats; do
    for attempt in 1 2 3 4 5; do
      tag=$target-$i-try$attempt
      quiet || { echo "machine never quiet"; exit 1; }
      echo "$(date +%T) start $tag" >> "$out/log"
      if [ $target = gate ]; then
        taskset -c 0 "$GATE" --config "$out/gate.toml" > "$out/$tag.server.log" 2>&1 & spid=$!; port=7400
      else
        taskset -c 0 nats-server -a 127.0.0.1 -p 4222 > "$out/$tag.server.log" 2>&1 & spid=$!; port=4222
      fi
      wait_port $port || { echo "server $tag did not start"; kill $spid; exit 1; }
      cmd="taskset -c 1 $TOOL fanout --target $target --addr 127.0.0.1:$port --members 1000 --publishers 1 --inflight 1000 --size 64 --duration 10 --json"
      echo "$cmd" > "$out/$tag.cmd"
      : > "$out/$tag.err"
      $cmd > "$out/$tag.json" 2> "$out/$tag.err" & tpid=$!
      for k in $(seq 600); do grep -q '\[  2s\]' "$out/$tag.err" && break; sleep 0.05; done
      s0=$(ticks $spid); t0=$(ticks $tpid); c00=$(busy cpu0); c10=$(busy cpu1)
      top -b -n2 -d5 -H -p $spid,$tpid > "$out/$tag.top"
      s1=$(ticks $spid); t1=$(ticks $tpid); c01=$(busy cpu0); c11=$(busy cpu1)
      oc0=$((c01-c00-(s1-s0))); oc1=$((c11-c10-(t1-t0)))
      echo "over 5 s (ticks of 10 ms; 500 = one core): server $((s1-s0)) tool $((t1-t0)) other_cpu0 $oc0 other_cpu1 $oc1" > "$out/$tag.cpu"
      wait $tpid; echo "rc $?" >> "$out/$tag.cpu"
      kill $spid; wait $spid 2>/dev/null
      if [ $oc0 -lt 50 ] && [ $oc1 -lt 50 ]; then echo "clean $tag" >> "$out/log"; break; fi
      echo "contaminated $tag (other cpu0 $oc0, cpu1 $oc1 ticks)" >> "$out/log"
    done
  done
done
for target in gate nats; do
  clean=$(awk -v t="$target" '$1=="clean" && index($2, t"-")==1 {print $2}' "$out/log")
  rates=$(for tag in $clean; do grep -o '"deliveries_per_sec":[0-9]*' "$out/$tag.json" | cut -d: -f2; done | sort -n)
  n=$(echo "$rates" | grep -c .)
  echo "$target deliveries/s: $(echo $rates) median $(echo "$rates" | sed -n "$(( (n+1)/2 ))p")"
done
