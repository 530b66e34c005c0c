//! Gate configuration: the TOML file's serde structs with every default in one place, the table of
//! keys that `gate --help` prints, and validation into typed settings.
//!
//! Owns nothing at run time: `Config::from_toml` parses, `Config::validate` turns it into
//! [`Settings`] (durations, socket addresses, a resolved shard count) once at start, and each
//! shard gets its own copy by value.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use router::config::{FilterConfig, StorageKeys, SyncPolicy};
use router::im::filter::ContentFilter;
use router::im::recovery::Storage;
use router::logging::{LogConfig, LogSettings};
use serde::{Deserialize, Serialize};

/// The whole file. Unknown keys are refused, so a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gate: GateConfig,
    pub auth: AuthConfig,
    pub backend: BackendConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
}

/// `[admin]`: the operators' HTTP endpoint (metrics, health, drain, kick), off the message path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
        }
    }
}

/// `[delivery]`: the reliable delivery engine (PROTOCOL.md "Session rules" 4 and 6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub ack_timeout_ms: u64,
    pub max_backoff_ms: u64,
    pub max_retries: u32,
    pub probe_timeout_ms: u64,
    pub max_pending: usize,
    pub report_batch: usize,
    pub report_flush_ms: u64,
    pub notify_merge_ms: u64,
    pub flush_delay_us: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ack_timeout_ms: 5000,
            max_backoff_ms: 30_000,
            max_retries: 3,
            probe_timeout_ms: 5000,
            max_pending: 4096,
            report_batch: 256,
            report_flush_ms: 10,
            notify_merge_ms: 20,
            flush_delay_us: 0,
        }
    }
}

/// `[limits]`: what one client, one shard and the gate may hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub outbound_bytes: usize,
    pub shard_outbound_bytes: usize,
    pub msgs_per_sec: u32,
    pub burst: u32,
    pub max_connections: usize,
    pub devices_per_uid: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            outbound_bytes: 4 << 20,
            shard_outbound_bytes: 1 << 30,
            msgs_per_sec: 200,
            burst: 400,
            max_connections: 0,
            devices_per_uid: 16,
        }
    }
}

/// `[backend]`: which backend serves the shards, and the embedded reference backend's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub addr: String,
    pub data_dir: String,
    pub partitions: u32,
    pub push_threshold: u32,
    pub auth_secret: String,
    pub queue: usize,
    pub max_inflight: usize,
    pub timeout_ms: u64,
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
            kind: BackendKind::Embedded,
            addr: String::new(),
            data_dir: router::config::DEFAULT_DATA_DIR.into(),
            partitions: 64,
            push_threshold: 200,
            auth_secret: String::new(),
            queue: 4096,
            max_inflight: 4096,
            timeout_ms: 5000,
            sync: SyncPolicy::Interval,
            sync_interval_ms: 1000,
            segment_bytes: router::config::DEFAULT_SEGMENT_BYTES,
            retention_bytes: 0,
            retention_days: 30,
            filter: FilterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The reference IM backend, run as partitions inside the gate's shards.
    #[default]
    Embedded,
    /// A backend behind the link at `backend.addr` (the router binary, or your own).
    Remote,
}

/// `[gate]`: the listener, shards and client-protocol limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    pub id: String,
    pub listen: String,
    pub shards: usize,
    pub listen_backlog: u32,
    pub io_memory_kib: usize,
    pub max_frame: u32,
    pub login_timeout_secs: u64,
    pub heartbeat_secs: u32,
    pub handoff_queue: usize,
    pub peers: Vec<String>,
    pub huge_pages: bool,
    pub drain_secs: u32,
    pub ws_path: String,
    pub ws_allowed_origins: Vec<String>,
    pub http_max_header_bytes: usize,
    pub http_header_timeout_ms: u64,
    pub tls_listen: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_handshake_timeout_ms: u64,
    pub web_demo: WebDemo,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            listen: "127.0.0.1:7000".into(),
            shards: 0,
            listen_backlog: 4096,
            io_memory_kib: 64,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            login_timeout_secs: 10,
            heartbeat_secs: 30,
            handoff_queue: 1024,
            peers: Vec::new(),
            huge_pages: false,
            drain_secs: 30,
            ws_path: String::new(),
            ws_allowed_origins: Vec::new(),
            http_max_header_bytes: 8192,
            http_header_timeout_ms: 5000,
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_handshake_timeout_ms: 10_000,
            web_demo: WebDemo::Auto,
        }
    }
}

