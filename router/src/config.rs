//! Router configuration: the TOML file's serde structs with every default in one place, the key
//! table `router --help` prints, and validation into [`RouterSettings`].
//!
//! The `[backend]` keys are the ones the gate's embedded backend reads (`backend.partitions`,
//! `backend.push_threshold`, `backend.auth_secret`, `backend.data_dir`), with the same defaults,
//! so one IM data layout serves both deployments.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::im::{DEDUP_WINDOW_MS, ImConfig};
use crate::link::frame::{DEFAULT_MAX_FRAME, MIN_MAX_FRAME};
use crate::logging::{LogConfig, LogSettings};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub router: RouterConfig,
    pub backend: BackendConfig,
    pub log: LogConfig,
}

/// `[router]`: the link server and the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    pub id: String,
    pub listen: String,
    pub http_listen: String,
    pub http_max_body: usize,
    pub http_timeout_ms: u32,
    pub http_max_conns: usize,
    pub client_max_frame: usize,
    pub max_frame: usize,
    pub heartbeat_ms: u32,
    pub link_queue: usize,
    pub io_memory_kib: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            listen: "127.0.0.1:7100".into(),
            http_listen: "127.0.0.1:7180".into(),
            http_max_body: 1 << 20,
            http_timeout_ms: 10_000,
            http_max_conns: 64,
            client_max_frame: 65_536,
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat_ms: 1000,
            link_queue: 65_536,
            io_memory_kib: 64,
        }
    }
}

/// `[backend]`: the reference IM backend (the same keys and defaults as the gate's embedded one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    pub data_dir: String,
    pub partitions: u32,
    pub push_threshold: u32,
    pub auth_secret: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            data_dir: String::new(),
            partitions: 64,
            push_threshold: 200,
            auth_secret: String::new(),
        }
    }
}

/// (key, default, meaning), for `router --help` and the README.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "router.id",
        "\"router-<port>\"",
        "name in the links' Welcome and in logs",
    ),
    (
        "router.listen",
        "\"127.0.0.1:7100\"",
        "the link address gates connect to (backend.addr of each gate)",
    ),
    (
        "router.http_listen",
        "\"127.0.0.1:7180\"",
        "the HTTP API address (POST /push, POST /kick, GET /online); \"\" = off",
    ),
    (
        "router.http_max_body",
        "1048576",
        "largest HTTP request body, bytes (larger: 413); headers are capped at 8 KiB (431)",
    ),
    (
        "router.http_timeout_ms",
        "10000",
        "a request's head and body must arrive within this (else 408 and close); also the keep-alive idle limit and the wait for the backend's answer (504)",
    ),
    (
        "router.http_max_conns",
        "64",
        "HTTP connections at once; more are answered 503 and closed",
    ),
    (
        "router.client_max_frame",
        "65536",
        "the gates' gate.max_frame: a POST /push whose PUSH or BIZ_PUSH would be larger gets 413",
    ),
    (
        "router.max_frame",
        "4194304",
        "largest link frame body accepted (at least 131072)",
    ),
    (
        "router.heartbeat_ms",
        "1000",
        "a Heartbeat goes on a link idle this long; gates close a link silent 3 x this",
    ),
    (
        "router.link_queue",
        "65536",
        "messages waiting to be written on one link; past it the gate is too slow and its link is closed (it reconnects and resyncs)",
    ),
    (
        "router.io_memory_kib",
        "64",
        "glommio io_memory of the router's executor (pinned; counted against ulimit -l)",
    ),
    (
        "backend.data_dir",
        "\"\"",
        "where the reference backend keeps its message log (not used yet: data is in memory)",
    ),
    (
        "backend.partitions",
        "64",
        "partitions of the reference backend's data, fixed for the life of the data",
    ),
    (
        "backend.push_threshold",
        "200",
        "members of groups larger than this get NOTIFY instead of PUSH",
    ),
    (
        "backend.auth_secret",
        "\"\"",
        "HS256 key LOGIN tokens are checked with (gates with auth.mode = \"backend\")",
    ),
];

/// The key table formatted for `--help`: [`KEYS`] and the `[log]` keys.
pub fn keys_help() -> String {
    let keys: Vec<_> = KEYS.iter().chain(crate::logging::KEYS).copied().collect();
    format_keys(&keys)
}

/// A `(key, default, meaning)` table as `--help` prints it, columns as wide as their longest
/// entry (the gate's table goes through here too).
pub fn format_keys(keys: &[(&str, &str, &str)]) -> String {
    let key_width = keys.iter().map(|k| k.0.len()).max().unwrap_or(0);
    let default_width = keys.iter().map(|k| k.1.len()).max().unwrap_or(0);
    let mut out = String::from("Configuration keys (TOML; every key optional):\n");
    for (key, default, meaning) in keys {
        out.push_str(&format!(
            "  {key:<key_width$} default {default:<default_width$} {meaning}\n"
        ));
    }
    out
}

