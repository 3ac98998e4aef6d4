//! Queue declare arguments: RabbitMQ's validators (`rabbit_amqqueue:declare_args/0`),
//! error texts and the equivalence check on redeclare.

use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{AMQPValue, FieldTable};

/// Arguments the broker acts on, validated and typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<String>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    pub consumer_timeout: Option<u64>,
}

/// Keys compared on redeclare (unknown keys are stored but not compared).
const EQUIVALENCE_KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
];

const TEN_YEARS_MS: i128 = 315_360_000_000;

/// RabbitMQ's name for a field type, as used in error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value rendered as RabbitMQ renders it in error texts.
pub fn render(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => match as_int(other) {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

pub fn as_int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i128,
        AMQPValue::ShortShortUInt(x) => *x as i128,
        AMQPValue::ShortInt(x) => *x as i128,
        AMQPValue::ShortUInt(x) => *x as i128,
        AMQPValue::LongInt(x) => *x as i128,
        AMQPValue::LongUInt(x) => *x as i128,
        AMQPValue::LongLongInt(x) => *x as i128,
        _ => return None,
    })
}

pub fn as_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (as_str(a), as_str(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// Validates `arguments` for queue `name`; returns the typed view.
pub fn parse(arguments: &FieldTable, name: &str, vhost: &str) -> AmqpResult<QueueArgs> {
    let invalid = |key: &str, why: String| {
        AmqpError::precondition(format!("invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {why}"))
    };
    // `rabbit_amqqueue:check_int_arg/2`'s reason for a value of another type.
    let not_int =
        |key: &str, v: &AMQPValue| invalid(key, format!("\"expected integer, got {}\"", type_name(v)));
    let int = |key: &str, v: &AMQPValue, min: i128, max: i128| -> AmqpResult<u64> {
        let i = as_int(v).ok_or_else(|| not_int(key, v))?;
        if i < 0 {
            return Err(invalid(key, format!("{{value_negative,{i}}}")));
        }
        if i < min {
            return Err(invalid(key, format!("{{value_zero,{i}}}")));
        }
        if i > max {
            return Err(invalid(key, format!("{{value_too_large,{i}}}")));
        }
        Ok(i as u64)
    };
    let string = |key: &str, v: &AMQPValue| -> AmqpResult<String> {
        as_str(v).ok_or_else(|| invalid(key, format!("{{unacceptable_type,{}}}", type_name(v))))
    };
    let mut a = QueueArgs::default();
    for (k, v) in arguments.inner() {
        let key = k.as_str();
        match key {
            "x-message-ttl" => a.message_ttl = Some(int(key, v, 0, TEN_YEARS_MS)?),
            "x-expires" => a.expires = Some(int(key, v, 1, TEN_YEARS_MS)?),
            "x-max-length" => a.max_length = Some(int(key, v, 0, i64::MAX as i128)?),
            "x-max-length-bytes" => a.max_length_bytes = Some(int(key, v, 0, i64::MAX as i128)?),
            "x-delivery-limit" => a.delivery_limit = Some(int(key, v, 0, i64::MAX as i128)?),
            "x-consumer-timeout" => a.consumer_timeout = Some(int(key, v, 0, i64::MAX as i128)?),
            "x-max-priority" => {
                let i = as_int(v).ok_or_else(|| not_int(key, v))?;
                if i < 0 {
                    return Err(invalid(key, format!("{{value_negative,{i}}}")));
                }
                if i > 255 {
                    return Err(invalid(key, format!("{{max_value_exceeded,{i}}}")));
                }
                a.max_priority = Some(i as u8);
            }
            "x-overflow" => {
                let s = string(key, v)?;
                if !matches!(s.as_str(), "drop-head" | "reject-publish" | "reject-publish-dlx") {
                    return Err(invalid(key, "invalid_overflow".to_string()));
                }
                a.overflow = Some(s);
            }
            "x-dead-letter-exchange" => a.dead_letter_exchange = Some(string(key, v)?),
            "x-dead-letter-routing-key" => a.dead_letter_routing_key = Some(string(key, v)?),
            "x-single-active-consumer" => match v {
                AMQPValue::Boolean(b) => a.single_active_consumer = *b,
                other => {
                    return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(other))));
                }
            },
            "x-queue-mode" => {
                let s = string(key, v)?;
                if !matches!(s.as_str(), "default" | "lazy") {
                    return Err(invalid(key, format!("\"unsupported queue mode '{s}'\"")));
                }
            }
            "x-queue-version" => {
                let i = as_int(v).ok_or_else(|| not_int(key, v))?;
                if i < 0 {
                    return Err(invalid(key, format!("{{value_negative,{i}}}")));
                }
                if !(1..=2).contains(&i) {
                    return Err(invalid(key, format!("\"unsupported queue version '{i}'\"")));
                }
            }
            "x-queue-type" => {
                let s = string(key, v)?;
                match s.as_str() {
                    "classic" => {}
                    // Types RabbitMQ knows and Warren does not run.
                    "quorum" | "stream" => {
                        return Err(invalid(
                            key,
                            format!("\"unsupported queue type '{s}'\" (Warren runs classic queues only)"),
                        ));
                    }
                    _ => return Err(invalid(key, format!("\"unsupported queue type '{s}'\""))),
                }
            }
            _ => {}
        }
    }
    if a.dead_letter_routing_key.is_some() && a.dead_letter_exchange.is_none() {
        return Err(invalid("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined".to_string()));
    }
    Ok(a)
}

