//! imgate's load generator (scenarios arrive with issue 6) and the home of the criterion suites
//! in `bench/benches/`, one file per sans-IO core.
