//! Server configuration: flags > environment > config file > defaults, validated at start.
//!
//! Why it exists: one typed [`Config`] is what the server runs on, whether it was built by the
//! CLI (`wedsync serve`), by a TOML file, or by a test ([`Config::for_tests`]). Validation lives
//! here so a misconfigured server refuses to start with a clear message instead of failing on
//! the first connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// When an update is relayed to other clients relative to being made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Relay and acknowledge only after the update is flushed to disk (default): whatever any
    /// client has seen survives kill -9.
    #[default]
    Strict,
    /// Relay before the flush (acks still wait for it): lower latency, and a crash may lose the
    /// last few milliseconds of updates that other clients already saw.
    Relaxed,
}

/// Per-connection and per-room limits. Every one is configurable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket frame and message accepted, in bytes (larger: close 1009).
    pub max_message_bytes: usize,
    /// Outgoing messages queued per connection before it counts as too slow (close 1013).
    pub outgoing_queue: usize,
    /// Interval between pings.
    #[serde(with = "humantime_secs")]
    pub ping_interval: Duration,
    /// Consecutive unanswered pings before the connection is closed.
    pub max_missed_pongs: u32,
    /// How long a room stays in memory after its last client leaves.
    #[serde(with = "humantime_secs")]
    pub room_idle_unload: Duration,
    /// Awareness states not renewed for this long are removed (y-protocols uses 30 s).
    #[serde(with = "humantime_secs")]
    pub awareness_timeout: Duration,
    /// Time allowed for loading a document from the store before clients are refused.
    #[serde(with = "humantime_secs")]
    pub load_timeout: Duration,
    /// Time a client may take to send the headers of one HTTP request (slowloris), also the
    /// longest an idle keep-alive HTTP connection stays open.
    #[serde(with = "humantime_secs")]
    pub header_read_timeout: Duration,
    /// Time a client may take to send the whole body of one HTTP request, from its headers on
    /// (a slow POST); over it: HTTP 408 and the connection closed.
    #[serde(with = "humantime_secs")]
    pub body_read_timeout: Duration,
    /// Time from TCP accept until the first request was read and, for a WebSocket, the upgrade
    /// completed. A connection that has not got that far is closed.
    #[serde(with = "humantime_secs")]
    pub handshake_timeout: Duration,
    /// Open connections (HTTP and WebSocket) the server accepts in all; over it: HTTP 503.
    pub max_connections: usize,
    /// Open connections from one IP address; over it: HTTP 503.
    pub max_connections_per_ip: usize,
    /// Document update messages (sync step 2 / update) per second per connection, sustained.
    pub update_rate: f64,
    /// Document update messages one connection may send in a burst above `update_rate`.
    pub update_burst: f64,
    /// Awareness messages per second per connection, sustained.
    pub awareness_rate: f64,
    /// Awareness messages one connection may send in a burst above `awareness_rate`.
    pub awareness_burst: f64,
    /// Largest stored size of one document in bytes (snapshot + update log); an update that
    /// would push it over is refused.
    pub max_doc_bytes: u64,
    /// Updates larger than this are decoded on the blocking pool under `decode_timeout`
    /// (smaller ones inline: cheaper than a thread hop).
    pub decode_inline_max_bytes: usize,
    /// Updates checked on the blocking pool at once, server-wide (a timed-out check still
    /// holds its slot until it ends). Default: the number of CPUs, at least 2.
    pub max_parallel_decodes: usize,
    /// Longest time one update may take to decode before the connection is closed (1007).
    #[serde(with = "humantime_secs")]
    pub decode_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            outgoing_queue: 512,
            ping_interval: Duration::from_secs(30),
            max_missed_pongs: 2,
            room_idle_unload: Duration::from_secs(30),
            awareness_timeout: Duration::from_secs(30),
            load_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 8192,
            max_connections_per_ip: 512,
            update_rate: 1000.0,
            update_burst: 2000.0,
            awareness_rate: 100.0,
            awareness_burst: 300.0,
            max_doc_bytes: 50 * 1024 * 1024,
            decode_inline_max_bytes: 4096,
            max_parallel_decodes: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
            decode_timeout: Duration::from_secs(2),
        }
    }
}

/// Durations in config files are whole seconds (`ping_interval = 30`).
mod humantime_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !(0.0..=86_400.0 * 365.0).contains(&secs) {
            return Err(serde::de::Error::custom("duration out of range (seconds)"));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// Authentication settings. No key at all means open development mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 shared secret.
    pub jwt_secret: Option<String>,
    /// PEM public key file (RS256, ES256 or EdDSA).
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Allowed clock skew for `exp`/`nbf`, in seconds.
    pub jwt_leeway_secs: Option<u64>,
}