/// Refuses, on a new queue's declare, the arguments of RabbitMQ's other
/// queue types (`rabbit_amqqueue:check_arguments_key/4`), except
/// `x-delivery-limit`, which Warren's queues honour (README). Not part of
/// `parse`, which also reads queues recovered from disk.
pub fn check_classic_keys(arguments: &FieldTable, name: &str, vhost: &str) -> AmqpResult<()> {
    match arguments.inner().keys().map(|k| k.as_str()).find(|k| NOT_CLASSIC.contains(k)) {
        Some(key) => Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for queue '{name}' in vhost '{vhost}' of queue type rabbit_classic_queue"
        ))),
        None => Ok(()),
    }
}

/// Queue arguments of RabbitMQ 3.13's quorum and stream queues that its
/// classic queues do not take (`capabilities/0` of each queue type).
const NOT_CLASSIC: &[&str] = &[
    "x-dead-letter-strategy",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-queue-leader-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// RabbitMQ's check that a redeclare matches the existing queue's arguments.
pub fn check_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    name: &str,
    vhost: &str,
) -> AmqpResult<()> {
    for key in EQUIVALENCE_KEYS {
        let c = current.inner().get(*key);
        let r = received.inner().get(*key);
        let same = match (c, r) {
            (None, None) => true,
            (Some(a), Some(b)) => values_equal(a, b),
            // An absent x-queue-type is the same as "classic".
            (Some(v), None) | (None, Some(v)) if *key == "x-queue-type" => {
                as_str(v).as_deref() == Some("classic")
            }
            _ => false,
        };
        if !same {
            // RabbitMQ's `rabbit_misc:assert_args_equivalence1/4`: the bare
            // values when both are set, typed ones against `none`.
            let (received, current) = match (r, c) {
                (Some(r), Some(c)) => (format!("'{}'", render(r)), format!("'{}'", render(c))),
                _ => {
                    let show = |v: Option<&AMQPValue>| match v {
                        None => "none".to_string(),
                        Some(v) => format!("the value '{}' of type '{}'", render(v), type_name(v)),
                    };
                    (show(r), show(c))
                }
            };
            return Err(AmqpError::precondition(format!(
                "inequivalent arg '{key}' for queue '{name}' in vhost '{vhost}': received {received} but current is {current}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(k: &str, v: AMQPValue) -> FieldTable {
        let mut f = FieldTable::default();
        f.insert(k.into(), v);
        f
    }

    #[test]
    fn validators_and_texts() {
        let e = parse(&t("x-max-priority", AMQPValue::LongInt(300)), "q", "/").unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,300}"
        );
        let e = parse(&t("x-expires", AMQPValue::LongInt(0)), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with("{value_zero,0}"));
        let e = parse(&t("x-message-ttl", AMQPValue::LongString("1".into())), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with(": \"expected integer, got longstr\""), "{}", e.explanation);
        let e = parse(&t("x-message-ttl", AMQPValue::LongLongInt(315_360_000_001)), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with(": {value_too_large,315360000001}"), "{}", e.explanation);
        let e = parse(&t("x-overflow", AMQPValue::LongString("bogus".into())), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with(": invalid_overflow"), "{}", e.explanation);
        let e = parse(&t("x-queue-mode", AMQPValue::LongString("bogus".into())), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with(": \"unsupported queue mode 'bogus'\""), "{}", e.explanation);
        let e = parse(&t("x-queue-type", AMQPValue::LongString("bogus".into())), "q", "/").unwrap_err();
        assert!(e.explanation.ends_with(": \"unsupported queue type 'bogus'\""), "{}", e.explanation);
        let e =
            check_classic_keys(&t("x-max-age", AMQPValue::LongString("1D".into())), "q", "/").unwrap_err();
        assert_eq!(
            e.explanation,
            "invalid arg 'x-max-age' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
        assert!(check_classic_keys(&t("x-delivery-limit", AMQPValue::LongInt(3)), "q", "/").is_ok());
        let a = parse(&t("x-message-ttl", AMQPValue::ShortShortUInt(5)), "q", "/").unwrap();
        assert_eq!(a.message_ttl, Some(5));
    }

    #[test]
    fn equivalence_texts() {
        let e =
            check_equivalent(&FieldTable::default(), &t("x-message-ttl", AMQPValue::LongInt(10)), "q", "/")
                .unwrap_err();
        assert_eq!(
            e.explanation,
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '10' of type 'signedint' but current is none"
        );
        assert!(
            check_equivalent(
                &t("x-message-ttl", AMQPValue::LongInt(10)),
                &t("x-message-ttl", AMQPValue::LongLongInt(10)),
                "q",
                "/"
            )
            .is_ok()
        );
        assert!(
            check_equivalent(
                &FieldTable::default(),
                &t("x-queue-type", AMQPValue::LongString("classic".into())),
                "q",
                "/"
            )
            .is_ok()
        );
        assert!(
            check_equivalent(&FieldTable::default(), &t("x-other", AMQPValue::LongInt(1)), "q", "/").is_ok()
        );
        let e = check_equivalent(
            &t("x-message-ttl", AMQPValue::LongInt(1000)),
            &t("x-message-ttl", AMQPValue::LongInt(2000)),
            "q",
            "/",
        )
        .unwrap_err();
        assert_eq!(
            e.explanation,
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'"
        );
    }
}
