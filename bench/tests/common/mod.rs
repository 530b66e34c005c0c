//! What the end-to-end tests share: an in-process gate on an ephemeral loopback port (one shard,
//! dev auth, generous limits) and checks of a summary's JSON line.

#![allow(dead_code)] // each test crate uses its own part

/// A gate for the tests: one shard, limits far above what a one-second small run sends, groups
/// above `push_threshold` members get NOTIFY instead of PUSH.
pub fn gate_config(push_threshold: u32) -> String {
    format!(
        r#"
[gate]
listen = "127.0.0.1:0"
shards = 1
heartbeat_secs = 300

[admin]
listen = ""

[backend]
data_dir = ""
push_threshold = {push_threshold}

[limits]
msgs_per_sec = 1000000
burst = 1000000

[delivery]
max_pending = 100000
"#
    )
}

/// Starts a gate from `toml`; the caller stops it.
pub fn start_gate(toml: &str) -> gate::GateHandle {
    let settings = gate::config::Config::from_toml(toml)
        .expect("config parses")
        .validate()
        .expect("config is valid");
    gate::start(settings).expect("gate starts")
}

/// The unsigned number of `"key":` at the top level or in a nested object of a one-line JSON
/// summary (the tool writes plain numbers; the first occurrence wins).
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Checks the JSON line is one object on one line, names the scenario and holds `keys`.
pub fn assert_json_shape(json: &str, scenario: &str, keys: &[&str]) {
    assert!(!json.contains('\n'), "{json}");
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert!(
        json.starts_with(&format!("{{\"scenario\":\"{scenario}\"")),
        "{json}"
    );
    for key in keys {
        assert!(json.contains(&format!("\"{key}\":")), "no {key} in {json}");
    }
    // Braces balance (one nested object: latency_us).
    assert_eq!(
        json.matches('{').count(),
        json.matches('}').count(),
        "{json}"
    );
}
