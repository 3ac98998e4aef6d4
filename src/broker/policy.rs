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

/// Keys a (user) policy may set, as RabbitMQ 3.13 recognises them (core,
/// quorum queues, streams, mirroring, federation, sharding), so that
/// definitions exported from RabbitMQ import; Warren acts on the ones
/// `effective_queue_args` and `effective_alternate_exchange` read.
const POLICY_KEYS: &[&str] = &[
    "alternate-exchange",
    "consumer-timeout",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "queue-mode",
    "queue-version",
    "overflow",
    "delivery-limit",
    "max-age",
    "stream-max-segment-size-bytes",
    "stream-filter-size-bytes",
    "queue-leader-locator",
    "initial-cluster-size",
    "target-group-size",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-master-locator",
    "federation-upstream",
    "federation-upstream-pattern",
    "federation-upstream-set",
    "shards-per-node",
    "routing-key",
];

/// Keys an operator policy may set (`operator_policy_validator`).
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
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
];

/// Keys that make a policy inapplicable to a classic queue
/// (`rabbit_classic_queue:capabilities/0` `unsupported_policies`); Warren's
/// classic queues do support `delivery-limit`, so it is not here.
const UNSUPPORTED_BY_CLASSIC: &[&str] = &[
    "max-age",
    "stream-max-segment-size-bytes",
    "queue-leader-locator",
    "initial-cluster-size",
    "dead-letter-strategy",
    "max-in-memory-length",
    "max-in-memory-bytes",
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

/// A JSON value printed as Erlang's `~tp` prints the decoded term, as
/// RabbitMQ's validation messages show it.
pub fn erl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(erl).collect::<Vec<_>>().join(",")),
        Value::Object(m) => format!(
            "[{}]",
            m.iter().map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v))).collect::<Vec<_>>().join(",")
        ),
    }
}

fn int_at_least(v: &Value, min: i64) -> bool {
    v.as_i64().is_some_and(|i| i >= min)
}

/// Checks one definition entry's value (`rabbit_policies:validate_policy0`).
fn validate_value(key: &str, v: &Value) -> Result<(), String> {
    let (ok, what) = match key {
        "alternate-exchange" => (v.is_string(), "is not a valid alternate exchange name"),
        "consumer-timeout" => (int_at_least(v, 0), "is not a valid consumer timeout"),
        "dead-letter-exchange" => (v.is_string(), "is not a valid dead letter exchange name"),
        "dead-letter-routing-key" => (v.is_string(), "is not a valid dead letter routing key"),
        "dead-letter-strategy" => (
            matches!(v.as_str(), Some("at-most-once" | "at-least-once")),
            "is not a valid dead letter strategy",
        ),
        "message-ttl" => (int_at_least(v, 0), "is not a valid message TTL"),
        "expires" => (int_at_least(v, 1), "is not a valid queue expiry"),
        "max-length" => (int_at_least(v, 0), "is not a valid maximum length"),
        "max-length-bytes" => (int_at_least(v, 0), "is not a valid maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => {
            (int_at_least(v, 0), "is not a valid maximum memory in bytes")
        }
        "queue-mode" => (matches!(v.as_str(), Some("default" | "lazy")), "is not a valid queue-mode value"),
        "queue-version" => (matches!(v.as_i64(), Some(1 | 2)), "is not a valid queue-version value"),
        "overflow" => (
            matches!(v.as_str(), Some("drop-head" | "reject-publish" | "reject-publish-dlx")),
            "is not a valid overflow value",
        ),
        "delivery-limit" => (int_at_least(v, 0), "is not a valid delivery limit"),
        _ => (true, ""),
    };
    if ok { Ok(()) } else { Err(format!("{} {what}", erl(v))) }
}

impl Policy {
    /// Validates a policy; errors carry RabbitMQ's wording
    /// (`rabbit_runtime_parameters:format_error`: "Validation failed", a
    /// blank line, one line per problem).
    pub fn new(def: PolicyDef, operator: bool) -> Result<Self, String> {
        let failed = |lines: Vec<String>| format!("Validation failed\n\n{}\n", lines.join("\n"));
        let pattern = Regex::new(&def.pattern).map_err(|e| {
            let why = e.to_string().lines().last().unwrap_or("invalid").trim().replace('"', "'");
            failed(vec![format!("pattern should be regular expression but is invalid: {{\"{why}\",0}}")])
        })?;
        const APPLY: &[&str] = &["all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"];
        if !APPLY.contains(&def.apply_to.as_str()) {
            return Err(failed(vec![format!(
                "apply-to '{}' unrecognised; should be one of: 'queues', 'classic_queues',  'quorum_queues', 'streams', 'exchanges', or 'all'",
                def.apply_to
            )]));
        }
        if def.definition.is_empty() {
            return Err(failed(vec!["no policy provided".into()]));
        }
        let allowed = if operator { OPERATOR_KEYS } else { POLICY_KEYS };
        // serde_json's map is ordered by key, as Erlang's maps:to_list.
        let unknown: Vec<String> = def
            .definition
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(failed(vec![format!("[{}] are not recognised policy settings", unknown.join(","))]));
        }
        let errors: Vec<String> =
            def.definition.iter().filter_map(|(k, v)| validate_value(k, v).err()).collect();
        if !errors.is_empty() {
            return Err(failed(errors));
        }
        Ok(Policy { def, pattern })
    }

    pub fn applies_to(&self, target: Target, name: &str) -> bool {
        let kind_ok = matches!(
            (self.def.apply_to.as_str(), target),
            ("all", _) | ("queues" | "classic_queues", Target::Queue) | ("exchanges", Target::Exchange)
        );
        let usable = target == Target::Exchange
            || !self.def.definition.keys().any(|k| UNSUPPORTED_BY_CLASSIC.contains(&k.as_str()));
        kind_ok && usable && self.pattern.is_match(name)
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
        // Between the two policies the operator's overflow wins; the argument beats both.
        a.overflow =
            operator.and_then(|p| p.str("overflow")).or_else(|| policy.and_then(|p| p.str("overflow")));
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
        // `rabbit_policies:merge_policy_value`: numeric limits take the
        // lower value, overflow and queue-version the operator's.
        for (k, v) in &op.def.definition {
            let keep = match (applied.definition.get(k), v.as_u64()) {
                (None, _) => true,
                (Some(mine), Some(theirs)) if mine.is_u64() => mine.as_u64().is_some_and(|m| theirs < m),
                _ => matches!(k.as_str(), "overflow" | "queue-version"),
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
            bad(json!({"foo": "bar"}), false),
            "Validation failed\n\n[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings\n"
        );
        assert_eq!(
            bad(json!({"dead-letter-exchange": "d"}), true),
            "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"d\">>}] are not recognised policy settings\n"
        );
        assert_eq!(
            bad(json!({"message-ttl": -1}), false),
            "Validation failed\n\n-1 is not a valid message TTL\n"
        );
        assert_eq!(
            bad(json!({"message-ttl": "abc"}), false),
            "Validation failed\n\n<<\"abc\">> is not a valid message TTL\n"
        );
        assert_eq!(bad(json!({"expires": 0}), false), "Validation failed\n\n0 is not a valid queue expiry\n");
        assert_eq!(bad(json!({}), false), "Validation failed\n\nno policy provided\n");
    }
}
