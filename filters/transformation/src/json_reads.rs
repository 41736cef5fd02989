//! The JSON body, parsed only as far as the templates read it.
//!
//! A body template usually reads a few fields of a large body. Which parts it can read is known when the
//! configuration is applied: a path (`customer.name`, `items.0.sku`) reads that value whole, `length(path)` reads
//! only how many members or elements it has, and a function that looks the data up by a name computed at render
//! time (`context()`, `exists(...)`) reads everything. The body is accepted or refused exactly as serde_json's
//! whole parse would (the same errors: syntax, UTF-8, escapes, number range, nesting depth), but values are built
//! only where a template can reach them: no maps or strings for the rest, which is skipped with syntax checks only
//! when a scan of the body shows the other checks cannot fail (see `Skip`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use memchr::memchr_iter;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::functions::{function_name, READS_WHOLE_CONTEXT};
use crate::inja::{Expr, Node, Step};

/// What templates read of one JSON value (the root: the JSON context).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JsonReads {
    /// The value is read as it is (printed, compared, passed to a function, looped over): built in full.
    whole: bool,
    /// How many members or elements it has is read (`length`): each is kept, as null unless read further.
    count: bool,
    /// Members read further down, by key; an array element by its index written in decimal (`items.0`).
    parts: BTreeMap<String, JsonReads>,
    /// The keys of `parts` that are array indexes, sorted: the only elements of an array that are built.
    indexes: Vec<usize>,
}

impl JsonReads {
    /// Reads everything: the body is parsed whole.
    pub fn everything() -> Self {
        JsonReads { whole: true, ..JsonReads::default() }
    }

    /// Whether the whole body is read.
    pub fn is_everything(&self) -> bool {
        self.whole
    }

    /// Adds what these template nodes read.
    pub fn add_nodes(&mut self, nodes: &[Node]) {
        for node in nodes {
            match node {
                Node::Text(_) => {}
                Node::Print { expr, .. } | Node::Set { expr, .. } => self.add_expr(expr, false),
                Node::If { branches, otherwise, .. } => {
                    for (condition, body) in branches {
                        self.add_expr(condition, false);
                        self.add_nodes(body);
                    }
                    self.add_nodes(otherwise);
                }
                Node::For { iterable, body, .. } => {
                    self.add_expr(iterable, false);
                    self.add_nodes(body);
                }
            }
        }
    }

    /// Adds what an expression reads; `count_only` when its value is only counted (`length`'s argument).
    /// A path is marked even when a loop or `set` variable of that name may hide it: the renderer falls back to
    /// the context when such a variable lacks the steps.
    fn add_expr(&mut self, expr: &Expr, count_only: bool) {
        match expr {
            Expr::Literal(_) => {}
            Expr::Array(items) => items.iter().for_each(|item| self.add_expr(item, false)),
            Expr::Object(pairs) => pairs.iter().for_each(|(_, value)| self.add_expr(value, false)),
            Expr::Path { name, steps, call, .. } => {
                self.add_path(name, steps, count_only);
                if call.and_then(function_name).is_some_and(|f| READS_WHOLE_CONTEXT.contains(&f)) {
                    self.whole = true;
                }
            }
            Expr::Call { function, args, .. } => {
                let name = function_name(*function);
                if name.is_some_and(|f| READS_WHOLE_CONTEXT.contains(&f)) {
                    self.whole = true;
                }
                let counted = name == Some("length");
                args.iter().for_each(|arg| self.add_expr(arg, counted));
            }
            Expr::Attr(target, _) | Expr::Not(target) | Expr::Neg(target, _) => self.add_expr(target, false),
            Expr::Index(target, index) => {
                self.add_expr(target, false);
                self.add_expr(index, false);
            }
            Expr::Binary { left, right, .. } => {
                self.add_expr(left, false);
                self.add_expr(right, false);
            }
        }
    }

    /// Marks the value at `name.steps` as read whole (or only counted).
    pub fn add_path(&mut self, name: &str, steps: &[Step], count_only: bool) {
        let mut node = self.part(name);
        for step in steps {
            node = node.part(&step.key);
        }
        if count_only {
            node.count = true;
        } else {
            node.whole = true;
        }
    }

    fn part(&mut self, key: &str) -> &mut JsonReads {
        if let Some(index) = Step::key(key).index {
            if let Err(at) = self.indexes.binary_search(&index) {
                self.indexes.insert(at, index);
            }
        }
        self.parts.entry(key.to_string()).or_default()
    }