/// `gate.web_demo`: whether the client port serves the browser demo page (`GET /`,
/// `/imgate.js`, ...). In the file: `true`, `false` or `"auto"` (the default: on only with
/// `auth.mode = "dev"`, where any token logs in, so a gate in production never shows it unless
/// asked to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebDemo {
    #[default]
    Auto,
    On,
    Off,
}

impl WebDemo {
    /// Whether the page is served under `mode`.
    pub fn enabled(self, mode: AuthMode) -> bool {
        match self {
            Self::Auto => mode == AuthMode::Dev,
            Self::On => true,
            Self::Off => false,
        }
    }
}

impl Serialize for WebDemo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::On => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for WebDemo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WebDemo;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<WebDemo, E> {
                Ok(if v { WebDemo::On } else { WebDemo::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WebDemo, E> {
                match v {
                    "auto" => Ok(WebDemo::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[auth]`: how LOGIN tokens are checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub secret: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any token is accepted; only allowed on loopback listeners.
    #[default]
    Dev,
    /// HS256 JWT signed with `auth.secret` (PROTOCOL.md "Tokens").
    Jwt,
    /// The backend verifies tokens (over the boundary; the embedded one with backend.auth_secret).
    Backend,
}

/// Every key: name, default, meaning. `gate --help` prints this table; a test checks that it
/// names exactly the keys the structs above accept.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "gate.id",
        "\"<hostname>:<port>\"",
        "name of this gate in LoginResp.gate_id and logs",
    ),
    (
        "gate.listen",
        "\"127.0.0.1:7000\"",
        "client address (TCP frames, and WebSocket on /ws; every shard accepts, SO_REUSEPORT)",
    ),
    (
        "gate.shards",
        "0",
        "executors, each pinned to a core; 0 = one per available core",
    ),
    (
        "gate.listen_backlog",
        "4096",
        "listen(2) backlog of each shard's socket",
    ),
    (
        "gate.io_memory_kib",
        "64",
        "glommio io_memory per shard, pinned 3 times (memlock); 64 is glommio's floor",
    ),
    (
        "gate.drain_secs",
        "30",
        "on SIGTERM, SIGINT or POST /drain: KICK 2's retry_after_ms is spread over this many seconds (clients reconnect to gate.peers gradually); the gate exits once its sessions are gone, within this + 5 s",
    ),
    (
        "admin.listen",
        "\"127.0.0.1:7070\"",
        "the admin endpoint (GET /metrics /healthz /readyz /lsb, POST /drain /kick); \"\" = off; unauthenticated: keep it on loopback or a private network",
    ),
    (
        "gate.huge_pages",
        "false",
        "let the allocator back its arenas with transparent huge pages (~0.8 KB more per idle connection)",
    ),
    (
        "gate.max_frame",
        "65536",
        "largest frame body accepted or sent, bytes (LoginResp.max_frame)",
    ),
    (
        "gate.login_timeout_secs",
        "10",
        "a connection must log in within this, or it is closed",
    ),
    (
        "gate.heartbeat_secs",
        "30",
        "client PING interval; no complete frame for 3x this closes with KICK 6",
    ),
    (
        "gate.handoff_queue",
        "1024",
        "capacity of each cross-shard hand-off channel; when full the connection is closed",
    ),
    (
        "gate.peers",
        "[]",
        "other gates' client addresses, offered in KICK 2's reconnect_to",
    ),
    (
        "gate.ws_path",
        "\"\"",
        "another path served like /ws for WebSocket upgrades (e.g. \"/chat\"); empty: /ws only",
    ),
    (
        "gate.ws_allowed_origins",
        "[]",
        "Origin values allowed to upgrade (exact, ASCII case ignored); others get 403; empty: any",
    ),
    (
        "gate.http_max_header_bytes",
        "8192",
        "largest HTTP request head (request line + headers) on the client port; over it: 431 and close",
    ),
    (
        "gate.http_header_timeout_ms",
        "5000",
        "an HTTP request head must arrive within this after the connection opens, or 408 and close",
    ),
    (
        "gate.tls_listen",
        "\"\"",
        "a second client address served over TLS (the same TCP frames and WebSocket inside; every shard accepts, SO_REUSEPORT); \"\" = off",
    ),
    (
        "gate.tls_cert",
        "\"\"",
        "PEM file of the certificate chain (server certificate first); required with gate.tls_listen",
    ),
    (
        "gate.tls_key",
        "\"\"",
        "PEM file of the private key matching gate.tls_cert (PKCS#8, PKCS#1 or SEC1); required with gate.tls_listen",
    ),
    (
        "gate.tls_handshake_timeout_ms",
        "10000",
        "a TLS handshake not finished within this after the connection opens closes it",
    ),
    (
        "gate.web_demo",
        "\"auto\"",
        "serve the browser demo page and imgate.js on the client port (GET /): true | false | \"auto\" (= true only with auth.mode = \"dev\")",
    ),
    (
        "delivery.ack_timeout_ms",
        "5000",
        "a PUSH not acknowledged within this is resent (then with doubling backoff)",
    ),
    (
        "delivery.max_backoff_ms",
        "30000",
        "cap of the resend backoff",
    ),
    (
        "delivery.max_retries",
        "3",
        "resends before a PUSH is reported undelivered and the client probed with PING",
    ),
    (
        "delivery.probe_timeout_ms",
        "5000",
        "a probed client that does not answer the PING within this is closed (KICK 6)",
    ),
    (
        "delivery.max_pending",
        "4096",
        "unacknowledged PUSHes one session may hold; past it the session is a slow consumer (KICK 4)",
    ),
    (
        "delivery.report_batch",
        "256",
        "delivery reports gathered per shard before one is sent to the backend",
    ),
    (
        "delivery.report_flush_ms",
        "10",
        "longest a delivery report waits for its batch to fill",
    ),
    (
        "delivery.notify_merge_ms",
        "20",
        "NOTIFY updates for one session within this window are merged into one frame",
    ),
    (
        "delivery.flush_delay_us",
        "0",
        "0: output queued by pushes is written in the same loop turn; > 0: held this long so more frames share one write",
    ),
    (
        "limits.outbound_bytes",
        "4194304",
        "unsent output one connection may hold; past it: queue dropped, PUSHes reported undelivered, KICK 4, close",
    ),
    (
        "limits.shard_outbound_bytes",
        "1073741824",
        "unsent output all of a shard's connections may hold; the connection that passes it is treated the same way",
    ),
    (
        "limits.msgs_per_sec",
        "200",
        "requests per second per connection (token bucket; PING and notifies never count); past it: RATE_LIMITED",
    ),
    (
        "limits.burst",
        "400",
        "token bucket size of limits.msgs_per_sec",
    ),
    (
        "limits.max_connections",
        "0",
        "connections the gate holds (0 = the open-file limit minus a reserve; larger values are clamped); past it: KICK 2",
    ),
    (
        "limits.devices_per_uid",
        "16",
        "devices one uid may have logged in; a new device_id beyond it gets LoginResp code 4",
    ),
    (
        "backend.kind",
        "\"embedded\"",
        "\"embedded\" (reference IM backend inside the shards) | \"remote\" (a backend at backend.addr)",
    ),
    (
        "backend.addr",
        "\"\"",
        "host:port of the remote backend's link (backend.kind = \"remote\")",
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
        "HS256 key the reference backend checks tokens with when auth.mode = \"backend\"",
    ),
    (
        "backend.queue",
        "4096",
        "capacity of each cross-shard backend channel; when full, requests get BACKEND_UNAVAILABLE",
    ),
    (
        "backend.max_inflight",
        "4096",
        "remote: requests one shard's link may have waiting for an answer; past it BACKEND_UNAVAILABLE",
    ),
    (
        "backend.timeout_ms",
        "5000",
        "remote: a request unanswered this long gets BACKEND_UNAVAILABLE (as do all in flight when the link drops)",
    ),
    (
        "auth.mode",
        "\"dev\"",
        "\"dev\" (any token, loopback only) | \"jwt\" (HS256 with auth.secret) | \"backend\"",
    ),
    (
        "auth.secret",
        "\"\"",
        "HS256 key for auth.mode = \"jwt\" (its UTF-8 bytes)",
    ),
];

/// Every key the file accepts: [`KEYS`], and the storage and `[log]` keys the gate shares with
/// the router.
pub fn all_keys() -> Vec<(&'static str, &'static str, &'static str)> {
    KEYS.iter()
        .chain(router::config::STORAGE_KEYS)
        .chain(router::logging::KEYS)
        .copied()
        .collect()
}

/// The key table formatted for `--help`.
pub fn keys_help() -> String {
    router::config::format_keys(&all_keys())
}

/// A configuration that cannot be used; names the key and the reason (one type for the gate
/// and the router).
pub use router::config::ConfigError;
use router::config::invalid;

/// Validated, typed settings the shards run with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gate_id: String,
    pub listen: SocketAddr,
    pub shards: NonZeroUsize,
    pub listen_backlog: u32,
    pub io_memory: usize,
    pub max_frame: u32,
    pub login_timeout: Duration,
    pub heartbeat: Duration,
    pub heartbeat_secs: u32,
    pub handoff_queue: NonZeroUsize,
    pub peers: Vec<String>,
    /// Transparent huge pages allowed for this process (`gate.huge_pages`).
    pub huge_pages: bool,
    pub drain_secs: u32,
    /// The admin endpoint's address; `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// WebSocket on the client port (`gate.ws_*`, `gate.http_*`).
    pub ws: WsSettings,
    /// The TLS listener (`gate.tls_*`); `None`: off.
    pub tls: Option<TlsSettings>,
    pub auth_mode: AuthMode,
    pub auth_secret: Vec<u8>,
    pub backend: BackendConfig,
    /// The embedded backend's data directory and log policy; `None`: memory only (or remote).
    pub storage: Option<Storage>,
    /// The embedded backend's content filter, if configured.
    pub content_filter: Option<Arc<ContentFilter>>,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    /// Log level and format (`[log]`).
    pub log: LogSettings,
    /// Connections the gate holds (resolved: never above what the open-file limit allows).
    pub max_connections: usize,
    /// Adjustments made while validating, for the start-up log.
    pub warnings: Vec<String>,
}

/// The client port's HTTP/WebSocket side, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// A path served like `/ws`; empty: none.
    pub path: String,
    /// Allowed `Origin` values; empty: any.
    pub allowed_origins: Vec<String>,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    /// The browser demo page is served (`gate.web_demo`, resolved against `auth.mode`).
    pub web_demo: bool,
}

/// The TLS listener, validated: the certificate and key are loaded and checked against each
/// other at start, so a bad file is a start-up error naming its key, never a failed handshake.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `gate.tls_listen`.
    pub listen: SocketAddr,
    /// The rustls server configuration (ring provider, TLS 1.2 and 1.3, no client auth) with
    /// the certificate chain and key. Each shard runs on its own copy (see `shard::tls_config`).
    pub server: Arc<rustls::ServerConfig>,
    /// `gate.tls_handshake_timeout_ms`.
    pub handshake_timeout: Duration,
}

impl Settings {
    /// The embedded backend's IM settings.
    pub fn im_config(&self) -> router::im::ImConfig {
        router::im::ImConfig {
            partitions: self.backend.partitions,
            push_threshold: self.backend.push_threshold,
            dedup_window_ms: router::im::DEDUP_WINDOW_MS,
            auth_secret: self.backend.auth_secret.clone().into_bytes(),
            filter: self.content_filter.clone(),
        }
    }

    /// Files the embedded backend's log keeps open: one per partition, plus its lock.
    pub fn log_fds(&self) -> usize {
        match &self.storage {
            Some(_) => self.backend.partitions as usize + 2,
            None => 0,
        }
    }

    /// How long a drain spreads the clients' return over (`gate.drain_secs`).
    pub fn drain_time(&self) -> Duration {
        Duration::from_secs(u64::from(self.drain_secs))
    }

    /// A session with no complete frame for this long is closed (3 x heartbeat).
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat * 3
    }
}

impl DeliveryConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn report_flush(&self) -> Duration {
        Duration::from_millis(self.report_flush_ms)
    }
    pub fn notify_merge(&self) -> Duration {
        Duration::from_millis(self.notify_merge_ms)
    }
    pub fn flush_delay(&self) -> Duration {
        Duration::from_micros(self.flush_delay_us)
    }
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

    /// Checks every value and resolves defaults that depend on the host (shard count, gate id).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let g = &self.gate;
        let listen = router::config::addr("gate.listen", &g.listen)?;
        let shards = match NonZeroUsize::new(g.shards) {
            Some(n) => n,
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        if g.shards > 1024 {
            return Err(invalid("gate.shards", "at most 1024"));
        }
        if g.listen_backlog == 0 {
            return Err(invalid("gate.listen_backlog", "must be at least 1"));
        }
        if g.io_memory_kib < 64 {
            return Err(invalid("gate.io_memory_kib", "glommio needs at least 64"));
        }
        if !(1024..=16 << 20).contains(&g.max_frame) {
            return Err(invalid(
                "gate.max_frame",
                "must be between 1024 and 16777216 bytes",
            ));
        }
        if !(1..=3600).contains(&g.login_timeout_secs) {
            return Err(invalid(
                "gate.login_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=3600).contains(&g.heartbeat_secs) {
            return Err(invalid("gate.heartbeat_secs", "must be between 1 and 3600"));
        }
        let d = &self.delivery;
        if d.ack_timeout_ms == 0 || d.max_backoff_ms < d.ack_timeout_ms {
            return Err(invalid(
                "delivery.max_backoff_ms",
                "must be at least delivery.ack_timeout_ms, which must be non-zero",
            ));
        }
        if d.probe_timeout_ms == 0 {
            return Err(invalid("delivery.probe_timeout_ms", "must be non-zero"));
        }
        if d.max_pending == 0 {
            return Err(invalid("delivery.max_pending", "must be at least 1"));
        }
        if d.flush_delay_us > 1_000_000 {
            return Err(invalid(
                "delivery.flush_delay_us",
                "at most 1000000 (one second)",
            ));
        }
        if d.report_batch == 0 {
            return Err(invalid("delivery.report_batch", "must be at least 1"));
        }
        let l = &self.limits;
        if l.outbound_bytes < 64 * 1024 {
            return Err(invalid("limits.outbound_bytes", "must be at least 65536"));
        }
        if l.shard_outbound_bytes < l.outbound_bytes {
            return Err(invalid(
                "limits.shard_outbound_bytes",
                "must be at least limits.outbound_bytes",
            ));
        }
        if l.msgs_per_sec == 0 || l.burst == 0 {
            return Err(invalid(
                "limits.burst",
                "limits.msgs_per_sec and limits.burst must be non-zero",
            ));
        }
        if l.devices_per_uid == 0 {
            return Err(invalid("limits.devices_per_uid", "must be at least 1"));
        }
        let mut warnings = Vec::new();
        let embedded = self.backend.kind == BackendKind::Embedded;
        // The embedded backend's log keeps one file open per partition, plus its lock.
        let log_fds = if embedded && !self.backend.data_dir.is_empty() {
            self.backend.partitions as usize + 2
        } else {
            0
        };
        let allowed = connections_allowed(shards.get(), log_fds);
        let max_connections = match l.max_connections {
            0 => allowed,
            n if n > allowed => {
                warnings.push(format!(
                    "limits.max_connections = {n} is above what the open-file limit allows; using {allowed}"
                ));
                allowed
            }
            n => n,
        };
        let ws = validate_ws(g, self.auth.mode)?;
        let tls = validate_tls(g, listen)?;
        let handoff_queue = NonZeroUsize::new(g.handoff_queue)
            .ok_or_else(|| invalid("gate.handoff_queue", "must be at least 1"))?;
        match self.auth.mode {
            AuthMode::Dev
                if !listen.ip().is_loopback()
                    || tls.as_ref().is_some_and(|t| !t.listen.ip().is_loopback()) =>
            {
                let addr = match &tls {
                    Some(t) if listen.ip().is_loopback() => t.listen,
                    _ => listen,
                };
                return Err(invalid(
                    "auth.mode",
                    format!(
                        "\"dev\" accepts any token and is refused on the non-loopback address {addr}; use \"jwt\""
                    ),
                ));
            }
            AuthMode::Jwt if self.auth.secret.is_empty() => {
                return Err(invalid("auth.secret", "required when auth.mode = \"jwt\""));
            }
            AuthMode::Backend
                if self.backend.kind == BackendKind::Embedded
                    && self.backend.auth_secret.is_empty() =>
            {
                return Err(invalid(
                    "backend.auth_secret",
                    "required when auth.mode = \"backend\" with the embedded backend (it checks tokens with it)",
                ));
            }
            _ => {}
        }
        let b = &self.backend;
        if b.kind == BackendKind::Remote {
            if b.addr.is_empty() {
                return Err(invalid(
                    "backend.addr",
                    "required with backend.kind = \"remote\" (host:port of the backend's link)",
                ));
            }
            if b.max_inflight == 0 {
                return Err(invalid("backend.max_inflight", "must be at least 1"));
            }
            if !(10..=600_000).contains(&b.timeout_ms) {
                return Err(invalid(
                    "backend.timeout_ms",
                    "must be between 10 and 600000",
                ));
            }
        }
        if !(1..=1024).contains(&b.partitions) {
            return Err(invalid("backend.partitions", "must be between 1 and 1024"));
        }
        if b.queue < 16 {
            return Err(invalid("backend.queue", "must be at least 16"));
        }
        let storage = router::config::storage_settings(StorageKeys {
            data_dir: &b.data_dir,
            sync: b.sync,
            sync_interval_ms: b.sync_interval_ms,
            segment_bytes: b.segment_bytes,
            retention_bytes: b.retention_bytes,
            retention_days: b.retention_days,
            partitions: b.partitions,
            max_frame: g.max_frame as usize,
        })?;
        let content_filter = router::config::content_filter(&b.filter)?;
        let log = self.log.validate()?;
        if !(1..=3600).contains(&g.drain_secs) {
            return Err(invalid("gate.drain_secs", "must be between 1 and 3600"));
        }
        let admin_listen = match self.admin.listen.as_str() {
            "" => None,
            text => Some(router::config::addr("admin.listen", text)?),
        };
        let gate_id = if g.id.is_empty() {
            format!("{}:{}", hostname(), listen.port())
        } else {
            g.id.clone()
        };
        Ok(Settings {
            gate_id,
            listen,
            shards,
            listen_backlog: g.listen_backlog,
            io_memory: g.io_memory_kib * 1024,
            max_frame: g.max_frame,
            login_timeout: Duration::from_secs(g.login_timeout_secs),
            heartbeat: Duration::from_secs(u64::from(g.heartbeat_secs)),
            heartbeat_secs: g.heartbeat_secs,
            handoff_queue,
            peers: g.peers.clone(),
            huge_pages: g.huge_pages,
            drain_secs: g.drain_secs,
            admin_listen,
            ws,
            tls,
            auth_mode: self.auth.mode,
            auth_secret: self.auth.secret.clone().into_bytes(),
            backend: self.backend.clone(),
            // Storage and the filter belong to the reference backend; a remote one has its own.
            storage: if embedded { storage } else { None },
            content_filter: if embedded { content_filter } else { None },
            delivery: self.delivery.clone(),
            limits: self.limits.clone(),
            log,
            max_connections,
            warnings,
        })
    }
}

/// The `gate.ws_*` and `gate.http_*` keys.
fn validate_ws(g: &GateConfig, auth: AuthMode) -> Result<WsSettings, ConfigError> {
    let path = &g.ws_path;
    if !path.is_empty()
        && (!path.starts_with('/')
            || path.contains('?')
            || path.bytes().any(|b| b <= b' ' || b >= 0x7F))
    {
        return Err(invalid(
            "gate.ws_path",
            format!("{path:?} must be empty or a path starting with / (no query, no spaces)"),
        ));
    }
    if let Some(bad) = g
        .ws_allowed_origins
        .iter()
        .find(|o| o.is_empty() || o.bytes().any(|b| b <= b' ' || b >= 0x7F))
    {
        return Err(invalid(
            "gate.ws_allowed_origins",
            format!("{bad:?} is not an origin (e.g. \"https://chat.example.com\")"),
        ));
    }
    if !(256..=1 << 20).contains(&g.http_max_header_bytes) {
        return Err(invalid(
            "gate.http_max_header_bytes",
            "must be between 256 and 1048576",
        ));
    }
    if !(100..=600_000).contains(&g.http_header_timeout_ms) {
        return Err(invalid(
            "gate.http_header_timeout_ms",
            "must be between 100 and 600000",
        ));
    }
    Ok(WsSettings {
        path: path.clone(),
        allowed_origins: g.ws_allowed_origins.clone(),
        max_header_bytes: g.http_max_header_bytes,
        header_timeout: Duration::from_millis(g.http_header_timeout_ms),
        web_demo: g.web_demo.enabled(auth),
    })
}

/// The `gate.tls_*` keys: the listener address and the certificate and key, loaded, parsed
/// and checked against each other now (each failure names the key whose file is at fault).
fn validate_tls(g: &GateConfig, listen: SocketAddr) -> Result<Option<TlsSettings>, ConfigError> {
    if !(100..=600_000).contains(&g.tls_handshake_timeout_ms) {
        return Err(invalid(
            "gate.tls_handshake_timeout_ms",
            "must be between 100 and 600000",
        ));
    }
    if g.tls_listen.is_empty() {
        return Ok(None);
    }
    let tls_listen = router::config::addr("gate.tls_listen", &g.tls_listen)?;
    if tls_listen == listen && listen.port() != 0 {
        return Err(invalid(
            "gate.tls_listen",
            format!("{tls_listen} is gate.listen already; TLS needs a port of its own"),
        ));
    }
    if g.tls_cert.is_empty() {
        return Err(invalid(
            "gate.tls_cert",
            "required when gate.tls_listen is set (a PEM certificate chain)",
        ));
    }
    if g.tls_key.is_empty() {
        return Err(invalid(
            "gate.tls_key",
            "required when gate.tls_listen is set (the certificate's PEM private key)",
        ));
    }
    let server = crate::tls::server_config(&g.tls_cert, &g.tls_key).map_err(|err| {
        let key = match err.file() {
            crate::tls::PemFile::Cert => "gate.tls_cert",
            crate::tls::PemFile::Key => "gate.tls_key",
        };
        invalid(key, err.to_string())
    })?;
    Ok(Some(TlsSettings {
        listen: tls_listen,
        server: Arc::new(server),
        handshake_timeout: Duration::from_millis(g.tls_handshake_timeout_ms),
    }))
}

/// Descriptors kept for listeners, executors, rings and log files, plus per shard.
const FD_RESERVE: usize = 64;
const FD_RESERVE_PER_SHARD: usize = 16;

/// Descriptors the gate keeps for itself beside its connections, with `shards` shards.
pub fn fd_reserve(shards: usize, log_fds: usize) -> usize {
    FD_RESERVE + FD_RESERVE_PER_SHARD * shards + log_fds
}

/// Connections the open-file limit leaves room for.
fn connections_allowed(shards: usize, extra_fds: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return 1 << 20;
    }
    let reserve = fd_reserve(shards, extra_fds);
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve)
        .max(1)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn help_table_names_exactly_the_accepted_keys() {
        let value = toml::Value::try_from(Config::default()).expect("default config serialises");
        let mut accepted = Vec::new();
        flatten("", &value, &mut accepted);
        accepted.sort();
        let mut documented: Vec<String> =
            all_keys().iter().map(|(k, _, _)| k.to_string()).collect();
        documented.sort();
        assert_eq!(accepted, documented);
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg, Config::default());
        let s = cfg.validate().unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(s.max_frame, 65536);
        assert_eq!(s.idle_timeout(), Duration::from_secs(90));
        assert!(s.gate_id.ends_with(":7000"));
        assert_eq!(s.ws.path, "");
        assert!(s.ws.allowed_origins.is_empty());
        assert_eq!(s.ws.max_header_bytes, 8192);
        assert_eq!(s.ws.header_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_web_demo_follows_dev_auth_unless_set() {
        let on = |text: &str| {
            Config::from_toml(text)
                .unwrap()
                .validate()
                .unwrap()
                .ws
                .web_demo
        };
        let jwt = "[auth]\nmode = \"jwt\"\nsecret = \"k\"\n";
        assert!(on(""));
        assert!(!on(jwt));
        assert!(on(&format!("{jwt}[gate]\nweb_demo = true\n")));
        assert!(!on("[gate]\nweb_demo = false\n"));
        assert!(on("[gate]\nweb_demo = \"auto\"\n"));
        let err = Config::from_toml("[gate]\nweb_demo = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("web_demo"), "{err}");
        // The default round-trips through the file format.
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml("[gate]\nlisten_backlgo = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_backlgo"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused_with_the_key() {
        let err = Config::from_toml("[gate]\nshards = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shards"), "{err}");
    }

    #[test]
    fn dev_auth_is_refused_off_loopback() {
        let cfg = Config::from_toml("[gate]\nlisten = \"0.0.0.0:7000\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("auth.mode:"), "{err}");
    }

    #[test]
    fn jwt_needs_a_secret_and_backend_auth_needs_the_backend_key() {
        let err = Config::from_toml("[auth]\nmode = \"jwt\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("auth.secret:"), "{err}");
        let err = Config::from_toml("[auth]\nmode = \"backend\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("backend.auth_secret:"), "{err}");
        let ok = "[auth]\nmode = \"backend\"\n[backend]\nauth_secret = \"k\"\n";
        assert!(Config::from_toml(ok).unwrap().validate().is_ok());
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (text, key) in [
            ("[gate]\nmax_frame = 10\n", "gate.max_frame"),
            ("[gate]\nio_memory_kib = 4\n", "gate.io_memory_kib"),
            ("[gate]\nheartbeat_secs = 0\n", "gate.heartbeat_secs"),
            ("[gate]\nlisten = \"nonsense\"\n", "gate.listen"),
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            ("[gate]\nws_path = \"chat\"\n", "gate.ws_path"),
            ("[gate]\nws_path = \"/a b\"\n", "gate.ws_path"),
            (
                "[gate]\nws_allowed_origins = [\"\"]\n",
                "gate.ws_allowed_origins",
            ),
            (
                "[gate]\nhttp_max_header_bytes = 10\n",
                "gate.http_max_header_bytes",
            ),
            (
                "[gate]\nhttp_header_timeout_ms = 0\n",
                "gate.http_header_timeout_ms",
            ),
            (
                "[gate]\ntls_handshake_timeout_ms = 0\n",
                "gate.tls_handshake_timeout_ms",
            ),
            ("[gate]\ntls_listen = \"nowhere\"\n", "gate.tls_listen"),
            (
                "[gate]\nlisten = \"127.0.0.1:7000\"\ntls_listen = \"127.0.0.1:7000\"\n",
                "gate.tls_listen",
            ),
            ("[gate]\ntls_listen = \"127.0.0.1:0\"\n", "gate.tls_cert"),
            (
                "[gate]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\n",
                "gate.tls_key",
            ),
            (
                "[gate]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
                "gate.tls_cert",
            ),
        ] {
            let err = Config::from_toml(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }
}
