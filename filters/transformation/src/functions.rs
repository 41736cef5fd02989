//! The functions templates can call: Gloo's (`header`, `body`, `extraction`, ...) and inja's built-in ones.
//! The parser resolves a call to its index in `FUNCTIONS` and checks its argument count; the renderer calls it
//! with the evaluated arguments.

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use serde_json::Value;

use crate::inja::Step;
use crate::template::{
    compare, finite, invalid, json_escape, kind, measure, number, pick, text_of, truncated, type_name, walk, Number,
    RenderData, Renderer, Result, MAX_WORK,
};

/// A function: the renderer (for the message) and the evaluated arguments, whose count the parser checked.
pub(crate) type Function = for<'a> fn(&Renderer<'a>, Vec<Cow<'a, Value>>) -> Result<Cow<'a, Value>>;

/// `default(value, fallback)` is evaluated lazily by the renderer (its first argument may be undefined).
pub(crate) const DEFAULT: usize = 0;

/// Every function templates can call: name, fewest and most arguments, implementation.
pub(crate) static FUNCTIONS: &[(&str, usize, usize, Function)] = &[
    ("default", 2, 2, |_, _| Err(invalid("default"))),
    // ---- Gloo's functions (inja_transformer.cc): string arguments must be strings ----------------------------
    ("header", 1, 1, |r, a| text(first_header(&r.data.headers, string(&a, 0)?))),
    ("request_header", 1, 1, |r, a| {
        let headers = r.data.request_headers.as_deref().unwrap_or(&r.data.headers);
        text(first_header(headers, string(&a, 0)?))
    }),
    ("extraction", 1, 1, |r, a| text(r.data.extractions.get(string(&a, 0)?).cloned().unwrap_or_default())),
    ("body", 0, 0, |r, _| text(r.data.body.clone())),
    ("context", 0, 0, |r, _| {
        let data: &RenderData = r.data;
        Ok(Cow::Borrowed(&data.context))
    }),
    ("env", 1, 1, |r, a| text(r.data.env.get(string(&a, 0)?).cloned().unwrap_or_default())),
    // A data source that is not configured is "", as in Gloo.
    ("data_source", 1, 1, |r, a| text(r.data.data_sources.get(string(&a, 0)?).cloned().unwrap_or_default())),
    ("trim", 1, 1, |_, a| text(string(&a, 0)?.trim_matches(|c: char| c.is_ascii_whitespace()))),
    ("base64_encode", 1, 1, |_, a| text(base64::engine::general_purpose::STANDARD.encode(string(&a, 0)?))),
    ("base64url_encode", 1, 1, |_, a| text(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(string(&a, 0)?))),
    ("base64_decode", 1, 1, |_, a| {
        let decoded = base64::engine::general_purpose::STANDARD.decode(string(&a, 0)?).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    }),
    ("base64url_decode", 1, 1, |_, a| {
        let input = string(&a, 0)?;
        let decoded =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(input.trim_end_matches('=')).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    }),
    ("substring", 2, 3, |_, a| {
        let input = string(&a, 0)?;
        // Gloo answers "" when the start or the length is not an integer.
        let Some(start) = arg(&a, 1).as_i64() else { return text("") };
        let length = match a.get(2) {
            None => None,
            Some(n) => match n.as_i64() {
                Some(n) => Some(n),
                None => return text(""),
            },
        };
        text(substring(input, start, length))
    }),
    ("replace_with_random", 2, 2, |r, a| {
        let (input, pattern) = (string(&a, 0)?, string(&a, 1)?);
        if pattern.is_empty() {
            return text(input);
        }
        let mut randoms = r.data.randoms.borrow_mut();
        let token = randoms.entry(pattern.to_string()).or_insert_with(random_token);
        text(input.replace(pattern, token))
    }),
    ("raw_string", 1, 1, |_, a| text(json_escape(string(&a, 0)?))),
    ("word_count", 1, 1, |r, a| {
        r.spend(measure(arg(&a, 0), MAX_WORK).0)?;
        Ok(Cow::Owned(Value::from(word_count(arg(&a, 0)))))
    }),
    // Gloo's metadata functions take the key and, optionally, the filter namespace (more arguments are ignored).
    ("cluster_metadata", 1, usize::MAX, |r, a| metadata(&r.data.metadata.cluster, r.data.metadata.delimiter, &a)),
    ("dynamic_metadata", 1, usize::MAX, |r, a| metadata(&r.data.metadata.dynamic, r.data.metadata.delimiter, &a)),
    ("host_metadata", 1, usize::MAX, |r, a| metadata(&r.data.metadata.host, r.data.metadata.delimiter, &a)),
    ("clusterMetadata", 1, 1, |r, a| {
        let key = string(&a, 0)?;
        let found = r.data.metadata.cluster.get(GLOO_NAMESPACE).and_then(|fields| fields.get(key));
        Ok(Cow::Owned(match found {
            Some(Value::Number(n)) => finite(n.as_f64().unwrap_or_default())?,
            Some(value) => Value::String(deprecated_metadata_text(value)),
            None => Value::String(String::new()),
        }))
    }),
    // ---- inja's built-in functions -----------------------------------------------------------------------------
    ("upper", 1, 1, |_, a| text(string_value(&a, 0)?.to_ascii_uppercase())),
    ("lower", 1, 1, |_, a| text(string_value(&a, 0)?.to_ascii_lowercase())),
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
    // inja's `exists` looks in the JSON data only (not at `set` or loop variables).
    ("exists", 1, 1, |r, a| {
        let path = string_value(&a, 0)?;
        let mut parts = path.split(['.', '/']);
        let name = parts.next().unwrap_or_default();
        let steps: Vec<Step> = parts.map(Step::key).collect();
        let found = r.data.context.as_object().and_then(|m| m.get(name)).and_then(|v| walk(v, &steps));
        boolean(found.is_some())
    }),
    ("existsIn", 2, 2, |_, a| {
        let key = string_value(&a, 1)?;
        boolean(arg(&a, 0).as_object().is_some_and(|m| m.contains_key(key)))
    }),
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
    // As nlohmann's `size()`: a scalar counts one, null none; a string's length is in bytes.
    ("length", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => s.len(),
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            Value::Null => 0,
            _ => 1,
        };
        Ok(Cow::Owned(Value::from(n)))
    }),
    ("first", 1, 1, |_, a| end_item(a, true)),
    ("last", 1, 1, |_, a| end_item(a, false)),
    ("join", 2, 2, |_, a| {
        let items = array(arg(&a, 0), "join")?;
        text(items.iter().map(text_of).collect::<Vec<_>>().join(string_value(&a, 1)?))
    }),
    ("round", 1, 2, |_, a| {
        let n = number(arg(&a, 0)).ok_or_else(|| type_error("number", arg(&a, 0)))?.float();
        let precision = match a.get(1) {
            Some(p) => number(p).ok_or_else(|| type_error("number", p)).and_then(truncated)?,
            None => 0,
        };
        let precision = i32::try_from(precision).map_err(|_| invalid("round: precision out of range"))?;
        let factor = 10f64.powi(precision);
        let rounded = (n * factor).round() / factor;
        // inja gives an integer for precision 0 only.
        if precision == 0 {
            return Ok(Cow::Owned(Value::from(truncated(Number::Float(rounded))?)));
        }
        Ok(Cow::Owned(finite(rounded)?))
    }),
    ("int", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => leading_int(s)?,
            other => truncated(number(other).ok_or_else(|| type_error("string", other))?)?,
        };
        Ok(Cow::Owned(Value::from(n)))
    }),
    ("float", 1, 1, |_, a| {
        let n = match arg(&a, 0) {
            Value::String(s) => leading_float(s)?,
            other => number(other).map(Number::float).ok_or_else(|| type_error("string", other))?,
        };
        Ok(Cow::Owned(finite(n)?))
    }),
    ("range", 1, 1, |_, a| {
        let n = truncated(number(arg(&a, 0)).ok_or_else(|| type_error("number", arg(&a, 0)))?)?;
        if n < 0 {
            return Err(invalid("range of a negative length"));
        }
        if n > 100_000 {
            return Err(invalid("range too large"));
        }
        Ok(Cow::Owned(Value::Array((0..n).map(Value::from).collect())))
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

/// Gloo's namespace for `clusterMetadata` and the default of the other metadata functions.
const GLOO_NAMESPACE: &str = "io.solo.transformation";

/// Gloo's `cluster_metadata` / `dynamic_metadata` / `host_metadata`: the key, split at the delimiter, goes down
/// the namespace's fields. A string is itself, a number a (float) number, a boolean "true" / "false", an object or
/// a list its JSON text; anything else, or nothing found, is "". A key that is not a string is "" too.
fn metadata<'a>(source: &Value, delimiter: char, args: &[Cow<'a, Value>]) -> Result<Cow<'a, Value>> {
    let Value::String(key) = arg(args, 0) else { return text("") };
    let namespace = match args.get(1) {
        Some(_) => string(args, 1)?,
        None => GLOO_NAMESPACE,
    };
    let mut found = source.get(namespace);
    for part in key.split(delimiter) {
        found = found.and_then(|v| v.as_object()).and_then(|fields| fields.get(part));
    }
    Ok(Cow::Owned(match found {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Number(n)) => finite(n.as_f64().unwrap_or_default())?,
        Some(Value::Bool(b)) => Value::String(b.to_string()),
        Some(value @ (Value::Object(_) | Value::Array(_))) => Value::String(protobuf_json(value)),
        _ => Value::String(String::new()),
    }))
}

