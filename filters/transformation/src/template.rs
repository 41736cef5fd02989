//! Templates: Gloo's inja templates, parsed by `inja.rs` when the configuration is applied and rendered here,
//! with inja's built-in functions and Gloo's (`header`, `body`, `extraction`, ...).
//!
//! Values are JSON values, as in inja. Rendering borrows the message's JSON context and the templates' literals
//! instead of copying them: a body template usually reads a few fields of a large body.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::functions::{resolve, DEFAULT, FUNCTIONS};
use crate::inja::{self, BinaryOp, Expr, Node, Step};
use crate::json_reads::JsonReads;

/// What one render reads: the message being transformed.
#[derive(Debug, Default)]
pub struct RenderData {
    /// The headers of the message being transformed, as they are at this point of the transformation.
    pub headers: Vec<(String, String)>,
    /// The request's headers when transforming a response (`None` on requests: `request_header` reads `headers`).
    pub request_headers: Option<Rc<Vec<(String, String)>>>,
    pub body: String,
    pub extractions: HashMap<String, String>,
    /// The JSON context: the parsed body (with extractions merged, unless `advanced_templates`). Names that are
    /// not set in the template are its fields; anything but an object has none.
    pub context: Value,
    pub env: Rc<HashMap<String, String>>,
    pub data_sources: Rc<BTreeMap<String, String>>,
    /// `replace_with_random`: one random value per pattern and render data.
    pub randoms: RefCell<HashMap<String, String>>,
    /// What `cluster_metadata`, `dynamic_metadata` and `host_metadata` read.
    pub metadata: Metadata,
}

/// Envoy's metadata for Gloo's `*_metadata` functions: each is the `filter_metadata` of an Envoy `Metadata` as a
/// JSON object (filter namespace -> its fields), `Value::Null` where Envoy has none for this message.
#[derive(Debug)]
pub struct Metadata {
    /// The route's cluster's metadata (`xds.cluster_metadata`).
    pub cluster: Value,
    /// The stream's dynamic metadata (`metadata`).
    pub dynamic: Value,
    /// The upstream host's metadata (`xds.upstream_host_metadata`), where Envoy has chosen one.
    pub host: Value,
    /// Gloo's `string_delimiter`: what separates the parts of a metadata key (default `:`, as in Gloo).
    pub delimiter: char,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata { cluster: Value::Null, dynamic: Value::Null, host: Value::Null, delimiter: ':' }
    }
}

/// The templates of one transformation, parsed.
#[derive(Debug)]
pub struct Templates {
    /// Gloo's `escape_characters`: printed strings are JSON-escaped.
    escape: bool,
    parsed: HashMap<String, inja::Template>,
}

impl Templates {
    pub fn new(escape_characters: bool) -> Self {
        Templates { escape: escape_characters, parsed: HashMap::new() }
    }

    /// Parses a template under `name` (what errors call it). The error is the parser's message.
    pub fn add(&mut self, name: &str, source: &str, pointer_notation: bool) -> Result<(), String> {
        let template = inja::parse(name, source, pointer_notation, &resolve)?;
        self.parsed.insert(name.to_string(), template);
        Ok(())
    }

    /// Renders the template `name` over `data`. The error is inja's, with its position, and names the template:
    /// `[inja.exception.render_error] (at <line>:<column>) <what> (in <name>)`.
    pub fn render(&self, name: &str, data: &RenderData) -> Result<String, String> {
        let template = self.parsed.get(name).ok_or_else(|| format!("no template {name}"))?;
        // Templates without tags are their text.
        if let [Node::Text(text)] = template.nodes.as_slice() {
            return Ok(text.clone());
        }
        let mut renderer = Renderer {
            data,
            escape: self.escape,
            globals: Vec::new(),
            locals: Vec::new(),
            loops: Vec::new(),
            work: Cell::new(0),
        };
        let mut out = String::new();
        renderer.nodes(&template.nodes, &mut out, 0).map_err(|e| {
            let (line, column) = inja::line_column(&template.source, e.pos.unwrap_or(0));
            format!("[inja.exception.render_error] (at {line}:{column}) {} (in {name})", e.message)
        })?;
        Ok(out)
    }

    /// What the templates read of the JSON context, for parsing the body only as far as that.
    pub fn json_reads(&self) -> JsonReads {
        let mut reads = JsonReads::default();
        for template in self.parsed.values() {
            reads.add_nodes(&template.nodes);
        }
        reads
    }

    /// Names a template reads that it does not define itself (functions included).
    pub fn undeclared_variables(&self, name: &str) -> HashSet<String> {
        self.parsed.get(name).map(|t| t.undeclared.clone()).unwrap_or_default()
    }
}

/// A render error; `undefined` when a name or path was not found (which `default` catches); `pos` where in the
/// template (the innermost expression that knows its position sets it).
#[derive(Debug)]
pub(crate) struct Error {
    undefined: bool,
    message: String,
    pos: Option<usize>,
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error { undefined: false, message: message.into(), pos: None }
}

/// An element that is not there: undefined, as a name not found is.
fn missing(message: String) -> Error {
    Error { undefined: true, message, pos: None }
}

fn not_found(name: &str, pos: usize) -> Error {
    Error { undefined: true, message: format!("variable '{name}' not found"), pos: Some(pos) }
}

/// Gives an error without a position the one of the expression it came from.
fn at<T>(result: Result<T>, pos: usize) -> Result<T> {
    result.map_err(|mut e| {
        e.pos.get_or_insert(pos);
        e
    })
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) struct Renderer<'a> {
    pub(crate) data: &'a RenderData,
    escape: bool,
    /// `set` variables: inja's `set` writes the template's data, seen everywhere after it.
    globals: Vec<(&'a str, Cow<'a, Value>)>,
    /// Loop variables, innermost last.
    locals: Vec<(&'a str, Cow<'a, Value>)>,
    /// The enclosing loops: (index, length), innermost last.
    loops: Vec<(usize, usize)>,
    /// Work done so far, within `MAX_WORK`.
    work: Cell<usize>,
}

/// How much one render may do, so that a template over a large request body (a loop in a loop, a value doubled
/// in a loop, text repeated per item) gives an error instead of exhausting the VM's memory or time. Counted in
/// bytes of text written, copied or compared, and units for each value copied and each loop iteration.
pub(crate) const MAX_WORK: usize = 64 << 20;

/// What a loop iteration costs: about what copying 16 bytes does.
const LOOP_ITERATION: usize = 16;

/// How deep a value built by a template may nest (as deep as serde_json's parser allows bodies to): printing,
/// comparing and dropping values recurse.
const MAX_VALUE_DEPTH: usize = 128;

