//! Policies and operator policies (`rabbit_policy`, `rabbit_policies`): a
//! regex on names, an `apply-to`, a priority and a definition. At most one
//! policy and one operator policy apply to an object: the matching one with
//! the highest priority. A queue's effective settings combine its arguments,
//! its policy and its operator policy as RabbitMQ does: numeric limits take
//! the lowest of the three, everything else prefers the argument.

use crate::queue::args::QueueArgs;
use crate::store::definitions::PolicyDef;
use regex::Regex;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Keys a (user) policy may set, as RabbitMQ 3.13 recognises them for
/// classic queues and exchanges; keys Warren accepts but does not act on are
/// listed too so that definitions exported from RabbitMQ import.
const POLICY_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "alternate-exchange",
    "delivery-limit",
    "consumer-timeout",
    "queue-mode",
    "queue-version",
    "queue-master-locator",
    "queue-leader-locator",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "ha-sync-batch-size",
    "federation-upstream",
    "federation-upstream-set",
    "max-age",
    "stream-max-segment-size-bytes",
    "dead-letter-strategy",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "initial-cluster-size",
];

/// Keys an operator policy may set (`rabbit_policies:register/0`, operator
/// policy validators).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "queue-version",
    "overflow",
    "target-group-size",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Queue,
    Exchange,
}

/// A validated, compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub def: PolicyDef,
    pattern: Regex,
}

fn non_neg_int(key: &str, v: &Value, min: i64) -> Result<(), String> {
    match v.as_i64() {
        Some(i) if i >= min => Ok(()),
        _ if min == 0 => Err(format!("{key} must be a non-negative integer, got {v}")),
        _ => Err(format!("{key} must be an integer of at least {min}, got {v}")),
    }
}

fn string(key: &str, v: &Value) -> Result<(), String> {
    if v.is_string() { Ok(()) } else { Err(format!("{key} must be a string, got {v}")) }
}

/// Checks one definition entry's value (`rabbit_policies:validate_policy0`).
fn validate_value(key: &str, v: &Value) -> Result<(), String> {
    match key {
        "message-ttl" | "max-length" | "max-length-bytes" | "delivery-limit" | "consumer-timeout" => {
            non_neg_int(key, v, 0)
        }
        "expires" => non_neg_int(key, v, 1),
        "overflow" => match v.as_str() {
            Some("drop-head" | "reject-publish" | "reject-publish-dlx") => Ok(()),
            _ => Err(format!("\"{}\" is not a valid overflow value", v.as_str().unwrap_or(&v.to_string()))),
        },
        "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange" => string(key, v),
        "queue-mode" => match v.as_str() {
            Some("default" | "lazy") => Ok(()),
            _ => Err(format!("{v} is not a valid queue-mode value")),
        },
        _ => Ok(()),
    }
}

impl Policy {
    /// Validates a policy as the management API receives it; errors carry
    /// RabbitMQ's wording (`Validation failed` …).
    pub fn new(def: PolicyDef, operator: bool) -> Result<Self, String> {
        let pattern = Regex::new(&def.pattern).map_err(|e| {
            format!("Validation failed\n\n<<\"{}\">> is not a valid regex: {e}\n", def.pattern)
        })?;
        const APPLY: &[&str] = &["all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"];
        if !APPLY.contains(&def.apply_to.as_str()) {
            return Err(format!("Validation failed\n\n'{}' is not a valid apply-to value\n", def.apply_to));
        }
        if def.definition.is_empty() {
            return Err("Validation failed\n\nno policy provided\n".to_string());
        }
        let allowed = if operator { OPERATOR_KEYS } else { POLICY_KEYS };
        let unknown: Vec<String> = def
            .definition
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| format!("<<\"{k}\">>"))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "Validation failed\n\n[{}] are not recognised policy settings\n",
                unknown.join(",")
            ));
        }
        if def.definition.contains_key("dead-letter-routing-key")
            && !def.definition.contains_key("dead-letter-exchange")
        {
            return Err("Validation failed\n\ndead-letter-routing-key requires dead-letter-exchange\n".into());
        }
        for (k, v) in &def.definition {
            validate_value(k, v).map_err(|e| format!("Validation failed\n\n{e}\n"))?;
        }
        Ok(Policy { def, pattern })
    }

    pub fn applies_to(&self, target: Target, name: &str) -> bool {
        let kind_ok = matches!(
            (self.def.apply_to.as_str(), target),
            ("all", _) | ("queues" | "classic_queues", Target::Queue) | ("exchanges", Target::Exchange)
        );
        kind_ok && self.pattern.is_match(name)
    }

    fn int(&self, key: &str) -> Option<u64> {
        self.def.definition.get(key).and_then(Value::as_u64)
    }

    fn str(&self, key: &str) -> Option<String> {
        self.def.definition.get(key).and_then(Value::as_str).map(str::to_string)
    }
}

/// The policy that applies to `name`: highest priority among the matching
/// ones (ties: the first by name, so the choice is stable).
pub fn select(policies: &[Arc<Policy>], target: Target, name: &str) -> Option<Arc<Policy>> {
    policies
        .iter()
        .filter(|p| p.applies_to(target, name))
        .max_by(|a, b| a.def.priority.cmp(&b.def.priority).then_with(|| b.def.name.cmp(&a.def.name)))
        .cloned()
}