impl AuthSettings {
    /// True when no key is configured (open development mode).
    pub fn is_open(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none()
    }
}

/// Everything the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub auth: AuthSettings,
    /// Allow open mode (no JWT key) on a non-loopback address.
    pub insecure_open: bool,
    pub durability: Durability,
    pub limits: Limits,
    /// Cluster mode (Redis); `None` runs a single node on sled alone.
    pub cluster: Option<ClusterSettings>,
}

/// Cluster mode: several nodes share rooms through Redis (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// `redis://HOST:PORT[/DB]` (or `rediss://`, `redis+unix://`).
    pub redis_url: String,
    /// This node's name, unique in the cluster (logs, presence, metrics).
    pub node_id: String,
    pub tuning: ClusterTuning,
}

/// Cluster knobs from the config file's `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTuning {
    /// `redis_url` and `node_id` may also come from the file (flags and env win).
    pub redis_url: Option<String>,
    pub node_id: Option<String>,
    /// Stream entries after the snapshot before a node compacts the room's stream.
    pub compact_entries: u64,
    /// Stream bytes after the snapshot before a compaction.
    pub compact_bytes: u64,
    /// Stream history kept behind a snapshot for readers that lag (seconds).
    #[serde(with = "humantime_secs")]
    pub retention: Duration,
    /// Bytes of updates a node keeps in its sled outbox while Redis is unreachable; beyond it
    /// writers are closed with 1013.
    pub outbox_max_bytes: u64,
    /// Deadline of one Redis command (seconds); a slower Redis counts as down.
    #[serde(with = "humantime_secs")]
    pub redis_timeout: Duration,
    /// How often a node checks that Redis is up and kept its data (seconds).
    #[serde(with = "humantime_secs")]
    pub health_interval: Duration,
    /// After a stream read that returned entries, wait this long before the next read
    /// (seconds; default 0.002). Trades cross-node latency for Redis CPU: each read of a
    /// node's reader costs Redis work in proportion to the number of rooms the node hosts
    /// (measured: -63 % Redis CPU for +0.5 ms p50 at 300 rooms, docs/benchmarks.md c4).
    #[serde(with = "humantime_secs")]
    pub read_coalesce: Duration,
}

impl Default for ClusterTuning {
    fn default() -> Self {
        ClusterTuning {
            redis_url: None,
            node_id: None,
            compact_entries: 500,
            compact_bytes: 4 * 1024 * 1024,
            retention: Duration::from_secs(60),
            outbox_max_bytes: 64 * 1024 * 1024,
            redis_timeout: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            read_coalesce: Duration::from_millis(2),
        }
    }
}

/// Configuration errors, reported before the server starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid listen address {0:?}: expected HOST:PORT, e.g. 127.0.0.1:1234")]
    Listen(String),
    #[error(
        "no JWT key is configured (open development mode: everyone may edit every document) and \
         {0} is not a loopback address; configure --jwt-secret or --jwt-public-key, or pass \
         --insecure-open if you really mean it"
    )]
    OpenModeOnPublicAddress(SocketAddr),
    #[error("configure either --jwt-secret or --jwt-public-key, not both")]
    TwoKeys,
    #[error("invalid limit: {0}")]
    Limit(&'static str),
    #[error("invalid cluster setting: {0}")]
    Cluster(String),
}

/// The optional contents of a TOML config file. Unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub insecure_open: Option<bool>,
    pub durability: Option<Durability>,
    pub auth: AuthSettings,
    pub limits: Option<Limits>,
    pub cluster: Option<ClusterTuning>,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

/// Default listen address from the contract.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1234";
/// Default data directory from the contract.
pub const DEFAULT_DATA_DIR: &str = "./data";