impl<'a> Renderer<'a> {
    /// Renders `nodes` into `out`; an error without a position gets `block_pos`, the enclosing statement's.
    fn nodes(&mut self, nodes: &'a [Node], out: &mut String, block_pos: usize) -> Result<()> {
        for node in nodes {
            match node {
                Node::Text(text) => {
                    at(self.spend(text.len()), block_pos)?;
                    out.push_str(text);
                }
                Node::Print { expr, pos } => {
                    let value = at(self.eval(expr), *pos)?;
                    let before = out.len();
                    print(out, &value, self.escape);
                    at(self.spend(out.len() - before), *pos)?;
                }
                Node::If { branches, otherwise, pos } => {
                    let mut chosen: &'a [Node] = otherwise;
                    for (condition, body) in branches {
                        if truthy(&*at(self.eval(condition), *pos)?) {
                            chosen = body;
                            break;
                        }
                    }
                    self.nodes(chosen, out, *pos)?;
                }
                Node::For { key, value, iterable, body, pos } => {
                    let iterable = at(self.eval(iterable), *pos)?;
                    let items = at(loop_items(iterable, key.is_some()), *pos)?;
                    let length = items.len();
                    for (index, (item_key, item)) in items.into_iter().enumerate() {
                        at(self.spend(LOOP_ITERATION), *pos)?;
                        let mark = self.locals.len();
                        if let (Some(name), Some(item_key)) = (key, item_key) {
                            self.locals.push((name, item_key));
                        }
                        self.locals.push((value, item));
                        self.loops.push((index, length));
                        let result = self.nodes(body, out, *pos);
                        self.loops.pop();
                        self.locals.truncate(mark);
                        result?;
                    }
                }
                Node::Set { name, steps, expr, pos } => {
                    let value = at(self.eval(expr), *pos)?;
                    at(self.set(name, steps, value), *pos)?;
                }
            }
        }
        Ok(())
    }

    /// `set name.steps = value`: a dotted name sets a field of an object, created where missing (as inja's JSON
    /// pointer assignment does).
    fn set(&mut self, name: &'a str, steps: &[Step], value: Cow<'a, Value>) -> Result<()> {
        let index = match self.globals.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                self.globals.push((name, Cow::Owned(Value::Null)));
                self.globals.len() - 1
            }
        };
        let Some((_, slot)) = self.globals.get_mut(index) else { return Err(invalid("set")) };
        if steps.is_empty() {
            *slot = value;
            return Ok(());
        }
        let mut node = slot.to_mut();
        for step in steps {
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            node = match node {
                Value::Object(map) => map.entry(step.key.clone()).or_insert(Value::Null),
                Value::Array(items) => match step.index {
                    Some(i) if i == items.len() => {
                        items.push(Value::Null);
                        items.last_mut().ok_or_else(|| invalid("set"))?
                    }
                    Some(i) => items.get_mut(i).ok_or_else(|| invalid(format!("cannot set element {i}")))?,
                    None => return Err(invalid(format!("cannot set '{}' of an array", step.key))),
                },
                other => return Err(invalid(format!("cannot set '{}' of {}", step.key, kind(other)))),
            };
        }
        *node = value.into_owned();
        let (weight, depth) = measure(slot, MAX_WORK.saturating_sub(self.work.get()));
        self.spend(weight)?;
        if depth > MAX_VALUE_DEPTH {
            return Err(invalid(format!("a value nested deeper than {MAX_VALUE_DEPTH} levels")));
        }
        Ok(())
    }

    fn eval(&self, expr: &'a Expr) -> Result<Cow<'a, Value>> {
        match expr {
            Expr::Literal(value) => Ok(Cow::Borrowed(value)),
            Expr::Path { name, steps, written, call, pos } => match self.variable(name, steps) {
                Some(found) => at(self.charge(found), *pos),
                None => match call.and_then(|c| FUNCTIONS.get(c)) {
                    Some((_, _, _, f)) => at(f(self, Vec::new()).and_then(|v| self.charge(v)), *pos),
                    None => Err(not_found(written, *pos)),
                },
            },
            Expr::Call { function, args, pos } => {
                if *function == DEFAULT {
                    let [value, fallback] = args.as_slice() else { return Err(invalid("default: two arguments")) };
                    return match self.eval(value) {
                        Err(e) if e.undefined => self.eval(fallback),
                        other => other,
                    };
                }
                let (_, _, _, f) = FUNCTIONS.get(*function).ok_or_else(|| invalid("unknown function"))?;
                let args = args.iter().map(|a| self.eval(a)).collect::<Result<Vec<_>>>()?;
                at(self.spend(args.iter().map(|a| shallow_size(a)).sum()), *pos)?;
                at(f(self, args).and_then(|v| self.charge(v)), *pos)
            }
            Expr::Attr(target, steps) => {
                let target = self.eval(target)?;
                let found = descend(target, steps).ok_or_else(|| {
                    let path = steps.iter().map(|s| s.key.as_str()).collect::<Vec<_>>().join(".");
                    missing(format!("could not find element with given name '{path}'"))
                })?;
                self.charge(found)
            }
            Expr::Index(target, index) => {
                let target = self.eval(target)?;
                let index = self.eval(index)?;
                let found = pick(target, |value| match (value, &*index) {
                    (Value::Object(map), Value::String(key)) => map.get(key),
                    (Value::Array(items), Value::Number(n)) => {
                        // Negative indexes count from the end.
                        let i = n.as_i64()?;
                        let i = if i < 0 { i.checked_add(i64::try_from(items.len()).ok()?)? } else { i };
                        items.get(usize::try_from(i).ok()?)
                    }
                    _ => None,
                });
                self.charge(found.ok_or_else(|| missing(format!("could not find element {index}")))?)
            }
            Expr::Not(inner) => Ok(Cow::Owned(Value::Bool(!truthy(&*self.eval(inner)?)))),
            Expr::Neg(inner, pos) => {
                let value = self.eval(inner)?;
                let negated = match number(&value) {
                    Some(Number::Int(i)) => {
                        i.checked_neg().map(Value::from).ok_or_else(|| invalid("integer overflow in -"))
                    }
                    Some(Number::Float(f)) => Ok(Value::from(-f)),
                    None => Err(invalid(format!("type must be number, but is {}", type_name(&value)))),
                };
                at(negated.map(Cow::Owned), *pos)
            }
            Expr::Array(items) => {
                let items = items.iter().map(|e| self.eval(e).map(Cow::into_owned)).collect::<Result<Vec<_>>>()?;
                self.charge(Cow::Owned(Value::Array(items)))
            }
            Expr::Object(pairs) => {
                let mut map = Map::new();
                for (key, value) in pairs {
                    map.insert(key.clone(), self.eval(value)?.into_owned());
                }
                self.charge(Cow::Owned(Value::Object(map)))
            }
            Expr::Binary { op, left, right, pos } => at(self.binary(*op, left, right), *pos),
        }
    }

    /// What a name and the steps after it find, as inja looks it up: the enclosing loop's `loop`, then loop and
    /// `set` variables, then the JSON context (also when a loop or `set` variable of that name lacks the steps).
    /// What the template computed is copied, what it borrows (the context, its literals) is not.
    pub(crate) fn variable(&self, name: &str, steps: &[Step]) -> Option<Cow<'a, Value>> {
        if name == "loop" {
            if let Some(found) = self.loop_value(steps) {
                return Some(found);
            }
        }
        let local = self.locals.iter().rev().chain(self.globals.iter()).find(|(n, _)| *n == name);
        let found = match local {
            Some((_, Cow::Borrowed(value))) => walk(value, steps).map(Cow::Borrowed),
            Some((_, Cow::Owned(value))) => walk(value, steps).map(|v| Cow::Owned(v.clone())),
            None => None,
        };
        found.or_else(|| {
            let data: &'a RenderData = self.data;
            data.context.as_object().and_then(|map| map.get(name)).and_then(|v| walk(v, steps)).map(Cow::Borrowed)
        })
    }

    /// `loop` inside a loop: `index`, `index1`, `is_first`, `is_last`, and `parent` (the enclosing loop's).
    fn loop_value(&self, steps: &[Step]) -> Option<Cow<'a, Value>> {
        let mut depth = self.loops.len().checked_sub(1)?;
        let mut steps = steps.iter();
        let mut field = steps.next();
        while field.is_some_and(|s| s.key == "parent") {
            depth = depth.checked_sub(1)?;
            field = steps.next();
        }
        let &(index, length) = self.loops.get(depth)?;
        let value = match field.map(|s| s.key.as_str()) {
            None => self.loop_object(depth)?,
            Some("index") => Value::from(index),
            Some("index1") => Value::from(index.checked_add(1)?),
            Some("is_first") => Value::Bool(index == 0),
            Some("is_last") => Value::Bool(index.checked_add(1)? == length),
            Some(_) => return None,
        };
        let rest: Vec<&Step> = steps.collect();
        if rest.is_empty() {
            return Some(Cow::Owned(value));
        }
        let mut node = &value;
        for step in rest {
            node = match node {
                Value::Object(map) => map.get(&step.key)?,
                _ => return None,
            };
        }
        Some(Cow::Owned(node.clone()))
    }

    /// The loop at `depth` as inja's `loop` object, with its parents.
    fn loop_object(&self, depth: usize) -> Option<Value> {
        let &(index, length) = self.loops.get(depth)?;
        let mut map = Map::new();
        map.insert("index".into(), Value::from(index));
        map.insert("index1".into(), Value::from(index.checked_add(1)?));
        map.insert("is_first".into(), Value::Bool(index == 0));
        map.insert("is_last".into(), Value::Bool(index.checked_add(1)? == length));
        if let Some(parent) = depth.checked_sub(1) {
            map.insert("parent".into(), self.loop_object(parent)?);
        }
        Some(Value::Object(map))
    }

    pub(crate) fn spend(&self, units: usize) -> Result<()> {
        let total = self.work.get().saturating_add(units);
        self.work.set(total);
        if total > MAX_WORK {
            return Err(invalid(format!(
                "the template needs more than {} Mi units of work (bytes written or copied, values copied, loop \
                 iterations)",
                MAX_WORK >> 20
            )));
        }
        Ok(())
    }

    /// Charges a value the render made or copied (borrowed ones are free); refuses one nested too deeply.
    fn charge(&self, value: Cow<'a, Value>) -> Result<Cow<'a, Value>> {
        if let Cow::Owned(owned) = &value {
            let (weight, depth) = measure(owned, MAX_WORK.saturating_sub(self.work.get()));
            self.spend(weight)?;
            if depth > MAX_VALUE_DEPTH {
                return Err(invalid(format!("a value nested deeper than {MAX_VALUE_DEPTH} levels")));
            }
        }
        Ok(value)
    }

    fn binary(&self, op: BinaryOp, left: &'a Expr, right: &'a Expr) -> Result<Cow<'a, Value>> {
        let left = self.eval(left)?;
        let value = match op {
            BinaryOp::Or => Value::Bool(truthy(&left) || truthy(&*self.eval(right)?)),
            BinaryOp::And => Value::Bool(truthy(&left) && truthy(&*self.eval(right)?)),
            _ => {
                let right = self.eval(right)?;
                // Comparing, searching and concatenating walk their operands.
                self.spend(shallow_size(&left).saturating_add(shallow_size(&right)))?;
                match op {
                    BinaryOp::Eq => Value::Bool(compare(&left, &right).is_eq()),
                    BinaryOp::Ne => Value::Bool(compare(&left, &right).is_ne()),
                    BinaryOp::Lt => Value::Bool(compare(&left, &right).is_lt()),
                    BinaryOp::Le => Value::Bool(compare(&left, &right).is_le()),
                    BinaryOp::Gt => Value::Bool(compare(&left, &right).is_gt()),
                    BinaryOp::Ge => Value::Bool(compare(&left, &right).is_ge()),
                    BinaryOp::In => Value::Bool(contains(&right, &left)),
                    _ => arithmetic(op, &left, &right)?,
                }
            }
        };
        Ok(Cow::Owned(value))
    }
}

