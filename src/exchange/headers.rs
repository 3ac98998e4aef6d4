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

/// Reads `x-match` from binding arguments; `Err` carries the bad value.
pub fn x_match(args: &FieldTable) -> Result<XMatch, String> {
    match args.inner().get("x-match") {
        None => Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => match s.as_bytes() {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            other => Err(String::from_utf8_lossy(other).into_owned()),
        },
        Some(AMQPValue::ShortString(s)) => x_match_str(s.as_str()),
        Some(other) => Err(format!("{other:?}")),
    }
}

fn x_match_str(s: &str) -> Result<XMatch, String> {
    match s {
        "all" => Ok(XMatch::All),
        "any" => Ok(XMatch::Any),
        "all-with-x" => Ok(XMatch::AllWithX),
        "any-with-x" => Ok(XMatch::AnyWithX),
        other => Err(other.to_string()),
    }
}

/// Compares values as RabbitMQ does: same type and value, with strings
/// compared by bytes whichever string type carried them.
fn value_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::LongString(x), AMQPValue::ShortString(y))
        | (AMQPValue::ShortString(y), AMQPValue::LongString(x)) => x.as_bytes() == y.as_str().as_bytes(),
        _ => a == b,
    }
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
        assert_eq!(x_match(&t(&[("x-match", s("bogus"))])), Err("bogus".to_string()));
    }
}
