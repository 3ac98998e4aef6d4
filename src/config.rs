//! Configuration: the embedded default (`config/warren.toml`), overridden by a
//! file, then by `WARREN_<SECTION>_<KEY>` environment variables, then by flags
//! (`--set section.key=value` for any key). Every limit the broker enforces is
//! a value here. Validation names the key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The commented default configuration, embedded so the binary needs no file.
pub const DEFAULT_TOML: &str = include_str!("../config/warren.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub management: ManagementConfig,
    pub prometheus: ListenerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub memory: MemoryConfig,
    pub alarms: AlarmsConfig,
    pub auth: AuthConfig,
    pub identity: IdentityConfig,
    pub consumers: ConsumersConfig,
    pub runtime: RuntimeConfig,
    pub lifecycle: LifecycleConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    pub bind: String,
    pub port: u16,
    pub heartbeat: u16,
    pub frame_max: u32,
    pub channel_max: u16,
    pub max_message_size: u64,
    pub handshake_timeout_ms: u64,
    pub max_connections: usize,
    pub write_buffer_high_water: usize,
    /// A read of at least this many bytes from a connection nobody on it
    /// waits for replies on defers the next read by a timer tick; 0: never.
    pub read_coalesce_bytes: usize,
    /// The plain listener on `port`; false leaves only AMQPS.
    pub listen_plain: bool,
    /// AMQPS port, listened on when `[tls]` has a certificate and key.
    pub tls_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    pub bind: String,
    pub port: u16,
    /// How often message rates are sampled (RabbitMQ's
    /// `collect_statistics_interval`).
    pub sample_interval_ms: u64,
    /// HTTPS instead of HTTP on `port`.
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: String,
    pub port: u16,
    /// HTTPS instead of HTTP on `port`.
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
}

impl TlsConfig {
    /// A certificate and key are configured: AMQPS listens, HTTPS may.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Fraction of the memory limit (cgroup limit or physical RAM).
    pub memory_high_watermark: f64,
    /// Absolute watermark; replaces the fraction when > 0.
    pub memory_high_watermark_bytes: u64,
    /// Free bytes on the data directory's file system.
    pub disk_free_limit: u64,
    pub check_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Connection-serving threads; 0 = one per usable CPU.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The number of worker threads to start.
    pub fn workers(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// How long a graceful shutdown waits for connections to close.
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_size: u64,
    pub definitions_cache: u64,
    /// A definitions file (RabbitMQ's JSON) imported at every boot, after
    /// recovery and before the listeners serve; empty for none.
    pub load_definitions: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub queue_budget: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub default_user: String,
    pub default_pass: String,
    pub loopback_users: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub product: String,
    pub version: String,
    pub cluster_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersConfig {
    pub consumer_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
    /// "stdout" or "stderr".
    pub output: String,
}

/// A configuration problem, always naming the offending key or file.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        // The embedded default is checked by a unit test; failing here would
        // mean the binary itself was built broken.
        toml::from_str(DEFAULT_TOML).expect("embedded config/warren.toml is valid")
    }
}