impl Config {
    /// A configuration for in-process tests: port 0 on loopback, the given data dir, open mode,
    /// default limits.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_owned(),
            auth: AuthSettings::default(),
            insecure_open: false,
            durability: Durability::Strict,
            limits: Limits::default(),
            cluster: None,
        }
    }

    /// Parses a listen address.
    pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| ConfigError::Listen(s.to_owned()))
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key.is_some() {
            return Err(ConfigError::TwoKeys);
        }
        if self.auth.is_open() && !self.listen.ip().is_loopback() && !self.insecure_open {
            return Err(ConfigError::OpenModeOnPublicAddress(self.listen));
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return Err(ConfigError::Limit(
                "max_message_bytes must be at least 1024",
            ));
        }
        if l.max_parallel_decodes == 0 {
            return Err(ConfigError::Limit(
                "max_parallel_decodes must be at least 1",
            ));
        }
        if l.outgoing_queue == 0 {
            return Err(ConfigError::Limit("outgoing_queue must be at least 1"));
        }
        if l.ping_interval.is_zero() || l.max_missed_pongs == 0 {
            return Err(ConfigError::Limit(
                "ping_interval and max_missed_pongs must be positive",
            ));
        }
        if l.awareness_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Limit("awareness_timeout must be at least 1 s"));
        }
        if l.header_read_timeout.is_zero()
            || l.handshake_timeout.is_zero()
            || l.body_read_timeout.is_zero()
            || l.decode_timeout.is_zero()
        {
            return Err(ConfigError::Limit(
                "header_read_timeout, handshake_timeout, body_read_timeout and decode_timeout must be positive",
            ));
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err(ConfigError::Limit(
                "max_connections and max_connections_per_ip must be at least 1",
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let burst = |x: f64| x.is_finite() && x >= 1.0;
        let rates_ok = positive(l.update_rate)
            && positive(l.awareness_rate)
            && burst(l.update_burst)
            && burst(l.awareness_burst);
        if !rates_ok {
            return Err(ConfigError::Limit(
                "update_rate and awareness_rate must be positive, their bursts at least 1",
            ));
        }
        if l.max_doc_bytes < 1024 {
            return Err(ConfigError::Limit("max_doc_bytes must be at least 1024"));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        Ok(())
    }
}

impl ClusterSettings {
    /// Checks the node id (it is written into every stream entry) and the knobs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok {
            return Err(ConfigError::Cluster(format!(
                "node id {:?} must be 1-64 characters of A-Z a-z 0-9 - _ .",
                self.node_id
            )));
        }
        if !(self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://")
            || self.redis_url.starts_with("redis+unix://")
            || self.redis_url.starts_with("unix://"))
        {
            return Err(ConfigError::Cluster(format!(
                "redis url {:?} must start with redis://, rediss:// or redis+unix://",
                self.redis_url
            )));
        }
        let t = &self.tuning;
        if t.compact_entries == 0 || t.compact_bytes == 0 {
            return Err(ConfigError::Cluster(
                "compact_entries and compact_bytes must be positive".into(),
            ));
        }
        if t.redis_timeout.is_zero() || t.health_interval.is_zero() {
            return Err(ConfigError::Cluster(
                "redis_timeout and health_interval must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_refuses_public_address() {
        let mut c = Config::for_tests(Path::new("/tmp/x"));
        assert!(c.validate().is_ok());
        c.listen = "0.0.0.0:1234".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OpenModeOnPublicAddress(_))
        ));
        c.insecure_open = true;
        assert!(c.validate().is_ok());
        c.insecure_open = false;
        c.auth.jwt_secret = Some("s".into());
        assert!(c.validate().is_ok());
        c.auth.jwt_public_key = Some("k.pem".into());
        assert!(matches!(c.validate(), Err(ConfigError::TwoKeys)));
    }

    #[test]
    fn config_file_parses_and_rejects_unknown_keys() {
        let f: ConfigFile = toml::from_str(
            "listen = \"127.0.0.1:9000\"\ndurability = \"relaxed\"\n[auth]\njwt_secret = \"x\"\n[limits]\nping_interval = 10\n",
        )
        .unwrap();
        assert_eq!(f.durability, Some(Durability::Relaxed));
        assert_eq!(f.limits.unwrap().ping_interval, Duration::from_secs(10));
        assert!(toml::from_str::<ConfigFile>("lisen = \"x\"").is_err());
    }

    #[test]
    fn cluster_section_parses_and_validates() {
        let f: ConfigFile =
            toml::from_str("[cluster]\ncompact_entries = 50\nretention = 2.5\nnode_id = \"n1\"\n")
                .unwrap();
        let t = f.cluster.unwrap();
        assert_eq!(t.compact_entries, 50);
        assert_eq!(t.retention, Duration::from_millis(2500));
        assert_eq!(
            t.outbox_max_bytes,
            ClusterTuning::default().outbox_max_bytes
        );
        assert!(toml::from_str::<ConfigFile>("[cluster]\nretension = 2\n").is_err());
        let ok = ClusterSettings {
            redis_url: "redis://127.0.0.1:6379".into(),
            node_id: "node-a_1.x".into(),
            tuning: t,
        };
        assert!(ok.validate().is_ok());
        for bad_id in ["", "a b", "ü", &"x".repeat(65)] {
            let c = ClusterSettings {
                node_id: bad_id.to_string(),
                ..ok.clone()
            };
            assert!(c.validate().is_err(), "{bad_id:?}");
        }
        let c = ClusterSettings {
            redis_url: "127.0.0.1:6379".into(),
            ..ok.clone()
        };
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.tuning.compact_entries = 0;
        assert!(c.validate().is_err());
    }
}
