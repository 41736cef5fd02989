//! The functions templates can call: Gloo's (`header`, `body`, `extraction`, ...) and inja's built-in ones.
//! The parser resolves a call to its index in `FUNCTIONS` and checks its argument count; the renderer calls it
//! with the evaluated arguments.

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use serde_json::Value;

use crate::inja::Step;
use crate::template::{
    compare, invalid, json_escape, kind, measure, number, pick, text_of, Number, RenderData, Renderer, Result, MAX_WORK,
};

/// A function: the renderer (for the message) and the evaluated arguments, whose count the parser checked.
pub(crate) type Function = for<'a> fn(&Renderer<'a>, Vec<Cow<'a, Value>>) -> Result<Cow<'a, Value>>;

/// `default(value, fallback)` is evaluated lazily by the renderer (its first argument may be undefined).
pub(crate) const DEFAULT: usize = 0;

/// Every function templates can call: name, fewest and most arguments, implementation.
pub(crate) static FUNCTIONS: &[(&str, usize, usize, Function)] = &[
    ("default", 2, 2, |_, _| Err(invalid("default"))),
    // ---- Gloo's functions ----------------------------------------------------------------------------------
    ("header", 1, 1, |r, a| text(first_header(&r.data.headers, &str_at(&a, 0)))),
    ("request_header", 1, 1, |r, a| {
        let headers = r.data.request_headers.as_deref().unwrap_or(&r.data.headers);
        text(first_header(headers, &str_at(&a, 0)))
    }),
    ("extraction", 1, 1, |r, a| text(r.data.extractions.get(&*str_at(&a, 0)).cloned().unwrap_or_default())),
    ("body", 0, 0, |r, _| text(r.data.body.clone())),
    ("context", 0, 0, |r, _| {
        let data: &RenderData = r.data;
        Ok(Cow::Borrowed(&data.context))
    }),
    ("env", 1, 1, |r, a| text(r.data.env.get(&*str_at(&a, 0)).cloned().unwrap_or_default())),
    ("data_source", 1, 1, |r, a| {
        let name = str_at(&a, 0);
        let value = r.data.data_sources.get(&*name).ok_or_else(|| invalid(format!("no data source {name:?}")))?;
        text(value.clone())
    }),
    ("trim", 1, 1, |_, a| text(str_at(&a, 0).trim())),
    ("base64_encode", 1, 1, |_, a| text(base64::engine::general_purpose::STANDARD.encode(&*str_at(&a, 0)))),
    ("base64url_encode", 1, 1, |_, a| text(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*str_at(&a, 0)))),
    ("base64_decode", 1, 1, |_, a| {
        let decoded = base64::engine::general_purpose::STANDARD.decode(&*str_at(&a, 0)).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    }),
    ("base64url_decode", 1, 1, |_, a| {
        let input = str_at(&a, 0);
        let decoded =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(input.trim_end_matches('=')).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    }),
    ("substring", 2, 3, |_, a| {
        let input = str_at(&a, 0);
        let Some(start) = integer(arg(&a, 1)) else { return text("") };
        let length = match a.get(2) {
            None => None,
            Some(n) => match integer(n) {
                Some(n) => Some(n),
                None => return text(""),
            },
        };
        text(substring(&input, start, length))
    }),
    ("replace_with_random", 2, 2, |r, a| {
        let (input, pattern) = (str_at(&a, 0), str_at(&a, 1));
        if pattern.is_empty() {
            return text(input);
        }
        let mut randoms = r.data.randoms.borrow_mut();
        let token = randoms.entry(pattern.to_string()).or_insert_with(random_token);
        text(input.replace(&*pattern, token))
    }),
    ("raw_string", 1, 1, |_, a| {
        let value = arg(&a, 0);
        text(match value {
            Value::String(s) => json_escape(s),
            other => other.to_string(),
        })
    }),
    ("word_count", 1, 1, |r, a| {
        r.spend(measure(arg(&a, 0), MAX_WORK).0)?;
        Ok(Cow::Owned(Value::from(word_count(arg(&a, 0)))))
    }),
    // ---- inja's built-in functions ---------------------------------------------------------------------------
    ("upper", 1, 1, |_, a| text(str_at(&a, 0).to_uppercase())),
    ("lower", 1, 1, |_, a| text(str_at(&a, 0).to_lowercase())),
    ("capitalize", 1, 1, |_, a| {
        let lower = str_at(&a, 0).to_lowercase();
        let mut chars = lower.chars();
        text(chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default())
    }),
    ("replace", 3, 3, |r, a| {
        let (input, from, to) = (str_at(&a, 0), str_at(&a, 1), str_at(&a, 2));
        // Charged before the result is built: an empty `from` matches around every character.
        let matches = if from.is_empty() { input.chars().count() + 1 } else { input.matches(&*from).count() };
        r.spend(input.len().saturating_add(matches.saturating_mul(to.len())))?;
        text(input.replace(&*from, &to))
    }),
    ("exists", 1, 1, |r, a| {
        let path = str_at(&a, 0);
        let mut parts = path.split(['.', '/']).filter(|p| !p.is_empty());
        let name = parts.next().unwrap_or_default();
        let steps: Vec<Step> = parts.map(Step::key).collect();
        boolean(!name.is_empty() && r.variable(name, &steps).is_ok())
    }),
    ("existsIn", 2, 2, |_, a| boolean(arg(&a, 0).as_object().is_some_and(|m| m.contains_key(&*str_at(&a, 1))))),
    ("at", 2, 2, |_, mut a| {
        let key = a.pop().unwrap_or(Cow::Owned(Value::Null));
        let target = a.pop().unwrap_or(Cow::Owned(Value::Null));
        let found = pick(target, |value| match (value, &*key) {
            (Value::Array(items), Value::Number(n)) => items.get(usize::try_from(n.as_u64()?).ok()?),
            (Value::Object(map), Value::String(k)) => map.get(k),
            _ => None,
        });
        found.ok_or_else(|| invalid(format!("no element {key}")))
    }),
    ("length", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => s.len(),
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            other => return Err(invalid(format!("length of {}", kind(other)))),
        };
        Ok(Cow::Owned(Value::from(n)))
    }),
    ("first", 1, 1, |_, a| end_item(a, true)),
    ("last", 1, 1, |_, a| end_item(a, false)),
    ("join", 2, 2, |_, a| {
        let items = array(arg(&a, 0), "join")?;
        text(items.iter().map(text_of).collect::<Vec<_>>().join(&str_at(&a, 1)))
    }),
    ("round", 1, 2, |_, a| {
        let n = number(arg(&a, 0)).ok_or_else(|| invalid("round of a non-number"))?.float();
        let precision = match a.get(1) {
            Some(p) => i32::try_from(integer(p).ok_or_else(|| invalid("round: precision must be an integer"))?)
                .map_err(|_| invalid("round: precision"))?,
            None => 0,
        };
        let factor = 10f64.powi(precision);
        let rounded = (n * factor).round() / factor;
        Ok(Cow::Owned(if precision <= 0 { Value::from(rounded as i64) } else { Value::from(rounded) }))
    }),
    ("int", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => {
                let t = s.trim();
                t.parse::<i64>()
                    .or_else(|_| t.parse::<f64>().map(|f| f as i64))
                    .map_err(|_| invalid(format!("int of {t:?}")))?
            }
            other => number(other).map(|n| n.float() as i64).ok_or_else(|| invalid("int of a non-number"))?,
        };
        Ok(Cow::Owned(Value::from(n)))
    }),
    ("float", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => s.trim().parse::<f64>().map_err(|_| invalid(format!("float of {s:?}")))?,
            other => number(other).map(Number::float).ok_or_else(|| invalid("float of a non-number"))?,
        };
        Ok(Cow::Owned(Value::from(n)))
    }),
    ("range", 1, 1, |_, a| {
        let n = integer(arg(&a, 0)).ok_or_else(|| invalid("range of a non-integer"))?;
        if n > 100_000 {
            return Err(invalid("range too large"));
        }
        Ok(Cow::Owned(Value::Array((0..n.max(0)).map(Value::from).collect())))
    }),
    ("sort", 1, 1, |_, a| {
        let mut items = array(arg(&a, 0), "sort")?.clone();
        items.sort_by(compare);
        Ok(Cow::Owned(Value::Array(items)))
    }),
    ("max", 1, 1, |_, a| extreme(a, Ordering::Greater)),
    ("min", 1, 1, |_, a| extreme(a, Ordering::Less)),
    ("isString", 1, 1, |_, a| boolean(arg(&a, 0).is_string())),
    ("isNumber", 1, 1, |_, a| boolean(arg(&a, 0).is_number())),
    ("isInteger", 1, 1, |_, a| boolean(arg(&a, 0).is_i64() || arg(&a, 0).is_u64())),
    ("isFloat", 1, 1, |_, a| boolean(arg(&a, 0).is_f64())),
    ("isBoolean", 1, 1, |_, a| boolean(arg(&a, 0).is_boolean())),
    ("isObject", 1, 1, |_, a| boolean(arg(&a, 0).is_object())),
    ("isArray", 1, 1, |_, a| boolean(arg(&a, 0).is_array())),
    ("even", 1, 1, |_, a| boolean(int_at(&a, 0)? % 2 == 0)),
    ("odd", 1, 1, |_, a| boolean(int_at(&a, 0)? % 2 != 0)),
    ("divisibleBy", 2, 2, |_, a| {
        let (value, by) = (int_at(&a, 0)?, int_at(&a, 1)?);
        // checked: i64::MIN % -1 overflows (and would abort the VM); its remainder is 0.
        boolean(by != 0 && value.checked_rem(by).unwrap_or(0) == 0)
    }),
];

