taskset -c 1 target/release/imgate-bench idle --jwt-secret results-secret-0123456789 --connections 15000 --duration 5 --addr 127.0.0.1:7420 --json --gate-pid 31112
rc 0