/// The items a `for` loop runs over: (key or index when the loop names two variables, value). A loop with one
/// variable over an object runs over its keys.
#[allow(clippy::type_complexity)]
fn loop_items(iterable: Cow<'_, Value>, pairs: bool) -> Result<Vec<(Option<Cow<'_, Value>>, Cow<'_, Value>)>> {
    let key = |k: &str| Cow::Owned(Value::String(k.to_string()));
    let index = |i: usize| pairs.then(|| Cow::Owned(Value::from(i)));
    Ok(match iterable {
        Cow::Borrowed(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, v)| (index(i), Cow::Borrowed(v))).collect()
        }
        Cow::Owned(Value::Array(items)) => {
            items.into_iter().enumerate().map(|(i, v)| (index(i), Cow::Owned(v))).collect()
        }
        Cow::Borrowed(Value::Object(map)) if pairs => {
            map.iter().map(|(k, v)| (Some(key(k)), Cow::Borrowed(v))).collect()
        }
        Cow::Owned(Value::Object(map)) if pairs => {
            map.into_iter().map(|(k, v)| (Some(Cow::Owned(Value::String(k))), Cow::Owned(v))).collect()
        }
        Cow::Borrowed(Value::Object(map)) => map.keys().map(|k| (None, key(k))).collect(),
        Cow::Owned(Value::Object(map)) => map.into_iter().map(|(k, _)| (None, Cow::Owned(Value::String(k)))).collect(),
        _ if pairs => return Err(invalid("object must be an object")),
        _ => return Err(invalid("object must be an array")),
    })
}

pub(crate) fn walk<'v>(mut node: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for step in steps {
        node = match node {
            Value::Object(map) => map.get(&step.key)?,
            Value::Array(items) => items.get(step.index?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// `walk` on a value that may be owned (then the part found is copied out).
fn descend<'v>(value: Cow<'v, Value>, steps: &[Step]) -> Option<Cow<'v, Value>> {
    pick(value, |v| walk(v, steps))
}

/// The part of a value that `part` finds: borrowed from a borrowed value, copied out of an owned one.
pub(crate) fn pick<'v>(value: Cow<'v, Value>, part: impl Fn(&Value) -> Option<&Value>) -> Option<Cow<'v, Value>> {
    match value {
        Cow::Borrowed(v) => part(v).map(Cow::Borrowed),
        Cow::Owned(v) => part(&v).map(|found| Cow::Owned(found.clone())),
    }
}