    /// Parses a JSON document keeping only what is read; the error is serde_json's, as for a whole parse.
    pub fn parse(&self, body: &[u8]) -> serde_json::Result<Value> {
        if self.whole {
            return serde_json::from_slice(body);
        }
        // What is not read is skipped without the checks a parse makes where they cannot fail on this body (about
        // three times faster); a body that fails there is parsed again with them, for serde_json's own error.
        if skipping_is_exact(body) {
            if let Ok(value) = self.parse_pruned(body, Skip::Unchecked) {
                return Ok(value);
            }
        }
        self.parse_pruned(body, Skip::Checked)
    }

    fn parse_pruned(&self, body: &[u8], skip: Skip) -> serde_json::Result<Value> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let value = Pruned { reads: Some(self), skip }.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    }

    /// What is read of array element `index`.
    fn element(&self, index: usize) -> Option<&JsonReads> {
        self.indexes.binary_search(&index).ok().and_then(|_| self.parts.get(&index.to_string()))
    }
}

/// How a value no template reads is passed over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Parsed and checked as serde_json checks a value it builds (strings decoded and their UTF-8 and escapes
    /// checked, numbers in range, nesting within the depth limit), then dropped.
    Checked,
    /// Skipped with serde's `IgnoredAny`: syntax only (no UTF-8 check inside strings, no surrogate pairing, no
    /// number range, no depth limit). Only for a body on which those checks cannot fail ([`skipping_is_exact`]).
    Unchecked,
}

/// Whether a body passes the checks an unchecked skip leaves out, wherever its values are: it is valid UTF-8,
/// has no `\u` escape of a surrogate (`\uD...`), no number with an exponent or of 300 digits (the only ones that
/// can be out of range), and opens fewer than 100 arrays and objects in all (serde_json refuses a depth of 128).
/// Conservative (a `1e` or a `\ud` inside a string also says no) and cheap: the scans have no early exit, so that
/// they compile to vector instructions (about 0.1 µs for 1 KiB natively and in V8).
fn skipping_is_exact(body: &[u8]) -> bool {
    const MAX_OPENED: usize = 100;
    let opened: usize = body
        .chunks(usize::from(u8::MAX))
        .map(|chunk| usize::from(chunk.iter().map(|&b| u8::from(b == b'[' || b == b'{')).fold(0, u8::wrapping_add)))
        .sum();
    let digit_then_e = body
        .iter()
        .zip(body.get(1..).unwrap_or_default())
        .map(|(&a, &b)| u8::from(a.is_ascii_digit()) & u8::from(b | 0x20 == b'e'))
        .fold(0, |any, pair| any | pair);
    let surrogate_escape =
        |at: usize| body.get(at + 1) == Some(&b'u') && body.get(at + 2).is_some_and(|b| b | 0x20 == b'd');
    std::str::from_utf8(body).is_ok()
        && opened < MAX_OPENED
        && digit_then_e == 0
        && !memchr_iter(b'\\', body).any(surrogate_escape)
        && !may_hold_300_digits(body)
}

/// Whether a run of 300 digits may be in `body`: any such run covers a whole aligned block of 150 bytes, and
/// a block is ruled out at its first byte that is not a digit (most often its first).
fn may_hold_300_digits(body: &[u8]) -> bool {
    const BLOCK: usize = 150;
    body.chunks_exact(BLOCK).any(|block| block.iter().all(u8::is_ascii_digit))
}

/// Builds what `JsonReads` reads of a value; `reads: None` reads nothing: the value is skipped as `skip` says and
/// dropped as null. One visitor for both keeps the .wasm small.
#[derive(Clone, Copy)]
struct Pruned<'r> {
    reads: Option<&'r JsonReads>,
    skip: Skip,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.reads {
            Some(reads) if reads.whole => Value::deserialize(deserializer),
            None if self.skip == Skip::Unchecked => deserializer.deserialize_ignored_any(self),
            _ => deserializer.deserialize_any(self),
        }
    }
}