/// What applies to one queue, for management (`policy`, `operator_policy`,
/// `effective_policy_definition`).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub definition: Map<String, Value>,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A queue's effective settings from its declared arguments, its policy and
/// its operator policy (`rabbit_queue_type_util:args_policy_lookup` with the
/// operator-policy merge of `rabbit_policy:merge_policy_value`).
pub fn effective_queue_args(
    declared: &QueueArgs,
    policy: Option<&Policy>,
    operator: Option<&Policy>,
) -> (QueueArgs, Applied) {
    let mut a = declared.clone();
    let mut applied = Applied {
        policy: policy.map(|p| p.def.name.clone()),
        operator_policy: operator.map(|p| p.def.name.clone()),
        definition: Map::new(),
    };
    let numeric = |key: &str| -> Option<u64> {
        min_opt(policy.and_then(|p| p.int(key)), operator.and_then(|p| p.int(key)))
    };
    a.message_ttl = min_opt(a.message_ttl, numeric("message-ttl"));
    a.expires = min_opt(a.expires, numeric("expires"));
    a.max_length = min_opt(a.max_length, numeric("max-length"));
    a.max_length_bytes = min_opt(a.max_length_bytes, numeric("max-length-bytes"));
    a.delivery_limit = min_opt(a.delivery_limit, numeric("delivery-limit"));
    if a.overflow.is_none() {
        a.overflow =
            policy.and_then(|p| p.str("overflow")).or_else(|| operator.and_then(|p| p.str("overflow")));
    }
    if a.dead_letter_exchange.is_none() {
        a.dead_letter_exchange = policy.and_then(|p| p.str("dead-letter-exchange"));
        if a.dead_letter_routing_key.is_none() && a.dead_letter_exchange.is_some() {
            a.dead_letter_routing_key = policy.and_then(|p| p.str("dead-letter-routing-key"));
        }
    }
    if a.consumer_timeout.is_none() {
        a.consumer_timeout = policy.and_then(|p| p.int("consumer-timeout"));
    }
    // The merged definition management shows: the policy's keys, with the
    // operator policy's numeric limits folded in (lower wins).
    if let Some(p) = policy {
        applied.definition = p.def.definition.clone();
    }
    if let Some(op) = operator {
        for (k, v) in &op.def.definition {
            let keep = match (applied.definition.get(k).and_then(Value::as_u64), v.as_u64()) {
                (Some(mine), Some(theirs)) => theirs < mine,
                (None, _) => true,
                _ => false,
            };
            if keep {
                applied.definition.insert(k.clone(), v.clone());
            }
        }
    }
    (a, applied)
}

/// An exchange's alternate exchange: the argument wins over the policy.
pub fn effective_alternate_exchange(argument: Option<String>, policy: Option<&Policy>) -> Option<String> {
    argument.or_else(|| policy.and_then(|p| p.str("alternate-exchange")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, pattern: &str, priority: i64, def: Value, operator: bool) -> Arc<Policy> {
        Arc::new(
            Policy::new(
                PolicyDef {
                    vhost: "/".into(),
                    name: name.into(),
                    pattern: pattern.into(),
                    apply_to: "queues".into(),
                    definition: def.as_object().cloned().unwrap_or_default(),
                    priority,
                },
                operator,
            )
            .unwrap(),
        )
    }

    #[test]
    fn highest_priority_wins() {
        let ps = vec![
            policy("low", "^t", 0, json!({"message-ttl": 1}), false),
            policy("high", "^tasks", 5, json!({"message-ttl": 2}), false),
        ];
        assert_eq!(select(&ps, Target::Queue, "tasks").unwrap().def.name, "high");
        assert_eq!(select(&ps, Target::Queue, "tx").unwrap().def.name, "low");
        assert!(select(&ps, Target::Exchange, "tasks").is_none());
        assert!(select(&ps, Target::Queue, "other").is_none());
    }

    #[test]
    fn arguments_policy_and_operator_policy_combine() {
        let p = policy(
            "p",
            ".*",
            0,
            json!({"message-ttl": 500, "max-length": 10, "dead-letter-exchange": "dlx", "overflow": "reject-publish"}),
            false,
        );
        let op = policy("op", ".*", 0, json!({"message-ttl": 100, "max-length": 50}), true);
        let declared = QueueArgs {
            message_ttl: Some(1000),
            dead_letter_exchange: Some("mine".into()),
            ..Default::default()
        };
        let (a, applied) = effective_queue_args(&declared, Some(&p), Some(&op));
        assert_eq!(a.message_ttl, Some(100));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("mine"));
        assert_eq!(a.overflow.as_deref(), Some("reject-publish"));
        assert_eq!(applied.definition.get("message-ttl"), Some(&json!(100)));
        assert_eq!(applied.definition.get("max-length"), Some(&json!(10)));
    }

    #[test]
    fn validation_texts() {
        let bad = |def: Value, op: bool| {
            Policy::new(
                PolicyDef {
                    vhost: "/".into(),
                    name: "p".into(),
                    pattern: ".*".into(),
                    apply_to: "queues".into(),
                    definition: def.as_object().cloned().unwrap_or_default(),
                    priority: 0,
                },
                op,
            )
            .unwrap_err()
        };
        assert_eq!(
            bad(json!({"foo": 1}), false),
            "Validation failed\n\n[<<\"foo\">>] are not recognised policy settings\n"
        );
        assert!(bad(json!({"dead-letter-exchange": "x"}), true).contains("not recognised"));
        assert!(bad(json!({"message-ttl": -1}), false).contains("message-ttl"));
    }
}
