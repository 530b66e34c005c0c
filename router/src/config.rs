//! Router configuration: the TOML file's serde structs with every default in one place, the key
//! table `router --help` prints, and validation into [`RouterSettings`].
//!
//! The `[backend]` keys are the ones the gate's embedded backend reads (`backend.partitions`,
//! `backend.push_threshold`, `backend.auth_secret`, `backend.data_dir`), with the same defaults,
//! so one IM data layout serves both deployments.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::im::filter::{ContentFilter, FilterAction};
use crate::im::journal::JournalConfig;
use crate::im::recovery::Storage;
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
    pub sync: SyncPolicy,
    pub sync_interval_ms: u64,
    pub segment_bytes: u64,
    pub retention_bytes: u64,
    pub retention_days: u32,
    pub filter: FilterConfig,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            data_dir: DEFAULT_DATA_DIR.into(),
            partitions: 64,
            push_threshold: 200,
            auth_secret: String::new(),
            sync: SyncPolicy::Interval,
            sync_interval_ms: 1000,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention_bytes: 0,
            retention_days: 30,
            filter: FilterConfig::default(),
        }
    }
}

/// Where the reference backend keeps its log unless told otherwise (relative to the working
/// directory; the systemd units point it at the state directory).
pub const DEFAULT_DATA_DIR: &str = "imgate-data";
/// Default log segment size per partition.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;

/// `backend.sync`: when the reference backend's log is flushed to the device.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Before any answer that depends on the append: survives a power loss.
    Always,
    /// Within `backend.sync_interval_ms` of the first unsynced append.
    #[default]
    Interval,
    /// By the kernel when it likes: survives a process crash, not a power loss.
    Os,
}

/// `[backend.filter]`: the content filter over SEND bodies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// One word per line; empty: no filter.
    pub words_file: String,
    pub action: FilterActionKey,
}

/// `backend.filter.action`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilterActionKey {
    #[default]
    Reject,
    Mask,
}

/// The reference backend's storage and filter keys as the gate and the router both read them.
#[derive(Debug, Clone, Copy)]
pub struct StorageKeys<'a> {
    pub data_dir: &'a str,
    pub sync: SyncPolicy,
    pub sync_interval_ms: u64,
    pub segment_bytes: u64,
    pub retention_bytes: u64,
    pub retention_days: u32,
    pub partitions: u32,
    /// The largest client frame (gate.max_frame / router.client_max_frame): one message must
    /// fit a segment with room to spare.
    pub max_frame: usize,
}

impl<'a> From<(&'a BackendConfig, usize)> for StorageKeys<'a> {
    fn from((b, max_frame): (&'a BackendConfig, usize)) -> Self {
        Self {
            data_dir: &b.data_dir,
            sync: b.sync,
            sync_interval_ms: b.sync_interval_ms,
            segment_bytes: b.segment_bytes,
            retention_bytes: b.retention_bytes,
            retention_days: b.retention_days,
            partitions: b.partitions,
            max_frame,
        }
    }
}

/// The validated storage settings: `None` when `backend.data_dir` is empty (memory only).
pub fn storage_settings(k: StorageKeys<'_>) -> Result<Option<Storage>, ConfigError> {
    if !(1..=86_400_000).contains(&k.sync_interval_ms) {
        return Err(invalid(
            "backend.sync_interval_ms",
            "must be between 1 and 86400000",
        ));
    }
    let least = (2 * k.max_frame as u64 + 65_536).max(1 << 20);
    if !(least..=(1 << 30)).contains(&k.segment_bytes) {
        return Err(invalid(
            "backend.segment_bytes",
            format!(
                "must be between {least} (twice the largest frame, at least 1 MiB) and 1073741824"
            ),
        ));
    }
    if k.retention_bytes != 0 && k.retention_bytes < k.segment_bytes * 2 * u64::from(k.partitions) {
        return Err(invalid(
            "backend.retention_bytes",
            format!(
                "must be 0 (no cap) or at least two segments per partition ({} bytes)",
                k.segment_bytes * 2 * u64::from(k.partitions)
            ),
        ));
    }
    if k.data_dir.is_empty() {
        return Ok(None);
    }
    let sync = match k.sync {
        SyncPolicy::Always => crate::log::Sync::Always,
        SyncPolicy::Interval => crate::log::Sync::Interval(k.sync_interval_ms),
        SyncPolicy::Os => crate::log::Sync::Os,
    };
    Ok(Some(Storage {
        dir: std::path::PathBuf::from(k.data_dir),
        journal: JournalConfig {
            log: crate::log::Options {
                segment_bytes: k.segment_bytes,
                sync,
                space_limit: None,
            },
            retention: crate::log::Retention {
                max_bytes: (k.retention_bytes != 0)
                    .then(|| k.retention_bytes / u64::from(k.partitions.max(1))),
                max_age_ms: (k.retention_days != 0)
                    .then(|| u64::from(k.retention_days) * 86_400_000),
            },
        },
    }))
}

