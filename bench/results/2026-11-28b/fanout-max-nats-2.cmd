taskset -c 1 target/release/imgate-bench fanout --members 1000 --publishers 1 --inflight 1000 --size 64 --duration 10 --target nats --addr 127.0.0.1:4222 --json
rc 0