/// How a value prints, as in inja: strings as they are (JSON-escaped with `escape_characters`), `null` as
/// nothing, everything else as JSON.
fn print(out: &mut String, value: &Value, escape: bool) {
    match value {
        Value::String(text) if escape => out.push_str(&json_escape(text)),
        Value::String(text) => out.push_str(text),
        Value::Null => {}
        other => dump(out, other),
    }
}

/// A value as nlohmann's `dump()` writes it, which inja prints with: compact JSON, floats in nlohmann's format.
pub(crate) fn dump(out: &mut String, value: &Value) {
    match value {
        Value::Number(n) if n.is_f64() => out.push_str(&float_text(n.as_f64().unwrap_or_default())),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                dump(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(&json_escape(key));
                out.push_str("\":");
                dump(out, item);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A float as nlohmann writes it: the shortest digits that read back, as a decimal when the decimal exponent is
/// between -4 and 15 (with `.0` when whole), else as `d.ddde+XX`.
pub(crate) fn float_text(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sign = if f < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the shortest digits too: `d.ddd` and the exponent of the first digit.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let Ok(exponent) = exponent.parse::<i64>() else { return format!("{sign}{scientific}") };
    let length = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // The position of the decimal point after the first digits (nlohmann's `n`).
    let point = exponent.saturating_add(1);
    let zeros = |n: i64| "0".repeat(usize::try_from(n).unwrap_or(0));
    let body = if length <= point && point <= 15 {
        format!("{digits}{}.0", zeros(point - length))
    } else if 0 < point && point <= 15 {
        let (whole, fraction) = digits.split_at(usize::try_from(point).unwrap_or(0).min(digits.len()));
        format!("{whole}.{fraction}")
    } else if -4 < point && point <= 0 {
        format!("0.{}{digits}", zeros(-point))
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exponent_sign}{:02}", exponent.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// What a value costs to walk at its top level: the bytes of a string, the items of an array or object.
fn shallow_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.len(),
        Value::Object(map) => map.len(),
        _ => 1,
    }
}

/// What a copy of a value costs (its text bytes, and 32 a value: about what one takes in memory), counted until it
/// passes `cap`, and how deep it nests (counted until it passes `MAX_VALUE_DEPTH`).
pub(crate) fn measure(value: &Value, cap: usize) -> (usize, usize) {
    fn visit(value: &Value, depth: usize, cap: usize, weight: &mut usize, deepest: &mut usize) {
        *weight += 32;
        *deepest = (*deepest).max(depth);
        if *weight > cap || depth > MAX_VALUE_DEPTH {
            return;
        }
        match value {
            Value::String(s) => *weight += s.len(),
            Value::Array(items) => items.iter().for_each(|item| visit(item, depth + 1, cap, weight, deepest)),
            Value::Object(map) => map.iter().for_each(|(key, item)| {
                *weight += key.len();
                visit(item, depth + 1, cap, weight, deepest);
            }),
            _ => {}
        }
    }
    let (mut weight, mut deepest) = (0, 0);
    visit(value, 1, cap, &mut weight, &mut deepest);
    (weight, deepest)
}

/// A string's JSON escape without the quotes.
pub fn json_escape(text: &str) -> String {
    let quoted = Value::from(text).to_string();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

/// A value as text: strings as they are, everything else as JSON.
pub(crate) fn text_of(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(text) => Cow::Borrowed(text),
        other => {
            let mut text = String::new();
            dump(&mut text, other);
            Cow::Owned(text)
        }
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub(crate) fn float(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

pub(crate) fn number(value: &Value) -> Option<Number> {
    let Value::Number(n) = value else { return None };
    Some(match n.as_i64() {
        Some(i) => Number::Int(i),
        None => Number::Float(n.as_f64()?),
    })
}

/// inja's (nlohmann's) order: by kind (null, booleans, numbers, objects, arrays, strings), then by value, numbers
/// by their exact values whether whole or not, arrays and objects item by item. A total order, as `sort` needs;
/// `1 == 1.0`.
pub(crate) fn compare(left: &Value, right: &Value) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::Object(_) => 3,
        Value::Array(_) => 4,
        Value::String(_) => 5,
    };
    match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Number(_), Value::Number(_)) => match (number(left), number(right)) {
            (Some(a), Some(b)) => compare_numbers(a, b),
            _ => Ordering::Equal,
        },
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Array(a), Value::Array(b)) => {
            a.iter().zip(b).map(|(x, y)| compare(x, y)).find(|o| o.is_ne()).unwrap_or_else(|| a.len().cmp(&b.len()))
        }
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .zip(b)
            .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| compare(va, vb)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.len().cmp(&b.len())),
        _ => rank(left).cmp(&rank(right)),
    }
}