/// The content filter `[backend.filter]` describes (reads the word list), if any.
pub fn content_filter(f: &FilterConfig) -> Result<Option<Arc<ContentFilter>>, ConfigError> {
    if f.words_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&f.words_file).map_err(|e| {
        invalid(
            "backend.filter.words_file",
            format!("cannot read {}: {e}", f.words_file),
        )
    })?;
    let action = match f.action {
        FilterActionKey::Reject => FilterAction::Reject,
        FilterActionKey::Mask => FilterAction::Mask,
    };
    ContentFilter::from_list(&text, action)
        .map(|filter| Some(Arc::new(filter)))
        .map_err(|reason| {
            invalid(
                "backend.filter.words_file",
                format!("{}: {reason}", f.words_file),
            )
        })
}

/// The storage keys' rows of `--help` and the README, shared by the gate and the router.
pub const STORAGE_KEYS: &[(&str, &str, &str)] = &[
    (
        "backend.data_dir",
        "\"imgate-data\"",
        "directory of the reference backend's durable log (a subdirectory per partition, locked while in use; relative to the working directory); \"\" = memory only, lost at exit",
    ),
    (
        "backend.sync",
        "\"interval\"",
        "when the log reaches the device: \"always\" (before any answer; survives a power loss), \"interval\" (within backend.sync_interval_ms), \"os\" (when the kernel likes; survives a process crash, not a power loss)",
    ),
    (
        "backend.sync_interval_ms",
        "1000",
        "with backend.sync = \"interval\": the most an acknowledged message waits for its flush",
    ),
    (
        "backend.segment_bytes",
        "4194304",
        "log segment size per partition, reserved on disk when created (at least twice the largest frame)",
    ),
    (
        "backend.retention_bytes",
        "0",
        "cap on the whole log's bytes (split evenly among partitions); the oldest segments are retired past it; 0 = no cap",
    ),
    (
        "backend.retention_days",
        "30",
        "segments whose newest record is older are retired (messages go; groups, read cursors and dedup entries younger than 24 h are kept); 0 = forever",
    ),
    (
        "backend.filter.words_file",
        "\"\"",
        "content filter word list (UTF-8, one per line, # comments; ASCII case-insensitive); \"\" = no filter",
    ),
    (
        "backend.filter.action",
        "\"reject\"",
        "\"reject\" (SEND answered CONTENT_REJECTED) | \"mask\" (each match replaced by '*' in the stored and pushed body)",
    ),
];

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

/// The key table formatted for `--help`: [`KEYS`], the storage keys and the `[log]` keys.
pub fn keys_help() -> String {
    let keys: Vec<_> = KEYS
        .iter()
        .chain(STORAGE_KEYS)
        .chain(crate::logging::KEYS)
        .copied()
        .collect();
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
    /// Where the reference backend's log lives; `None`: memory only.
    pub storage: Option<Storage>,
    pub log: LogSettings,
}

/// `value` (host:port) resolved to its first address, or a refusal naming `key` (the gate's
/// config uses it too).
pub fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
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
                filter: content_filter(&b.filter)?,
            },
            storage: storage_settings(StorageKeys::from((b, r.client_max_frame)))?,
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
    fn storage_keys_are_validated_by_name_and_an_empty_data_dir_means_memory() {
        let s = Config::default().validate().expect("defaults are valid");
        let storage = s.storage.expect("durable by default");
        assert_eq!(storage.dir, std::path::PathBuf::from("imgate-data"));
        assert_eq!(storage.journal.log.sync, crate::log::Sync::Interval(1000));
        assert_eq!(storage.journal.retention.max_age_ms, Some(30 * 86_400_000));
        let none = Config::from_toml("[backend]\ndata_dir = \"\"\n").unwrap();
        assert!(none.validate().unwrap().storage.is_none());
        for (toml, key) in [
            ("[backend]\nsync = \"sometimes\"\n", "`always`, `interval`"),
            (
                "[backend]\nsegment_bytes = 4096\n",
                "backend.segment_bytes:",
            ),
            (
                "[backend]\nretention_bytes = 1000\n",
                "backend.retention_bytes:",
            ),
            (
                "[backend]\nsync_interval_ms = 0\n",
                "backend.sync_interval_ms:",
            ),
            (
                "[backend.filter]\nwords_file = \"/nonexistent/words\"\n",
                "backend.filter.words_file:",
            ),
        ] {
            let err = match Config::from_toml(toml) {
                Err(e) => e.to_string(),
                Ok(c) => c.validate().expect_err("refused").to_string(),
            };
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn every_key_is_documented() {
        fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
            match value.as_table() {
                Some(table) => {
                    for (key, value) in table {
                        let name = if prefix.is_empty() {
                            key.clone()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        flatten(&name, value, out);
                    }
                }
                None => out.push(prefix.to_owned()),
            }
        }
        let value = toml::Value::try_from(Config::default()).expect("serialises");
        let mut keys = Vec::new();
        flatten("", &value, &mut keys);
        keys.sort();
        let mut documented: Vec<String> = KEYS
            .iter()
            .chain(STORAGE_KEYS)
            .chain(crate::logging::KEYS)
            .map(|(k, _, _)| k.to_string())
            .collect();
        documented.sort();
        assert_eq!(keys, documented);
    }
}