/// `clusterMetadata`'s text of a value: a string, a number or a boolean as above; a list its strings, numbers
/// (as C++ streams print doubles) and booleans joined with commas; anything else "".
fn deprecated_metadata_text(value: &Value) -> String {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => stream_double(n.as_f64().unwrap_or_default()),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    };
    match value {
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(_) | Value::Null => String::new(),
        other => scalar(other),
    }
}

/// A double as `std::ostream << double` prints it: `%g`, six significant digits.
pub(crate) fn stream_double(f: f64) -> String {
    // JSON numbers are finite; zero has no exponent to find.
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let scientific = format!("{f:.5e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let strip = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", strip(mantissa.to_string()), exponent.unsigned_abs());
    }
    let decimals = usize::try_from(5 - exponent).unwrap_or(0);
    strip(format!("{f:.decimals$}"))
}

/// A value as protobuf's JSON printer writes a `Struct` or `ListValue`: compact, numbers (all doubles) without a
/// fraction when they are whole.
fn protobuf_json(value: &Value) -> String {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{f:.0}")
            } else {
                n.to_string()
            }
        }
        Value::Array(items) => format!("[{}]", items.iter().map(protobuf_json).collect::<Vec<_>>().join(",")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), protobuf_json(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// `std::stoi`: optional whitespace and sign, then digits (what follows them is ignored); an int's range.
fn leading_int(text: &str) -> Result<i64> {
    let trimmed = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let digits_from = usize::from(trimmed.starts_with(['+', '-']));
    let digits = trimmed.get(digits_from..).unwrap_or_default();
    let length = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    if length == 0 {
        return Err(invalid(format!("int: no number in {text:?}")));
    }
    let number = trimmed.get(..digits_from + length).unwrap_or_default();
    number.parse::<i32>().map(i64::from).map_err(|_| invalid(format!("int: {number} is out of range")))
}

/// `std::stod`: optional whitespace, then the longest decimal number (what follows it is ignored).
fn leading_float(text: &str) -> Result<f64> {
    let trimmed = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let bytes = trimmed.as_bytes();
    let mut end = usize::from(trimmed.starts_with(['+', '-']));
    let digits = |from: usize| bytes.iter().skip(from).take_while(|b| b.is_ascii_digit()).count();
    let whole = digits(end);
    end += whole;
    let mut fraction = 0;
    if bytes.get(end) == Some(&b'.') {
        fraction = digits(end + 1);
        end += 1 + fraction;
    }
    if whole + fraction == 0 {
        return Err(invalid(format!("float: no number in {text:?}")));
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent = digits(end + 1 + sign);
        if exponent > 0 {
            end += 1 + sign + exponent;
        }
    }
    let number = trimmed.get(..end).unwrap_or_default();
    number.parse::<f64>().map_err(|_| invalid(format!("float: {number} is out of range")))
}

/// The parser's view of `FUNCTIONS`: index and argument counts.
pub(crate) fn resolve(name: &str) -> Option<(usize, usize, usize)> {
    FUNCTIONS.iter().enumerate().find(|(_, (n, ..))| *n == name).map(|(i, (_, min, max, _))| (i, *min, *max))
}

/// The functions that look the JSON context up by a name known only at render time: a template calling one reads
/// all of it (see `json_reads`). Keep in step with the functions that use `data.context`.
pub(crate) const READS_WHOLE_CONTEXT: &[&str] = &["context", "exists"];

/// The name of the function the parser resolved to `index`.
pub(crate) fn function_name(index: usize) -> Option<&'static str> {
    FUNCTIONS.get(index).map(|(name, ..)| *name)
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

/// nlohmann's error for a value of the wrong type.
fn type_error(wanted: &str, value: &Value) -> crate::template::Error {
    invalid(format!("type must be {wanted}, but is {}", type_name(value)))
}

/// A string argument of one of Gloo's functions (nlohmann's `get_ref`, which throws for anything else).
fn string<'v>(args: &'v [Cow<'_, Value>], index: usize) -> Result<&'v str> {
    match arg(args, index) {
        Value::String(s) => Ok(s),
        other => Err(invalid(format!("incompatible ReferenceType for get_ref, actual type is {}", type_name(other)))),
    }
}

/// A string argument of one of inja's functions (nlohmann's `get<string>`).
fn string_value<'v>(args: &'v [Cow<'_, Value>], index: usize) -> Result<&'v str> {
    match arg(args, index) {
        Value::String(s) => Ok(s),
        other => Err(type_error("string", other)),
    }
}

/// An integer argument as inja reads it (a float's whole part).
fn int_at(args: &[Cow<'_, Value>], index: usize) -> Result<i64> {
    truncated(number(arg(args, index)).ok_or_else(|| type_error("number", arg(args, index)))?)
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

/// `first` / `last` as nlohmann's `front()` / `back()`: an array's end item (borrowed when the array is), an
/// object's first or last value (in key order), any other value but null itself.
fn end_item(mut args: Vec<Cow<'_, Value>>, first: bool) -> Result<Cow<'_, Value>> {
    let value = args.pop().unwrap_or(Cow::Owned(Value::Null));
    let empty = || invalid(if first { "first of an empty list" } else { "last of an empty list" });
    match &*value {
        Value::Null => Err(invalid("cannot get value")),
        Value::Array(_) => pick(value, |v| {
            let items = v.as_array()?;
            if first {
                items.first()
            } else {
                items.last()
            }
        })
        .ok_or_else(empty),
        Value::Object(_) => pick(value, |v| {
            let mut values = v.as_object()?.values();
            if first {
                values.next()
            } else {
                values.next_back()
            }
        })
        .ok_or_else(empty),
        _ => Ok(value),
    }
}

fn extreme(mut args: Vec<Cow<'_, Value>>, wanted: Ordering) -> Result<Cow<'_, Value>> {
    let value = args.pop().unwrap_or(Cow::Owned(Value::Null));
    let items = array(&value, "max/min")?;
    let best =
        items.iter().enumerate().reduce(|best, item| if compare(item.1, best.1) == wanted { item } else { best });
    match best {
        Some((index, _)) => pick(value, |v| v.get(index)).ok_or_else(|| invalid("max/min")),
        None => Err(invalid("max/min of an empty list")),
    }
}

fn first_header(headers: &[(String, String)], name: &str) -> String {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// Gloo's `word_count`: words of strings, keys and values of objects, elements of arrays; numbers and booleans
/// count one.
pub fn word_count(value: &Value) -> u64 {
    match value {
        Value::String(s) => words(s),
        Value::Array(items) => items.iter().map(word_count).fold(0, u64::saturating_add),
        Value::Object(map) => {
            map.iter().map(|(k, v)| words(k).saturating_add(word_count(v))).fold(0, u64::saturating_add)
        }
        Value::Number(_) | Value::Bool(_) => 1,
        Value::Null => 0,
    }
}

/// Gloo's count of the words of a string, byte by byte with C's `isspace`: after any leading whitespace, one per
/// run of whitespace, and one more unless the string ends with whitespace (so a string of spaces counts one).
/// The empty string, where Gloo reads before the string, counts none.
fn words(text: &str) -> u64 {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = text.as_bytes();
    let Some(last) = bytes.last() else { return 0 };
    let first = bytes.iter().position(|b| !space(b)).unwrap_or(0);
    let mut count: u64 = 0;
    let mut in_space = false;
    for b in bytes.iter().skip(first) {
        if space(b) && !in_space {
            count = count.saturating_add(1);
        }
        in_space = space(b);
    }
    if space(last) {
        count
    } else {
        count.saturating_add(1)
    }
}

/// Gloo's `substring(s, start, length)`: byte positions; a start outside the string gives "", a length that is
/// absent, not positive or past the end runs to the end.
pub fn substring(input: &str, start: i64, length: Option<i64>) -> String {
    let bytes = input.as_bytes();
    let (Ok(start), Ok(len)) = (usize::try_from(start), i64::try_from(bytes.len())) else { return String::new() };
    let end = match length {
        Some(n) if n > 0 && i64::try_from(start).ok().and_then(|s| s.checked_add(n)).is_some_and(|e| e <= len) => {
            usize::try_from(n).ok().and_then(|n| start.checked_add(n))
        }
        _ => None,
    };
    let slice = bytes.get(start..end.unwrap_or(bytes.len())).unwrap_or_default();
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