impl Config {
    /// Default, then `file` (if any), then `WARREN_*` variables from `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::load_with(file, env, &[])
    }

    /// Default, then `file`, then `WARREN_*` variables, then `sets`
    /// (`section.key=value`, from `--set`), each as a string parsed with
    /// the type of the key's default.
    pub fn load_with(
        file: Option<&std::path::Path>,
        env: impl Iterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ConfigError> {
        let mut merged: toml::Value =
            toml::from_str(DEFAULT_TOML).map_err(|e| ConfigError(format!("embedded default config: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
            let over: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
            merge(&mut merged, over);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("WARREN_") else {
                continue;
            };
            let Some((section, field)) = rest.split_once('_') else {
                continue;
            };
            let section = section.to_ascii_lowercase();
            if merged.get(&section).and_then(|t| t.as_table()).is_none() {
                continue; // WARREN_* variables that are not settings (e.g. WARREN_BIN) are ignored
            }
            set_value(&mut merged, &section, &field.to_ascii_lowercase(), &value, &key)?;
        }
        for item in sets {
            let Some((path, value)) = item.split_once('=') else {
                return Err(ConfigError(format!("--set {item}: expected section.key=value")));
            };
            let Some((section, field)) = path.trim().split_once('.') else {
                return Err(ConfigError(format!("--set {item}: expected section.key=value")));
            };
            if merged.get(section).and_then(|t| t.as_table()).is_none() {
                return Err(ConfigError(format!("--set {item}: unknown section '{section}'")));
            }
            set_value(&mut merged, section, field, value, &format!("--set {path}"))?;
        }
        let cfg: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid configuration: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("invalid value for '{key}': {why}")));
        if self.amqp.frame_max != 0 && self.amqp.frame_max < 4096 {
            return bad("amqp.frame_max", "must be 0 or at least 4096");
        }
        if self.amqp.max_message_size == 0 || self.amqp.max_message_size > 536_870_912 {
            return bad("amqp.max_message_size", "must be between 1 and 536870912 (512 MiB)");
        }
        if self.amqp.write_buffer_high_water < 4096 {
            return bad("amqp.write_buffer_high_water", "must be at least 4096");
        }
        if self.storage.segment_size < 65536 || self.storage.segment_size > 1 << 31 {
            return bad("storage.segment_size", "must be between 65536 and 2147483648");
        }
        if !(100..=3_600_000).contains(&self.management.sample_interval_ms) {
            return bad("management.sample_interval_ms", "must be between 100 and 3600000");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        if !matches!(self.log.output.as_str(), "stdout" | "stderr") {
            return bad("log.output", "must be \"stdout\" or \"stderr\"");
        }
        let w = self.alarms.memory_high_watermark;
        if !(0.0..=1.0).contains(&w) {
            return bad("alarms.memory_high_watermark", "must be a fraction between 0 and 1");
        }
        if self.runtime.worker_threads > 1024 {
            return bad("runtime.worker_threads", "must be between 0 (automatic) and 1024");
        }
        if !(10..=3_600_000).contains(&self.alarms.check_interval_ms) {
            return bad("alarms.check_interval_ms", "must be between 10 and 3600000");
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            let key = if self.tls.cert_file.is_empty() { "tls.cert_file" } else { "tls.key_file" };
            return bad(key, "tls.cert_file and tls.key_file are set together");
        }
        let tls = self.tls.enabled();
        if self.management.tls && !tls {
            return bad("management.tls", "needs tls.cert_file and tls.key_file");
        }
        if self.prometheus.tls && !tls {
            return bad("prometheus.tls", "needs tls.cert_file and tls.key_file");
        }
        if !self.amqp.listen_plain && !tls {
            return bad(
                "amqp.listen_plain",
                "false leaves no AMQP listener without tls.cert_file and tls.key_file",
            );
        }
        if self.tls.verify_peer && self.tls.ca_file.is_empty() {
            return bad("tls.ca_file", "needed by tls.verify_peer");
        }
        if self.tls.fail_if_no_peer_cert && !self.tls.verify_peer {
            return bad("tls.fail_if_no_peer_cert", "needs tls.verify_peer");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Sets `section.field` from a string, typed like the key's default;
/// `origin` names where the value came from in errors.
fn set_value(
    merged: &mut toml::Value,
    section: &str,
    field: &str,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let Some(table) = merged.get_mut(section).and_then(|t| t.as_table_mut()) else {
        return Err(ConfigError(format!("{origin}: unknown section '{section}'")));
    };
    let Some(current) = table.get(field) else {
        return Err(ConfigError(format!("{origin}: unknown setting '{section}.{field}'")));
    };
    let parsed = parse_env_value(current, raw)
        .ok_or_else(|| ConfigError(format!("{origin}: invalid value '{raw}' for '{section}.{field}'")))?;
    table.insert(field.to_string(), parsed);
    Ok(())
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        // `memory_high_watermark = 1` in a file means 1.0.
        (toml::Value::Float(b), toml::Value::Integer(i)) => *b = i as f64,
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Parses an environment value with the type of the default it replaces.
fn parse_env_value(current: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match current {
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_workers_are_one_per_cpu() {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let auto = RuntimeConfig { worker_threads: 0 };
        assert_eq!(auto.workers(), cpus);
        assert_eq!(RuntimeConfig { worker_threads: 6 }.workers(), 6);
        assert_eq!(Config::default().runtime.worker_threads, 0);
    }

    #[test]
    fn embedded_default_parses_and_validates() {
        let c = Config::load(None, std::iter::empty()).unwrap();
        assert_eq!(c.amqp.port, 5672);
        assert_eq!(c.management.port, 15672);
        assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn env_overrides_and_names_bad_keys() {
        let env = vec![("WARREN_AMQP_PORT".to_string(), "5673".to_string())];
        let c = Config::load(None, env.into_iter()).unwrap();
        assert_eq!(c.amqp.port, 5673);
        let env = vec![("WARREN_AMQP_PORT".to_string(), "abc".to_string())];
        let e = Config::load(None, env.into_iter()).unwrap_err();
        assert!(e.0.contains("amqp.port"), "{e}");
        let env = vec![("WARREN_AMQP_FRAME_MAX".to_string(), "100".to_string())];
        let e = Config::load(None, env.into_iter()).unwrap_err();
        assert!(e.0.contains("amqp.frame_max"), "{e}");
    }

    /// Every key of the embedded default can be set from the environment
    /// and from `--set`, and a value of the wrong type names the key.
    #[test]
    fn every_key_is_reachable_from_env_and_set() {
        let default: toml::Value = toml::from_str(DEFAULT_TOML).unwrap();
        let mut keys = 0;
        for (section, table) in default.as_table().unwrap() {
            for (key, value) in table.as_table().unwrap() {
                keys += 1;
                // A different valid value where the type allows it.
                let (raw, want) = match value {
                    toml::Value::Integer(i) => ((i + 1).to_string(), toml::Value::Integer(i + 1)),
                    toml::Value::Float(_) => ("0.5".to_string(), toml::Value::Float(0.5)),
                    toml::Value::String(s) => (s.clone(), value.clone()),
                    toml::Value::Boolean(b) => (b.to_string(), value.clone()),
                    toml::Value::Array(_) => {
                        ("a,b".to_string(), toml::Value::Array(vec!["a".into(), "b".into()]))
                    }
                    other => panic!("{section}.{key}: unexpected type {other:?}"),
                };
                let var = format!("WARREN_{}_{}", section.to_uppercase(), key.to_uppercase());
                let from_env = Config::load(None, vec![(var.clone(), raw.clone())].into_iter())
                    .unwrap_or_else(|e| panic!("{var}={raw}: {e}"));
                let from_set =
                    Config::load_with(None, std::iter::empty(), &[format!("{section}.{key}={raw}")])
                        .unwrap_or_else(|e| panic!("--set {section}.{key}={raw}: {e}"));
                for cfg in [from_env, from_set] {
                    let got = toml::Value::try_from(&cfg).unwrap();
                    assert_eq!(got[section.as_str()][key.as_str()], want, "{section}.{key}");
                }
                if matches!(value, toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))
                {
                    let e =
                        Config::load(None, vec![(var.clone(), "zz".to_string())].into_iter()).unwrap_err();
                    assert!(e.0.contains(&format!("'{section}.{key}'")), "{e}");
                    let e = Config::load_with(None, std::iter::empty(), &[format!("{section}.{key}=zz")])
                        .unwrap_err();
                    assert!(e.0.contains(&format!("'{section}.{key}'")), "{e}");
                }
            }
        }
        assert!(keys > 40, "{keys} keys");
        let e = Config::load_with(None, std::iter::empty(), &["amqp.nope=1".into()]).unwrap_err();
        assert!(e.0.contains("amqp.nope"), "{e}");
    }

    #[test]
    fn tls_and_alarm_settings_are_checked_together() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load_with(None, std::iter::empty(), &sets)
        };
        let e = load(&["management.tls=true"]).unwrap_err();
        assert!(e.0.contains("management.tls"), "{e}");
        let e = load(&["amqp.listen_plain=false"]).unwrap_err();
        assert!(e.0.contains("amqp.listen_plain"), "{e}");
        let e = load(&["tls.cert_file=/c.pem"]).unwrap_err();
        assert!(e.0.contains("tls.key_file"), "{e}");
        let e = load(&["tls.cert_file=/c.pem", "tls.key_file=/k.pem", "tls.verify_peer=true"]).unwrap_err();
        assert!(e.0.contains("tls.ca_file"), "{e}");
        let e = load(&["alarms.memory_high_watermark=1.5"]).unwrap_err();
        assert!(e.0.contains("alarms.memory_high_watermark"), "{e}");
        let ok = load(&[
            "tls.cert_file=/c.pem",
            "tls.key_file=/k.pem",
            "amqp.listen_plain=false",
            "management.tls=true",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }
}