impl Pruned<'_> {
    fn keep(self, value: impl FnOnce() -> Value) -> Value {
        if self.reads.is_some() {
            value()
        } else {
            Value::Null
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(self.keep(|| Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(self.keep(|| Value::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(self.keep(|| Value::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // As serde_json's Value: a float that is not finite is null.
        Ok(self.keep(|| Number::from_f64(value).map_or(Value::Null, Value::Number)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(self.keep(|| Value::String(value.to_string())))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Some(reads) = self.reads else {
            while seq.next_element_seed(self)?.is_some() {}
            return Ok(Value::Null);
        };
        // Elements are kept up to the last one read (or all, when counted), so that indexes stay right.
        let kept_up_to = |index: usize| reads.count || reads.indexes.last().is_some_and(|&last| index <= last);
        let mut items = Vec::new();
        let mut index = 0usize;
        while let Some(value) = seq.next_element_seed(Pruned { reads: reads.element(index), ..self })? {
            if kept_up_to(index) {
                items.push(value);
            }
            index = index.saturating_add(1);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(reads) = self.reads else {
            while map.next_key::<Key<'de>>()?.is_some() {
                map.next_value_seed(self)?;
            }
            return Ok(Value::Null);
        };
        let mut members = Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let part = reads.parts.get(key.as_ref());
            let value = map.next_value_seed(Pruned { reads: part, ..self })?;
            if part.is_some() || reads.count {
                members.insert(key.into_owned(), value);
            }
        }
        Ok(Value::Object(members))
    }
}

/// A member's name, borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Templates;
    use serde_json::json;

    fn reads_of(source: &str) -> JsonReads {
        let mut templates = Templates::new(false);
        templates.add("t", source, false).unwrap();
        templates.json_reads()
    }

    const ORDER: &str = r#"{"customer": {"name": "Ada", "email": "a@x", "tier": "gold"},
        "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": 3}], "note": "n"}"#;

    #[test]
    fn only_what_templates_read_is_built() {
        let reads = reads_of("{{ customer.name }} {{ length(items) }} {{ items.0.sku }}");
        let pruned = reads.parse(ORDER.as_bytes()).unwrap();
        assert_eq!(pruned, json!({"customer": {"name": "Ada"}, "items": [{"sku": "a"}, null, null]}));
    }

    #[test]
    fn elements_stop_after_the_last_one_read_unless_counted() {
        let reads = reads_of("{{ items.1.qty }}");
        assert_eq!(reads.parse(ORDER.as_bytes()).unwrap(), json!({"items": [null, {"qty": 2}]}));
        let reads = reads_of("{{ length(customer) }}");
        assert_eq!(
            reads.parse(ORDER.as_bytes()).unwrap(),
            json!({"customer": {"name": null, "email": null, "tier": null}})
        );
    }

    #[test]
    fn a_value_used_whole_is_built_whole() {
        for source in
            ["{{ customer }}", "{% for i in customer %}{% endfor %}", "{{ upper(customer.name) }}{{ customer }}"]
        {
            let pruned = reads_of(source).parse(ORDER.as_bytes()).unwrap();
            let full: Value = serde_json::from_str(ORDER).unwrap();
            assert_eq!(pruned.get("customer"), full.get("customer"), "{source}");
        }
    }

    #[test]
    fn names_computed_at_render_time_read_everything() {
        for source in ["{{ context().note }}", "{{ exists(\"note\") }}", "{{ length(context) }}"] {
            assert!(reads_of(source).is_everything(), "{source}");
        }
        assert!(!reads_of("{{ note }} {{ header(\"x\") }} {{ body() }}").is_everything());
    }

    #[test]
    fn the_parts_not_read_are_checked_as_a_whole_parse_checks_them() {
        let reads = reads_of("{{ a }}");
        for body in [
            &br#"{"a": 1, "b": "\ud800"}"#[..],
            br#"{"a": 1, "b": 1e999}"#,
            b"{\"a\": 1, \"b\": \"\xff\"}",
            br#"{"a": 1, "b": [1, 2,]}"#,
            br#"{"a": 1} x"#,
            br#"{"a": 1, "b\u0000": 2, "b": "\x"}"#,
        ] {
            let full = serde_json::from_slice::<Value>(body).unwrap_err().to_string();
            let pruned = reads.parse(body).unwrap_err().to_string();
            assert_eq!(pruned, full, "{}", String::from_utf8_lossy(body));
        }
        let deep = format!("{{\"a\": 1, \"b\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        let full = serde_json::from_str::<Value>(&deep).unwrap_err().to_string();
        assert_eq!(reads.parse(deep.as_bytes()).unwrap_err().to_string(), full);
        let long = format!("{{\"a\": 1, \"b\": 1{}}}", "0".repeat(400));
        let full = serde_json::from_str::<Value>(&long).unwrap_err().to_string();
        assert_eq!(reads.parse(long.as_bytes()).unwrap_err().to_string(), full);
    }

    #[test]
    fn values_not_read_are_skipped_unchecked_only_where_the_checks_cannot_fail() {
        assert!(skipping_is_exact(ORDER.as_bytes()));
        assert!(skipping_is_exact(br#"{"a": "caf\u00c9 \n", "n": [1.5, -2, 300], "s": "e1"}"#));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let long = format!("[1{}]", "0".repeat(300));
        for body in [
            &b"[\"\xff\"]"[..],
            br#"["\ud83d\ude00"]"#,
            br#"["\uDC00"]"#,
            br#"[1e5]"#,
            br#"[2.5E-3]"#,
            deep.as_bytes(),
            long.as_bytes(),
        ] {
            assert!(!skipping_is_exact(body), "{}", String::from_utf8_lossy(body));
        }
    }
}
