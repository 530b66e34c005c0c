taskset -c 1 /tmp/final/imgate-bench connect --jwt-secret results-secret-0123456789 --duration 10 --addr 127.0.0.1:7420 --json --gate-pid 28372
rc 0
