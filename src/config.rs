//! Configuration: the embedded default (`config/warren.toml`), overridden by a
//! file, then by `WARREN_<SECTION>_<KEY>` environment variables, then by flags.
//! Every limit the broker enforces is a value here. Validation names the key.

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
    pub storage: StorageConfig,
    pub memory: MemoryConfig,
    pub auth: AuthConfig,
    pub identity: IdentityConfig,
    pub consumers: ConsumersConfig,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    pub bind: String,
    pub port: u16,
    /// How often message rates are sampled (RabbitMQ's
    /// `collect_statistics_interval`).
    pub sample_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: String,
    pub port: u16,
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
            let field = field.to_ascii_lowercase();
            let Some(table) = merged.get_mut(&section).and_then(|t| t.as_table_mut()) else {
                continue; // WARREN_* variables that are not settings (e.g. WARREN_BIN) are ignored
            };
            let Some(current) = table.get(&field) else {
                return Err(ConfigError(format!("{key}: unknown setting '{section}.{field}'")));
            };
            let parsed = parse_env_value(current, &value).ok_or_else(|| {
                ConfigError(format!("{key}: invalid value '{value}' for '{section}.{field}'"))
            })?;
            table.insert(field, parsed);
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
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
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
}
