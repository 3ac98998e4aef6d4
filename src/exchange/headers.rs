//! Headers exchange matching (`rabbit_exchange_type_headers.erl`): `x-match`
//! is `all` (default), `any`, `all-with-x` or `any-with-x`; binding keys that
//! start with `x-` are ignored unless a `-with-x` mode is used; a void binding
//! value matches mere presence of the header.

use crate::protocol::{AMQPValue, FieldTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// Reads `x-match` from binding arguments; `Err` is RabbitMQ's explanation
/// (`rabbit_exchange_type_headers:validate_binding/2`).
pub fn x_match(args: &FieldTable) -> Result<XMatch, String> {
    match args.inner().get("x-match") {
        None => Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => x_match_str(&String::from_utf8_lossy(s.as_bytes())),
        Some(AMQPValue::ShortString(s)) => x_match_str(s.as_str()),
        Some(other) => Err(format!(
            "Invalid x-match field type {} (value {}); expected longstr",
            crate::queue::args::type_name(other),
            crate::queue::args::render(other)
        )),
    }
}

fn x_match_str(s: &str) -> Result<XMatch, String> {
    match s {
        "all" => Ok(XMatch::All),
        "any" => Ok(XMatch::Any),
        "all-with-x" => Ok(XMatch::AllWithX),
        "any-with-x" => Ok(XMatch::AnyWithX),
        other => Err(format!(
            "Invalid x-match field value <<\"{other}\">>; expected all, any, all-with-x, or any-with-x"
        )),
    }
}

/// What a field value is once RabbitMQ has decoded it, for comparison:
/// integers of every width are one integer, both float widths one float,
/// strings and byte arrays one binary. A message's timestamp is compared in
/// milliseconds (`mc_amqpl:routing_value/2`), a binding's as it was given.
#[derive(PartialEq)]
enum Plain<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Other(&'a AMQPValue),
}

fn plain(v: &AMQPValue, in_message: bool) -> Plain<'_> {
    match v {
        AMQPValue::Timestamp(t) if in_message => Plain::Int(*t as i128 * 1000),
        AMQPValue::Timestamp(t) => Plain::Int(*t as i128),
        AMQPValue::Float(f) => Plain::Float(*f as f64),
        AMQPValue::Double(d) => Plain::Float(*d),
        AMQPValue::LongString(s) => Plain::Bytes(s.as_bytes()),
        AMQPValue::ShortString(s) => Plain::Bytes(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Plain::Bytes(b.as_slice()),
        other => match crate::queue::args::as_int(other) {
            Some(i) => Plain::Int(i),
            None => Plain::Other(other),
        },
    }
}

/// Compares a binding's value with a message header's as RabbitMQ 3.13
/// does (`rabbit_exchange_type_headers:match/2`: the binding's value `=:=`
/// the header's decoded value): `1` matches a byte, short, int or long 1,
/// not `1.0` nor `"1"`.
fn value_eq(binding: &AMQPValue, header: &AMQPValue) -> bool {
    plain(binding, false) == plain(header, true)
}

pub fn matches(mode: XMatch, binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let any = matches!(mode, XMatch::Any | XMatch::AnyWithX);
    for (k, v) in binding.inner() {
        let key = k.as_str();
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let hit = match headers.and_then(|h| h.inner().get(key)) {
            None => false,
            Some(hv) => matches!(v, AMQPValue::Void) || value_eq(v, hv),
        };
        if any && hit {
            return true;
        }
        if !any && !hit {
            return false;
        }
    }
    // Every considered key hit (`all`), or none did (`any`). An `all` binding
    // with no keys to compare matches every message.
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut f = FieldTable::default();
        for (k, v) in pairs {
            f.insert((*k).into(), v.clone());
        }
        f
    }
    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn all_any_and_with_x() {
        let b = t(&[("a", s("1")), ("b", s("2"))]);
        let h = t(&[("a", s("1")), ("b", s("2")), ("c", s("3"))]);
        assert!(matches(XMatch::All, &b, Some(&h)));
        assert!(!matches(XMatch::All, &b, Some(&t(&[("a", s("1"))]))));
        assert!(matches(XMatch::Any, &b, Some(&t(&[("a", s("1"))]))));
        assert!(!matches(XMatch::Any, &b, Some(&t(&[("a", s("9"))]))));
        assert!(!matches(XMatch::Any, &b, None));
        let bx = t(&[("x-k", s("1"))]);
        assert!(matches(XMatch::All, &bx, None)); // x- keys ignored: matches all
        assert!(!matches(XMatch::AllWithX, &bx, None));
        assert!(matches(XMatch::AnyWithX, &bx, Some(&t(&[("x-k", s("1"))]))));
        let void = t(&[("a", AMQPValue::Void)]);
        assert!(matches(XMatch::All, &void, Some(&t(&[("a", s("anything"))]))));
        assert_eq!(
            x_match(&t(&[("x-match", s("bogus"))])),
            Err("Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x"
                .to_string())
        );
        assert_eq!(
            x_match(&t(&[("x-match", AMQPValue::LongInt(1))])),
            Err("Invalid x-match field type signedint (value 1); expected longstr".to_string())
        );
    }

    #[test]
    fn integers_match_across_widths_not_floats_or_strings() {
        let one = t(&[("a", AMQPValue::LongInt(1))]);
        for h in [
            AMQPValue::ShortShortInt(1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(1),
            AMQPValue::LongUInt(1),
            AMQPValue::LongLongInt(1),
        ] {
            assert!(matches(XMatch::All, &one, Some(&t(&[("a", h.clone())]))), "{h:?}");
        }
        for h in [AMQPValue::Double(1.0), s("1"), AMQPValue::Boolean(true), AMQPValue::LongLongInt(2)] {
            assert!(!matches(XMatch::All, &one, Some(&t(&[("a", h.clone())]))), "{h:?}");
        }
        let f = t(&[("f", AMQPValue::Float(1.5))]);
        assert!(matches(XMatch::All, &f, Some(&t(&[("f", AMQPValue::Double(1.5))]))));
        let bytes = t(&[("b", AMQPValue::ShortString("k".into()))]);
        assert!(matches(XMatch::All, &bytes, Some(&t(&[("b", s("k"))]))));
        assert!(matches(XMatch::All, &bytes, Some(&t(&[("b", AMQPValue::ByteArray(b"k".to_vec().into()))]))));
    }
}