fn compare_numbers(a: Number, b: Number) -> Ordering {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x.cmp(&y),
        (Number::Float(x), Number::Float(y)) => x.total_cmp(&y),
        (Number::Int(x), Number::Float(y)) => compare_int_float(x, y),
        (Number::Float(x), Number::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

/// An integer against a float, exactly (converting either way can round).
fn compare_int_float(int: i64, float: f64) -> Ordering {
    // ±2^63 are exact floats; between them a float's whole part converts to i64 exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if float >= LIMIT {
        return Ordering::Less;
    }
    if float < -LIMIT {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    int.cmp(&(whole as i64)).then_with(|| 0.0_f64.total_cmp(&(float - whole)))
}

/// `needle in haystack` as inja has it: an element of an array, a value of an object, or the value itself.
fn contains(haystack: &Value, needle: &Value) -> bool {
    match haystack {
        Value::Array(items) => items.iter().any(|item| compare(item, needle).is_eq()),
        Value::Object(map) => map.values().any(|item| compare(item, needle).is_eq()),
        Value::Null => false,
        other => compare(other, needle).is_eq(),
    }
}

/// nlohmann's name of a value's type, for its error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A number as inja reads it, or nlohmann's type error.
fn operand(value: &Value) -> Result<Number> {
    number(value).ok_or_else(|| invalid(format!("type must be number, but is {}", type_name(value))))
}

/// A number as an integer, as inja's `get<int64>` has it: a float's whole part, when it has one in range.
pub(crate) fn truncated(n: Number) -> Result<i64> {
    match n {
        Number::Int(i) => Ok(i),
        // ±2^63 are exact floats; strictly between them the whole part fits.
        Number::Float(f) if f.is_finite() && f.trunc().abs() < 9_223_372_036_854_775_808.0 => Ok(f.trunc() as i64),
        Number::Float(f) => Err(invalid(format!("{f} is out of the integer range"))),
    }
}

/// A float result, which JSON (and so inja's values) cannot hold unless finite.
pub(crate) fn finite(f: f64) -> Result<Value> {
    if f.is_finite() {
        Ok(Value::from(f))
    } else {
        Err(invalid("the result is not a finite number"))
    }
}

/// inja's arithmetic, checked: integers stay integers (an overflow is an error, not a wrapped or rounded value),
/// `/` divides as floats, `%` and the exponent of `^` take whole parts, and no result is infinite or NaN.
fn arithmetic(op: BinaryOp, left: &Value, right: &Value) -> Result<Value> {
    if let (BinaryOp::Add, Value::String(a), Value::String(b)) = (op, left, right) {
        return Ok(Value::String(format!("{a}{b}")));
    }
    let (a, b) = (operand(left)?, operand(right)?);
    let overflow = |symbol: &str| invalid(format!("integer overflow in {symbol}"));
    match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
            if let (Number::Int(x), Number::Int(y)) = (a, b) {
                let (result, symbol) = match op {
                    BinaryOp::Add => (x.checked_add(y), "+"),
                    BinaryOp::Sub => (x.checked_sub(y), "-"),
                    _ => (x.checked_mul(y), "*"),
                };
                return result.map(Value::from).ok_or_else(|| overflow(symbol));
            }
            let (x, y) = (a.float(), b.float());
            finite(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                _ => x * y,
            })
        }
        BinaryOp::Div => {
            if b.float() == 0.0 {
                return Err(invalid("division by zero"));
            }
            finite(a.float() / b.float())
        }
        BinaryOp::Rem => {
            let (x, y) = (truncated(a)?, truncated(b)?);
            if y == 0 {
                return Err(invalid("modulo by zero"));
            }
            // i64::MIN % -1 overflows; its remainder is 0.
            Ok(Value::from(x.checked_rem(y).unwrap_or(0)))
        }
        _ => {
            let exponent = truncated(b)?;
            match a {
                Number::Int(x) if exponent >= 0 => u32::try_from(exponent)
                    .ok()
                    .and_then(|e| x.checked_pow(e))
                    .map(Value::from)
                    .ok_or_else(|| overflow("^")),
                _ => {
                    let exponent = i32::try_from(exponent).map_err(|_| overflow("^"))?;
                    finite(a.float().powi(exponent))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::{self, substring, word_count};
    use serde_json::json;

    fn data() -> RenderData {
        let headers = vec![
            (":path".to_string(), "/users/42?x=1".to_string()),
            ("x-a".to_string(), "one".to_string()),
            ("x-a".to_string(), "two".to_string()),
        ];
        RenderData {
            request_headers: Some(Rc::new(vec![("x-req".to_string(), "r".to_string())])),
            headers,
            body: "{\"name\": \"Ann\"}".to_string(),
            extractions: [("id".to_string(), "42".to_string())].into_iter().collect(),
            context: json!({"name": "Ann", "items": [3, 1, 2], "obj": {"k": "v"}, "n": 2.5}),
            env: Rc::new([("HOME_TEST".to_string(), "/home".to_string())].into_iter().collect()),
            data_sources: Rc::new([("greeting".to_string(), "hello".to_string())].into_iter().collect()),
            randoms: RefCell::default(),
            metadata: Metadata::default(),
        }
    }

    fn render_with(source: &str, escape: bool, pointer: bool) -> Result<String, String> {
        let mut templates = Templates::new(escape);
        templates.add("t", source, pointer)?;
        templates.render("t", &data())
    }

    fn render(source: &str) -> String {
        render_with(source, false, false).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    #[test]
    fn gloo_functions() {
        assert_eq!(render("{{ header(\"X-A\") }}|{{ header(\"nope\") }}|{{ request_header(\"x-req\") }}"), "one||r");
        assert_eq!(render("{{ extraction(\"id\") }}|{{ extraction(\"none\") }}"), "42|");
        assert_eq!(render("{{ body() }}"), "{\"name\": \"Ann\"}");
        assert_eq!(render("{{ context().name }}"), "Ann");
        assert_eq!(render("{{ env(\"HOME_TEST\") }}|{{ env(\"NOPE\") }}"), "/home|");
        assert_eq!(render("{{ data_source(\"greeting\") }}"), "hello");
        // Gloo renders a data source that is not configured as "".
        assert_eq!(render("[{{ data_source(\"x\") }}]"), "[]");
        // Gloo's functions read strings; anything else is an error, as nlohmann's `get_ref` throws.
        for call in ["header(1)", "extraction(null)", "env(true)", "trim([])", "raw_string(2)", "base64_encode(1)"] {
            let err = render_with(&format!("{{{{ {call} }}}}"), false, false).unwrap_err();
            assert!(err.contains("incompatible ReferenceType for get_ref, actual type is"), "{call}: {err}");
        }
        // `body` and `context` need no parentheses when the data has no such field, as in inja.
        assert_eq!(render("{{ body }}|{{ length(context) }}"), "{\"name\": \"Ann\"}|4");
        // Only the whole name: `context.name` is a path into the data, which has no `context`.
        assert!(render_with("{{ context.name }}", false, false)
            .unwrap_err()
            .contains("variable 'context.name' not found"));
        assert_eq!(render("[{{ trim(\"  a b \") }}]"), "[a b]");
        assert_eq!(render("{{ base64_encode(\"hi?>\") }}|{{ base64_decode(\"aGk/Pg==\") }}"), "aGk/Pg==|hi?>");
        assert_eq!(render("{{ base64url_encode(\"hi?>\") }}|{{ base64url_decode(\"aGk_Pg\") }}"), "aGk_Pg|hi?>");
        assert_eq!(render("[{{ base64_decode(\"!!\") }}]"), "[]");
        assert_eq!(render("{{ substring(\"hello\", 1, 3) }}|{{ substring(\"hello\", 2) }}"), "ell|llo");
        assert_eq!(render("{{ substring(\"hello\", 3, 10) }}|{{ substring(\"hello\", 9) }}|"), "lo||");
        assert_eq!(render("{{ substring(\"hello\", 1, 0) }}|{{ substring(\"hello\", -1) }}|"), "ello||");
        assert_eq!(render("{{ raw_string(\"a\\\"b\\nc\") }}"), "a\\\"b\\nc");
        assert_eq!(render("{{ word_count(\"  one two  three \") }}|{{ word_count(context()) }}"), "3|11");
    }

    #[test]
    fn replace_with_random_is_random_but_stable_per_pattern() {
        let out = render("{{ replace_with_random(\"a-X-b-X\", \"X\") }}|{{ replace_with_random(\"X\", \"X\") }}");
        let (first, second) = out.split_once('|').unwrap();
        let token = second;
        assert_eq!(token.len(), 22, "{out}");
        assert_eq!(first, format!("a-{token}-b-{token}"));
        let other = render("{{ replace_with_random(\"X\", \"X\") }}");
        assert_ne!(other, token);
    }

    #[test]
    fn inja_builtins() {
        assert_eq!(render("{{ upper(\"ab\") }}{{ lower(\"CD\") }}{{ capitalize(\"eF\") }}"), "ABcdEf");
        assert_eq!(render("{{ default(missing, \"d\") }}|{{ default(name, \"d\") }}"), "d|Ann");
        assert_eq!(render("{{ exists(\"name\") }}{{ exists(\"obj.k\") }}{{ exists(\"nope\") }}"), "truetruefalse");
        assert_eq!(render("{{ existsIn(obj, \"k\") }}{{ existsIn(obj, \"z\") }}"), "truefalse");
        assert_eq!(render("{{ at(items, 1) }}{{ at(obj, \"k\") }}"), "1v");
        assert_eq!(render("{{ length(items) }}{{ length(\"abc\") }}{{ first(items) }}{{ last(items) }}"), "3332");
        assert_eq!(
            render("{{ join(items, \",\") }}|{{ sort(items) }}|{{ max(items) }}{{ min(items) }}"),
            "3,1,2|[1,2,3]|31"
        );
        assert_eq!(
            render("{{ round(n) }}|{{ round(3.14159, 2) }}|{{ int(\"7\") }}|{{ float(\"1.5\") }}"),
            "3|3.14|7|1.5"
        );
        assert_eq!(render("{% for i in range(3) %}{{ i }}{% endfor %}"), "012");
        assert_eq!(
            render("{{ isString(name) }}{{ isNumber(n) }}{{ isInteger(n) }}{{ isFloat(n) }}"),
            "truetruefalsetrue"
        );
        assert_eq!(render("{{ isArray(items) }}{{ isObject(obj) }}{{ isBoolean(true) }}"), "truetruetrue");
        assert_eq!(render("{{ even(2) }}{{ odd(2) }}{{ divisibleBy(9, 3) }}"), "truefalsetrue");
        // i64::MIN % -1 overflows: an answer, not an aborted VM.
        assert_eq!(render("{{ divisibleBy(-9223372036854775807 - 1, -1) }}{{ divisibleBy(7, 0) }}"), "truefalse");
        assert_eq!(render("{{ replace(\"a-b-c\", \"-\", \"+\") }}"), "a+b+c");
    }

    #[test]
    fn gloo_metadata_functions() {
        let gloo = json!({"io.solo.transformation": {
            "s": "text", "n": 5, "f": 1.5, "b": true, "no": false, "nothing": null,
            "obj": {"x": 1, "y": [1.5, "a"]}, "list": [1, 2.5, "a", true, {"z": 1}, 1234567],
            "deep": {"er": {"est": "down"}}, "a:b": "colon"
        }, "other.ns": {"k": "other"}});
        let data = |delimiter| RenderData {
            metadata: Metadata { cluster: gloo.clone(), dynamic: gloo.clone(), host: Value::Null, delimiter },
            ..RenderData::default()
        };
        let render = |source: &str, delimiter| {
            let mut templates = Templates::new(false);
            templates.add("t", source, false).unwrap();
            templates.render("t", &data(delimiter))
        };
        let cases = [
            ("{{ cluster_metadata(\"s\") }}|{{ cluster_metadata(\"n\") }}|{{ cluster_metadata(\"f\") }}", "text|5.0|1.5"),
            ("{{ dynamic_metadata(\"b\") }}|{{ dynamic_metadata(\"no\") }}|{{ dynamic_metadata(\"nothing\") }}|", "true|false||"),
            ("{{ cluster_metadata(\"obj\") }}|{{ cluster_metadata(\"list\") }}", r#"{"x":1,"y":[1.5,"a"]}|[1,2.5,"a",true,{"z":1},1234567]"#),
            ("{{ cluster_metadata(\"deep.er.est\") }}|{{ cluster_metadata(\"deep.er\") }}", r#"down|{"est":"down"}"#),
            ("[{{ cluster_metadata(\"missing\") }}{{ cluster_metadata(\"s.x\") }}{{ host_metadata(\"s\") }}]", "[]"),
            ("{{ cluster_metadata(\"k\", \"other.ns\") }}|{{ cluster_metadata(\"s\", \"io.solo.transformation\", 3) }}", "other|text"),
            // A key that is not a string is "", as in Gloo.
            ("[{{ cluster_metadata(1) }}]", "[]"),
            // The deprecated function: no delimiter, Gloo's namespace only, lists joined as C++ streams print them.
            ("{{ clusterMetadata(\"s\") }}|{{ clusterMetadata(\"n\") }}|{{ clusterMetadata(\"b\") }}", "text|5.0|true"),
            ("{{ clusterMetadata(\"list\") }}|[{{ clusterMetadata(\"obj\") }}]", "1,2.5,a,true,,1.23457e+06|[]"),
            ("[{{ clusterMetadata(\"deep.er.est\") }}]", "[]"),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source, '.').unwrap(), expected, "{source}");
        }
        assert_eq!(
            render("{{ cluster_metadata(\"deep:er:est\") }}|{{ cluster_metadata(\"a:b\") }}", ':').unwrap(),
            "down|"
        );
        // Gloo takes the namespace by reference to a string: anything else is an error; no key is no function.
        assert!(render("{{ cluster_metadata(\"s\", 1) }}", '.').unwrap_err().contains("get_ref"));
        let mut templates = Templates::new(false);
        assert!(templates.add("t", "{{ cluster_metadata() }}", false).unwrap_err().contains("unknown function"));
        assert_eq!(functions::stream_double(0.0001), "0.0001");
        assert_eq!(functions::stream_double(0.00001234), "1.234e-05");
        assert_eq!(functions::stream_double(-123456.0), "-123456");
        assert_eq!(functions::stream_double(100.0), "100");
    }

    #[test]
    fn loops_sets_conditions_and_printing() {
        assert_eq!(
            render("{% for x in items %}{{ loop.index }}:{{ x }}{% if not loop.is_last %},{% endif %}{% endfor %}"),
            "0:3,1:1,2:2"
        );
        assert_eq!(render("{% for k, v in obj %}{{ k }}={{ v }}{% endfor %}"), "k=v");
        assert_eq!(render("{% set x = \"y\" %}{{ x }}"), "y");
        assert_eq!(render("{% if n > 3 %}big{% else if n > 2 %}mid{% else %}small{% endif %}"), "mid");
        assert_eq!(render("{{ obj }}|{{ items }}|{{ true }}|{{ null }}|{{ n }}"), "{\"k\":\"v\"}|[3,1,2]|true||2.5");
        assert_eq!(render("line\n"), "line\n");
        assert_eq!(render("{{ items.0 }}"), "3");
    }

    #[test]
    fn escape_characters_escapes_strings() {
        let out = render_with("{\"v\": \"{{ header(\"x-a\") }}{{ \"q\\\"\" }}\"}", true, false).unwrap();
        assert_eq!(out, "{\"v\": \"oneq\\\"\"}");
    }

    #[test]
    fn pointer_notation() {
        assert_eq!(render_with("{{ obj/k }}", false, true).unwrap(), "v");
    }

    #[test]
    fn errors_name_the_template() {
        let mut templates = Templates::new(false);
        let err = templates.add("headers.x-a", "{{ unclosed", false).unwrap_err();
        assert!(err.contains("headers.x-a"), "{err}");
        assert!(err.contains("syntax error"), "{err}");
        let err = render_with("{{ missing }}", false, false).unwrap_err();
        assert!(err.contains("variable 'missing' not found"), "{err}");
        let err = render_with("{{ missing.x }}", false, false).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        assert!(render_with("{{ nope(1) }}", false, false).is_err());
        // Jinja's filter and test libraries are not compiled in (inja has neither): use the functions.
        assert!(render_with("{{ name | upper }}", false, false).is_err());
        assert!(render_with("{% if name is defined %}1{% endif %}", false, false).is_err());
        assert!(render_with("{{ upper(1, 2) }}", false, false)
            .unwrap_err()
            .contains("unknown function upper with 2 arguments"));
    }

    #[test]
    fn undeclared_variables_include_functions_and_names() {
        let mut templates = Templates::new(false);
        templates.add("t", "{{ header(\"a\") }}{{ name }}{% set x = 1 %}{{ x }}", false).unwrap();
        let names = templates.undeclared_variables("t");
        assert!(names.contains("header") && names.contains("name") && !names.contains("x"), "{names:?}");
    }

    #[test]
    fn templates_without_tags_are_their_text() {
        for source in ["application/json", "", "a } b\n", "100%"] {
            let mut templates = Templates::new(true);
            templates.add("t", source, false).unwrap();
            assert_eq!(templates.render("t", &RenderData::default()).unwrap(), source);
            assert!(templates.undeclared_variables("t").is_empty());
        }
        // A brace or a line statement still goes to the engine.
        assert_eq!(render("{{ name }}"), "Ann");
        assert_eq!(render("## if true\nyes\n## endif\n"), "yes\n");
    }

    #[test]
    fn json_paths_and_loops() {
        let json = json!({"a": {"b": [1, {"c": "x"}, null]}, "list": [{"k": 2}, {"k": 1}], "s": "t", "e": {}, "z": []});
        let cases = [
            (
                "{{ a }}|{{ a.b }}|{{ a.b.1.c }}|{{ a.b[-1] }}|{{ list.0.k }}|{{ s }}|{{ e }}|{{ z }}",
                r#"{"b":[1,{"c":"x"},null]}|[1,{"c":"x"},null]|x||2|t|{}|[]"#,
            ),
            (
                "{% for x in a.b %}{{ loop.index }}{{ x }};{% endfor %}{% for k in a %}{{ k }}{% endfor %}",
                r#"01;1{"c":"x"};2;b"#,
            ),
            ("{% for k, v in list.1 %}{{ k }}={{ v }}{% endfor %}|{{ length(list) }}|{{ length(a) }}", "k=1|2|1"),
            (
                "{{ exists(\"a.b\") }}{{ exists(\"a.q\") }}|{{ at(a.b, 1) }}|{{ isObject(a) }}{{ isArray(a.b) }}",
                r#"truefalse|{"c":"x"}|truetrue"#,
            ),
            (
                "{% if e %}full{% else %}empty{% endif %}{% if a %}!{% endif %}|{{ a.b.1.c == \"x\" }}{{ list.0.k > 1 }}",
                "empty!|truetrue",
            ),
            ("{{ context().a.b.1.c }}|{{ context()[\"s\"] }}|{{ a[\"b\"][0] }}", "x|t|1"),
        ];
        for (source, expected) in cases {
            let mut templates = Templates::new(false);
            templates.add("t", source, false).unwrap();
            let data = RenderData { context: json.clone(), ..RenderData::default() };
            assert_eq!(templates.render("t", &data).unwrap(), expected, "{source}");
        }
    }

    #[test]
    fn operators_follow_inja() {
        assert_eq!(
            render("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 % 3 }}|{{ 2 ^ 3 }}|{{ 7 / 2 }}|{{ 1.5 + 1 }}"),
            "7|9|1|8|3.5|2.5"
        );
        assert_eq!(
            render("{{ -n }}|{{ 10 - 2 - 3 }}|{{ \"a\" + name }}|{{ n * 2 == 5 }}|{{ 1 == 1.0 }}"),
            "-2.5|5|aAnn|true|true"
        );
        assert_eq!(render("{{ not true or true }}|{{ not (true or true) }}|{{ 1 < 2 and 2 <= 2 }}"), "true|false|true");
        // inja's precedence: `and` and `or` are one level, left to right; `not` binds tighter than comparisons.
        assert_eq!(
            render("{{ true or true and false }}|{{ not 1 == 2 }}|{{ -2 ^ 2 }}|{{ 2 ^ 3 ^ 2 }}"),
            "false|false|4|512"
        );
        assert_eq!(
            render("{{ 3 in items }}|{{ 4 in items }}|{{ \"v\" in obj }}|{{ \"k\" in obj }}|{{ \"Ann\" in name }}"),
            "true|false|true|false|true"
        );
        assert_eq!(render("{{ [1, \"a\", null] }}|{{ {\"k\": [n]} }}"), r#"[1,"a",null]|{"k":[2.5]}"#);
        assert!(render_with("{{ 1 / 0 }}", false, false).unwrap_err().contains("division by zero"));
        assert!(render_with("{{ name - 1 }}", false, false)
            .unwrap_err()
            .contains("type must be number, but is string"));
        // Values of different kinds compare by kind, as in inja: null, booleans, numbers, objects, arrays, strings.
        assert_eq!(
            render("{{ name < 1 }}|{{ null < 0 }}|{{ obj < items }}|{{ 2 < 2.5 }}|{{ [1, 2] == [1, 2.0] }}"),
            "false|true|true|true|true"
        );
        // Whole numbers and floats mixed beyond 2^53 still sort consistently (an inconsistent order can panic).
        let mixed = ["9007199254740993, 9007199254740992.0, 9007199254740992, 1.5, 2, \"a\", null"; 6].join(", ");
        let sorted = render(&format!("{{{{ sort([{mixed}]) }}}}"));
        assert!(sorted.starts_with("[null,null,null,null,null,null,1.5,1.5,"), "{sorted}");
        assert!(sorted.ends_with("9007199254740993,\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]"), "{sorted}");
    }

    #[test]
    fn statements_comments_and_whitespace_control() {
        // inja's whitespace control: `{{-` drops the spaces and tabs ending a line that has nothing else, `-}}` the
        // spaces and tabs after it and one newline.
        assert_eq!(render("a {#- gone -#} b|{{- \" x \" -}} |{% if true -%}  y  {%- endif %}"), "a b| x |y  ");
        assert_eq!(render("line\n    {%- if true -%}\n  yes\n{%- endif %}\nend"), "line\nyes\n\nend");
        assert_eq!(
            render("{% if(true) %}x{% else if(false) %}y{% endif %}|{% for x\tin\titems %}{{ x }}{% endfor %}"),
            "x|312"
        );
        // `set` is global, as in inja.
        assert_eq!(
            render("{% for x in items %}{% if loop.is_first %}{% set f = x %}{% endif %}{{ f }}{% endfor %}"),
            "333"
        );
        assert_eq!(
            render(
                "{% for x in items %}{% for y in range(2) %}{{ loop.index }}{% endfor %}{{ loop.index1 }};{% endfor %}"
            ),
            "011;012;013;"
        );
        assert_eq!(
            render("{% set total = 0 %}{% for x in items %}{% set total = total + x %}{% endfor %}{{ total }}"),
            "6"
        );
        assert_eq!(render("{% if false %}1{% else if false %}2{% else if true %}3{% else %}4{% endif %}"), "3");
        assert_eq!(render("{% raw %}{{ not parsed }}{% if %}{%- endraw %}|{{ name }}"), "{{ not parsed }}{% if %}|Ann");
        assert_eq!(render("{{ default(missing.deep.path, \"d\") }}|{{ default(obj.k, 1) }}"), "d|v");
        assert!(render_with("{{ loop.index1 }}", false, false)
            .unwrap_err()
            .contains("variable 'loop.index1' not found"));
        let deep_expression = format!("{{{{ {}1{} }}}}", "(".repeat(100), ")".repeat(100));
        let deep_blocks = format!("{}x{}", "{% if true %}".repeat(100), "{% endif %}".repeat(100));
        assert!(render_with(&deep_expression, false, false).unwrap_err().contains("nested too deeply"));
        assert!(render_with(&deep_blocks, false, false).unwrap_err().contains("nested too deeply"));
        assert!(render_with(&format!("{{{{ {}1 }}}}", "not ".repeat(100)), false, false).is_err());
        let long_chain = format!("{{{{ {}1 }}}}", "1 + ".repeat(100));
        let long_postfix = format!("{{{{ items{} }}}}", "[0]".repeat(100));
        assert!(render_with(&long_chain, false, false).unwrap_err().contains("nested too deeply"));
        assert!(render_with(&long_postfix, false, false).unwrap_err().contains("nested too deeply"));
        // Work and value depth are bounded, whatever the template does.
        let over_budget = "units of work";
        let quadratic = "{% for a in range(5000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}";
        assert!(render_with(quadratic, false, false).unwrap_err().contains(over_budget));
        let doubling = "{% set s = \"ab\" %}{% for i in range(40) %}{% set s = s + s %}{% endfor %}{{ length(s) }}";
        assert!(render_with(doubling, false, false).unwrap_err().contains(over_budget));
        let copies = "{% set a = [1] %}{% for i in range(40) %}{% set a = [a, a] %}{% endfor %}";
        assert!(render_with(copies, false, false).unwrap_err().contains(over_budget));
        let grow = "{% set s = \"0123456789\" %}{% for i in range(5) %}{% set s = s + s %}{% endfor %}";
        let output = format!("{grow}{{% for i in range(100000) %}}{{{{ s }}}}{{{{ s }}}}{{% endfor %}}");
        let err = render_with(&output, false, false).unwrap_err();
        assert!(err.contains(over_budget), "{err}");
        let text = format!("{{% for i in range(100000) %}}{}{{% endfor %}}", "x".repeat(1000));
        assert!(render_with(&text, false, false).unwrap_err().contains(over_budget));
        let deep = "{% set a = 1 %}{% for i in range(200) %}{% set a = [a] %}{% endfor %}";
        assert!(render_with(deep, false, false).unwrap_err().contains("nested deeper than 128"));
        let replaced = "{{ replace(\"xxxxxxxxxxxxxxxx\", \"x\", body()) }}";
        assert_eq!(render_with(replaced, false, false).unwrap().len(), 16 * 15);
        assert!(render_with("{{ replace(\"x\", \"\", body()) }}", false, false).is_ok());
        // Syntax errors in inja's words, with the line and column.
        for (bad, message) in [
            ("{% if true %}x", "(at 1:15) unmatched if"),
            ("{% for x in items %}x{% endif %}", "(at 1:25) endif without matching if"),
            ("{% endfor %}", "(at 1:4) endfor without matching for"),
            ("{% set 1 = 2 %}", "(at 1:8) expected variable name, got '1'"),
            ("{% while %}", "(at 1:4) expected statement, got 'while'"),
            ("a\n {{ \"\\u41\" }}", "(at 2:5) invalid or unterminated string"),
            ("{{ nope(1) }}", "(at 1:10) unknown function nope"),
        ] {
            let err = render_with(bad, false, false).unwrap_err();
            let expected = format!("syntax error: [inja.exception.parser_error] {message} (in t)");
            assert_eq!(err, expected, "{bad}");
        }
        let err = render_with("{% if true %}\n  {{ 1 + x }}{% endif %}", false, false).unwrap_err();
        assert_eq!(err, "[inja.exception.render_error] (at 2:10) variable 'x' not found (in t)");
    }

    #[test]
    fn inja_names_strings_and_line_statements() {
        let context =
            json!({"my-extractor": "v", "a": {"my-key": ["z"]}, "x": {"y": 3}, "time": {"start": 5}, "a.b": 1});
        let cases = [
            ("{{ my-extractor }}|{{ a.my-key.0 }}|{{ x.y- 1 }}|{{ x.y -1 }}", false, "v|z|2|2"),
            ("{{ \"}}\" }}|{{ 'a-b' }}|{{ \"q\\\"\\u00e9\" }}", false, "}}|a-b|q\"\u{e9}"),
            ("{{ \"\\d\\ud83d\\ude00\\ud800\" }}|{{ length(\"\u{e9}\") }}", false, "\\d\u{1f600}\u{fffd}|2"),
            ("{{ time/start }}|{{ a.b }}", true, "5|1"),
            (
                "start\n## for x in a.my-key\n{{ x }},\n## endfor\nend ## not a statement\n  ## nor this\n",
                false,
                "start\nz,\nend ## not a statement\n  ## nor this\n",
            ),
        ];
        for (source, pointer, expected) in cases {
            let mut templates = Templates::new(false);
            templates.add("t", source, pointer).unwrap();
            let data = RenderData { context: context.clone(), ..RenderData::default() };
            assert_eq!(templates.render("t", &data).unwrap(), expected, "{source}");
        }
        // Without spaces `x.y-1` is one name, which the context does not have.
        let mut templates = Templates::new(false);
        templates.add("t", "{{ x.y-1 }}", false).unwrap();
        let data = RenderData { context: context.clone(), ..RenderData::default() };
        assert!(templates.render("t", &data).unwrap_err().contains("variable 'x.y-1' not found"));
        let mut templates = Templates::new(false);
        templates.add("t", "{{ my-extractor }}{{ a.b }}{% for i in x %}{{ i }}{% endfor %}", false).unwrap();
        let names = templates.undeclared_variables("t");
        assert_eq!(names, ["my-extractor", "a", "x"].into_iter().map(String::from).collect(), "{names:?}");
    }

    #[test]
    fn pure_helpers() {
        assert_eq!(word_count(&json!("")), 0);
        // Gloo's counting: C's whitespace only, and a string of spaces is one word.
        assert_eq!(word_count(&json!("   ")), 1);
        assert_eq!(word_count(&json!("a\u{a0}b \u{b}c")), 2);
        assert_eq!(substring("hello", 5, None), "");
        assert_eq!(substring("hello", i64::MAX, Some(i64::MAX)), "");
        assert_eq!(substring("hello", 1, Some(i64::MAX)), "ello");
        assert_eq!(word_count(&json!({"a b": ["c", 1, true, null]})), 5);
        assert_eq!(substring("héllo", 1, Some(2)), "é");
        assert_eq!(json_escape("a\"\\\u{1}"), "a\\\"\\\\\\u0001");
        let floats =
            [(1000.0, "1000.0"), (0.001, "0.001"), (25.68, "25.68"), (1e16, "1e+16"), (1e-5, "1e-05"), (-0.0, "-0.0")];
        for (f, text) in floats {
            assert_eq!(float_text(f), text);
        }
        assert_eq!(float_text(123456789012345.0), "123456789012345.0");
        assert_eq!(float_text(-1.5e-300), "-1.5e-300");
        assert_eq!(float_text(0.1 + 0.2), "0.30000000000000004");
    }
}