/// A configuration that cannot be used (the gate's and the router's); names the key and the
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The refusal of `key` for `reason`.
pub fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Bounds of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub max_head: usize,
    pub max_body: usize,
    pub timeout: Duration,
    pub max_conns: usize,
    pub client_max_frame: usize,
}

/// Request line and headers of one HTTP request, bytes.
pub const HTTP_MAX_HEAD: usize = 8 * 1024;

/// Validated settings the router runs with.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub id: String,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub http: HttpSettings,
    pub max_frame: usize,
    pub heartbeat: Duration,
    pub link_queue: usize,
    pub io_memory: usize,
    pub im: ImConfig,
    pub log: LogSettings,
}

fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .map_err(|e| invalid(key, format!("{value:?} is not host:port ({e})")))?
        .next()
        .ok_or_else(|| invalid(key, format!("{value:?} resolves to nothing")))
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn validate(&self) -> Result<RouterSettings, ConfigError> {
        let r = &self.router;
        let listen = addr("router.listen", &r.listen)?;
        let http_listen = if r.http_listen.is_empty() {
            None
        } else {
            Some(addr("router.http_listen", &r.http_listen)?)
        };
        if !(MIN_MAX_FRAME..=(64 << 20)).contains(&r.max_frame) {
            return Err(invalid(
                "router.max_frame",
                format!("must be between {MIN_MAX_FRAME} and 67108864 bytes"),
            ));
        }
        if !(100..=60_000).contains(&r.heartbeat_ms) {
            return Err(invalid(
                "router.heartbeat_ms",
                "must be between 100 and 60000",
            ));
        }
        if r.link_queue < 1024 {
            return Err(invalid("router.link_queue", "must be at least 1024"));
        }
        if !(64..=65_536).contains(&r.io_memory_kib) {
            return Err(invalid(
                "router.io_memory_kib",
                "must be between 64 and 65536",
            ));
        }
        if !(1024..=(64 << 20)).contains(&r.http_max_body) {
            return Err(invalid(
                "router.http_max_body",
                "must be between 1024 and 67108864 bytes",
            ));
        }
        if !(100..=600_000).contains(&r.http_timeout_ms) {
            return Err(invalid(
                "router.http_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=10_000).contains(&r.http_max_conns) {
            return Err(invalid(
                "router.http_max_conns",
                "must be between 1 and 10000",
            ));
        }
        if !(1024..=(16 << 20)).contains(&r.client_max_frame) {
            return Err(invalid(
                "router.client_max_frame",
                "must be between 1024 and 16777216 (gate.max_frame's range)",
            ));
        }
        let b = &self.backend;
        if !(1..=1024).contains(&b.partitions) {
            return Err(invalid("backend.partitions", "must be between 1 and 1024"));
        }
        let log = self.log.validate()?;
        Ok(RouterSettings {
            id: if r.id.is_empty() {
                format!("router-{}", listen.port())
            } else {
                r.id.clone()
            },
            listen,
            http_listen,
            http: HttpSettings {
                max_head: HTTP_MAX_HEAD,
                max_body: r.http_max_body,
                timeout: Duration::from_millis(u64::from(r.http_timeout_ms)),
                max_conns: r.http_max_conns,
                client_max_frame: r.client_max_frame,
            },
            max_frame: r.max_frame,
            heartbeat: Duration::from_millis(u64::from(r.heartbeat_ms)),
            link_queue: r.link_queue,
            io_memory: r.io_memory_kib * 1024,
            im: ImConfig {
                partitions: b.partitions,
                push_threshold: b.push_threshold,
                dedup_window_ms: DEDUP_WINDOW_MS,
                auth_secret: b.auth_secret.clone().into_bytes(),
            },
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_7100_and_7180() {
        let s = Config::default().validate().expect("defaults are valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:7100");
        assert_eq!(
            s.http_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:7180")
        );
        assert_eq!(s.im.partitions, 64);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        assert!(Config::from_toml("[router]\nlisen = \"x\"\n").is_err());
        let err = Config::from_toml("[backend]\npartitions = 0\n")
            .expect("parses")
            .validate()
            .expect_err("refused");
        assert!(err.to_string().starts_with("backend.partitions:"), "{err}");
    }

    #[test]
    fn every_key_is_documented() {
        let text = toml::to_string(&Config::default()).expect("serialises");
        let table: toml::Table = text.parse().expect("parses");
        let mut keys = Vec::new();
        for (section, value) in &table {
            for key in value.as_table().expect("a section").keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys.sort();
        let mut documented: Vec<String> = KEYS
            .iter()
            .chain(crate::logging::KEYS)
            .map(|(k, _, _)| k.to_string())
            .collect();
        documented.sort();
        assert_eq!(keys, documented);
    }
}