/// The parser's view of `FUNCTIONS`: index and argument counts.
pub(crate) fn resolve(name: &str) -> Option<(usize, usize, usize)> {
    FUNCTIONS.iter().enumerate().find(|(_, (n, ..))| *n == name).map(|(i, (_, min, max, _))| (i, *min, *max))
}

/// Whether templates can call `name` (a name that is not a function comes from the JSON context).
pub fn is_function(name: &str) -> bool {
    FUNCTIONS.iter().any(|(n, ..)| *n == name)
}

fn arg<'v>(args: &'v [Cow<'_, Value>], index: usize) -> &'v Value {
    args.get(index).map_or(&Value::Null, |v| &**v)
}

fn str_at<'v>(args: &'v [Cow<'_, Value>], index: usize) -> Cow<'v, str> {
    text_of(arg(args, index))
}

fn integer(value: &Value) -> Option<i64> {
    value.as_i64()
}

fn int_at(args: &[Cow<'_, Value>], index: usize) -> Result<i64> {
    integer(arg(args, index)).ok_or_else(|| invalid("expected an integer"))
}

fn text<'a>(value: impl Into<String>) -> Result<Cow<'a, Value>> {
    Ok(Cow::Owned(Value::String(value.into())))
}

fn boolean<'a>(value: bool) -> Result<Cow<'a, Value>> {
    Ok(Cow::Owned(Value::Bool(value)))
}

fn array<'v>(value: &'v Value, function: &str) -> Result<&'v Vec<Value>> {
    value.as_array().ok_or_else(|| invalid(format!("{function} of {}", kind(value))))
}

/// `first` / `last` of an array (borrowed when the array is) or of a string.
fn end_item(mut args: Vec<Cow<'_, Value>>, first: bool) -> Result<Cow<'_, Value>> {
    let value = args.pop().unwrap_or(Cow::Owned(Value::Null));
    let empty = || invalid(if first { "first of an empty list" } else { "last of an empty list" });
    if let Value::String(s) = &*value {
        let c = if first { s.chars().next() } else { s.chars().next_back() };
        return c.map(|c| Cow::Owned(Value::String(c.to_string()))).ok_or_else(empty);
    }
    let length = array(&value, if first { "first" } else { "last" })?.len();
    let index = if first { 0 } else { length.checked_sub(1).ok_or_else(empty)? };
    pick(value, |v| v.get(index)).ok_or_else(empty)
}

fn extreme(mut args: Vec<Cow<'_, Value>>, wanted: Ordering) -> Result<Cow<'_, Value>> {
    let value = args.pop().unwrap_or(Cow::Owned(Value::Null));
    let items = array(&value, "max/min")?;
    let best =
        items.iter().enumerate().reduce(|best, item| if compare(item.1, best.1) == wanted { item } else { best });
    match best {
        Some((index, _)) => pick(value, |v| v.get(index)).ok_or_else(|| invalid("max/min")),
        None => Ok(Cow::Owned(Value::Null)),
    }
}

fn first_header(headers: &[(String, String)], name: &str) -> String {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// Gloo's `word_count`: words of strings, keys and values of objects, elements of arrays; numbers and booleans
/// count one.
pub fn word_count(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(word_count).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.split_whitespace().count() as u64 + word_count(v)).sum(),
        Value::Number(_) | Value::Bool(_) => 1,
        Value::Null => 0,
    }
}

/// Gloo's `substring(s, start, length)`: byte positions; a start outside the string gives "", a length that is
/// absent, not positive or past the end runs to the end.
pub fn substring(input: &str, start: i64, length: Option<i64>) -> String {
    let bytes = input.as_bytes();
    let len = bytes.len() as i64;
    if start < 0 || start >= len {
        return String::new();
    }
    let end = match length {
        Some(n) if n > 0 && start.saturating_add(n) <= len => start + n,
        _ => len,
    };
    let slice = bytes.get(start as usize..end as usize).unwrap_or_default();
    String::from_utf8_lossy(slice).into_owned()
}

/// 128 random bits, base64 without padding (as Gloo's `replace_with_random`).
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No randomness from the host: fall back to std's randomly keyed hasher.
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut hasher = state.build_hasher();
            hasher.write_usize(i);
            let value = hasher.finish().to_le_bytes();
            for (b, v) in chunk.iter_mut().zip(value) {
                *b = v;
            }
        }
    }
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}
