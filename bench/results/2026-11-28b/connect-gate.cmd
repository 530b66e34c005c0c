taskset -c 1 target/release/imgate-bench connect --jwt-secret results-secret-0123456789 --duration 10 --addr 127.0.0.1:7420 --json --gate-pid 31081
rc 0
