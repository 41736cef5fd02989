//! Templates: Gloo's inja templates, translated (`inja.rs`) and run by minijinja, with Gloo's functions.
//!
//! Templates are parsed once, when the configuration is applied. Rendering reads the message being transformed
//! through a per-thread [`RenderData`] that [`Templates::render`] callers install with [`RenderScope`] (Gloo does
//! the same with thread-local storage): the functions (`header`, `body`, `extraction`, ...) look there.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine as _;
use minijinja::value::{Enumerator, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

use crate::inja;

/// What the functions of one render see.
#[derive(Debug, Default)]
pub struct RenderData {
    /// The headers of the message being transformed, as they are at this point of the transformation.
    pub headers: Vec<(String, String)>,
    /// The request's headers when transforming a response (`None` on requests: `request_header` reads `headers`).
    pub request_headers: Option<Rc<Vec<(String, String)>>>,
    pub body: String,
    pub extractions: HashMap<String, String>,
    /// The JSON context: the parsed body (with extractions merged, unless `advanced_templates`).
    pub context: Value,
    pub env: Rc<HashMap<String, String>>,
    pub data_sources: Rc<BTreeMap<String, String>>,
    /// `replace_with_random`: one random value per pattern and render data.
    pub randoms: RefCell<HashMap<String, String>>,
}

thread_local! {
    static CURRENT: RefCell<Option<RenderData>> = const { RefCell::new(None) };
}

/// Installs render data for the current thread; removes it when dropped.
pub struct RenderScope;

impl RenderScope {
    pub fn new(data: RenderData) -> Self {
        CURRENT.with(|current| {
            if let Ok(mut slot) = current.try_borrow_mut() {
                *slot = Some(data);
            }
        });
        RenderScope
    }

    /// Changes the installed data between renders (e.g. the headers after each header template).
    pub fn update(&self, f: impl FnOnce(&mut RenderData)) {
        CURRENT.with(|current| {
            if let Ok(mut slot) = current.try_borrow_mut() {
                if let Some(data) = slot.as_mut() {
                    f(data);
                }
            }
        });
    }
}

impl Drop for RenderScope {
    fn drop(&mut self) {
        CURRENT.with(|current| {
            if let Ok(mut slot) = current.try_borrow_mut() {
                *slot = None;
            }
        });
    }
}

fn with_data<R>(f: impl FnOnce(&RenderData) -> R) -> Option<R> {
    CURRENT.with(|current| current.try_borrow().ok().and_then(|slot| slot.as_ref().map(f)))
}

/// The templates of one transformation, in one minijinja environment.
pub struct Templates {
    env: Environment<'static>,
    /// Templates without tags (`"text": "application/json"`): their text is their output, without the engine.
    literals: HashMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// `escape_characters`: rendered strings are JSON-escaped (Gloo's `escape_characters`).
    pub fn new(escape_characters: bool) -> Self {
        let mut env = Environment::empty();
        // inja: a missing variable is an error, and a template's last newline is kept.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_formatter(move |out, _state, value| {
            let text = format_value(value, escape_characters)?;
            out.write_str(&text).map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
        });
        register_functions(&mut env);
        Templates { env, literals: HashMap::new() }
    }

    /// Parses a template under `name` (what errors call it). The error is the parser's message.
    pub fn add(&mut self, name: &str, source: &str, pointer_notation: bool) -> Result<(), String> {
        // No `{{ }}`, `{% %}`, `{# #}` and no `##` line statement: nothing for the engine to do.
        if !source.contains('{') && !source.contains("##") {
            self.literals.insert(name.to_string(), source.to_string());
            return Ok(());
        }
        let translated = inja::translate(source, pointer_notation);
        self.env.add_template_owned(name.to_string(), translated).map_err(|e| describe(&e))
    }

    /// Renders the template `name` with `context` (a map; anything else renders with an empty context, as in Gloo).
    pub fn render(&self, name: &str, context: &Value) -> Result<String, String> {
        if let Some(text) = self.literals.get(name) {
            return Ok(text.clone());
        }
        let template = self.env.get_template(name).map_err(|e| describe(&e))?;
        let empty = Value::from(BTreeMap::<String, Value>::new());
        let context = if context.kind() == ValueKind::Map { context } else { &empty };
        template.render(context).map_err(|e| describe(&e))
    }

    /// Names a template reads that it does not define itself (functions included).
    pub fn undeclared_variables(&self, name: &str) -> HashSet<String> {
        self.env.get_template(name).map(|t| t.undeclared_variables(false)).unwrap_or_default()
    }
}

/// An error with its template name and line, without minijinja's multi-line debug output.
fn describe(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// How a value prints: strings as they are (JSON-escaped with `escape_characters`), everything else as JSON
/// (inja prints objects, arrays, numbers, booleans and null that way).
fn format_value(value: &Value, escape: bool) -> Result<String, Error> {
    match value.kind() {
        ValueKind::Undefined => Err(Error::new(ErrorKind::UndefinedError, "variable not found")),
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            Ok(if escape { json_escape(text) } else { text.to_string() })
        }
        ValueKind::None => Ok("null".to_string()),
        _ => serde_json::to_string(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string())),
    }
}

/// A string's JSON escape without the quotes.
pub fn json_escape(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_string()).to_string();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

/// Converts JSON into a template value.
pub fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or_default())
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.as_str(), to_value(v))).collect(),
    }
}

/// The JSON context as a template value without copying it: objects and arrays are views into the parsed document
/// that convert only what a template reads (a body template usually reads a few fields of a large body, and a full
/// conversion cost about as much as the parse itself).
pub fn json_context(json: Arc<serde_json::Value>) -> Value {
    JsonView { root: json, path: Vec::new() }.into_value()
}

/// One object or array inside a parsed JSON document: the document and the way down to it.
#[derive(Debug)]
struct JsonView {
    root: Arc<serde_json::Value>,
    path: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

impl JsonView {
    fn node(&self) -> &serde_json::Value {
        self.path
            .iter()
            .try_fold(&*self.root, |node, step| match step {
                Step::Key(key) => node.get(key.as_str()),
                Step::Index(index) => node.get(*index),
            })
            .unwrap_or(&serde_json::Value::Null)
    }

    /// Scalars become template values at once; objects and arrays stay views.
    fn into_value(self) -> Value {
        match self.node() {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => Value::from_object(self),
            scalar => to_value(scalar),
        }
    }

    fn child(&self, step: Step) -> Value {
        let mut path = self.path.clone();
        path.push(step);
        JsonView { root: Arc::clone(&self.root), path }.into_value()
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            serde_json::Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.node() {
            serde_json::Value::Object(map) => {
                let key = key.as_str()?;
                map.contains_key(key).then(|| self.child(Step::Key(key.to_string())))
            }
            serde_json::Value::Array(items) => {
                let index = key.as_usize().filter(|i| *i < items.len())?;
                Some(self.child(Step::Index(index)))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            serde_json::Value::Object(map) => Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect()),
            serde_json::Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }
}

/// Converts a template value into JSON (undefined reads as null).
pub fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn first_header(headers: &[(String, String)], name: &str) -> String {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

fn string_arg(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Undefined => Err(Error::new(ErrorKind::UndefinedError, "variable not found")),
        _ => format_value(value, false),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value.kind() {
        ValueKind::Number => to_json(value).as_f64(),
        _ => None,
    }
}

fn is_integer(value: &Value) -> bool {
    value.kind() == ValueKind::Number && {
        let json = to_json(value);
        json.is_i64() || json.is_u64()
    }
}

/// Gloo's `word_count`: words of strings, keys and values of objects, elements of arrays; numbers and booleans
/// count one.
pub fn word_count(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::String(s) => s.split_whitespace().count() as u64,
        serde_json::Value::Array(items) => items.iter().map(word_count).sum(),
        serde_json::Value::Object(map) => {
            map.iter().map(|(k, v)| k.split_whitespace().count() as u64 + word_count(v)).sum()
        }
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => 1,
        serde_json::Value::Null => 0,
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

fn lookup_path(state: &State, path: &str) -> Value {
    let mut parts = path.split(['.', '/']).filter(|p| !p.is_empty());
    let Some(first) = parts.next() else { return Value::UNDEFINED };
    let mut current = match state.lookup(first) {
        Some(v) => v,
        None => with_data(|d| d.context.get_attr(first).unwrap_or(Value::UNDEFINED)).unwrap_or(Value::UNDEFINED),
    };
    for part in parts {
        current = match part.parse::<usize>() {
            Ok(index) if current.kind() == ValueKind::Seq => {
                current.get_item_by_index(index).unwrap_or(Value::UNDEFINED)
            }
            _ => current.get_attr(part).unwrap_or(Value::UNDEFINED),
        };
        if current.is_undefined() {
            break;
        }
    }
    current
}

/// Every function has this one shape: minijinja instantiates its argument glue once, not once per signature
/// (which kept the .wasm hundreds of KiB larger).
type Function = fn(&State, &[Value]) -> Result<Value, Error>;

fn register(env: &mut Environment<'static>, name: &'static str, (min, max): (usize, usize), f: Function) {
    env.add_function(name, move |state: &State, args: Rest<Value>| {
        if args.len() < min || args.len() > max {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("{name}: wrong number of arguments")));
        }
        f(state, &args)
    });
}

fn arg(args: &[Value], index: usize) -> Value {
    args.get(index).cloned().unwrap_or(Value::UNDEFINED)
}

fn str_at(args: &[Value], index: usize) -> Result<String, Error> {
    string_arg(&arg(args, index))
}

fn int_at(args: &[Value], index: usize) -> Result<i64, Error> {
    let value = arg(args, index);
    value.as_i64().filter(|_| is_integer(&value)).ok_or_else(|| invalid("expected an integer"))
}

fn text(value: impl Into<String>) -> Result<Value, Error> {
    Ok(Value::from(value.into()))
}

fn register_functions(env: &mut Environment<'static>) {
    // ---- Gloo's functions --------------------------------------------------------------------------------
    register(env, "header", (1, 1), |_, a| {
        let name = str_at(a, 0)?;
        text(with_data(|d| first_header(&d.headers, &name)).unwrap_or_default())
    });
    register(env, "request_header", (1, 1), |_, a| {
        let name = str_at(a, 0)?;
        text(with_data(|d| first_header(d.request_headers.as_deref().unwrap_or(&d.headers), &name)).unwrap_or_default())
    });
    register(env, "extraction", (1, 1), |_, a| {
        let name = str_at(a, 0)?;
        text(with_data(|d| d.extractions.get(&name).cloned()).flatten().unwrap_or_default())
    });
    register(env, "body", (0, 0), |_, _| text(with_data(|d| d.body.clone()).unwrap_or_default()));
    register(env, "context", (0, 0), |_, _| Ok(with_data(|d| d.context.clone()).unwrap_or_default()));
    register(env, "env", (1, 1), |_, a| {
        let name = str_at(a, 0)?;
        text(with_data(|d| d.env.get(&name).cloned()).flatten().unwrap_or_default())
    });
    register(env, "data_source", (1, 1), |_, a| {
        let name = str_at(a, 0)?;
        let value = with_data(|d| d.data_sources.get(&name).cloned()).flatten();
        value.map(Value::from).ok_or_else(|| invalid(format!("no data source {name:?}")))
    });
    register(env, "trim", (1, 1), |_, a| text(str_at(a, 0)?.trim()));
    register(env, "base64_encode", (1, 1), |_, a| {
        text(base64::engine::general_purpose::STANDARD.encode(str_at(a, 0)?))
    });
    register(env, "base64url_encode", (1, 1), |_, a| {
        text(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(str_at(a, 0)?))
    });
    register(env, "base64_decode", (1, 1), |_, a| {
        let decoded = base64::engine::general_purpose::STANDARD.decode(str_at(a, 0)?).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    });
    register(env, "base64url_decode", (1, 1), |_, a| {
        let input = str_at(a, 0)?;
        let decoded =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(input.trim_end_matches('=')).unwrap_or_default();
        text(String::from_utf8_lossy(&decoded))
    });
    register(env, "substring", (2, 3), |_, a| {
        let input = str_at(a, 0)?;
        let Ok(start) = int_at(a, 1) else { return text("") };
        let length = match a.get(2) {
            None => None,
            Some(_) => match int_at(a, 2) {
                Ok(n) => Some(n),
                Err(_) => return text(""),
            },
        };
        text(substring(&input, start, length))
    });
    register(env, "replace_with_random", (2, 2), |_, a| {
        let input = str_at(a, 0)?;
        let pattern = str_at(a, 1)?;
        if pattern.is_empty() {
            return text(input);
        }
        let token = with_data(|d| {
            let mut randoms = d.randoms.borrow_mut();
            randoms.entry(pattern.clone()).or_insert_with(random_token).clone()
        })
        .unwrap_or_else(random_token);
        text(input.replace(&pattern, &token))
    });
    register(env, "raw_string", (1, 1), |_, a| {
        let v = arg(a, 0);
        match v.kind() {
            ValueKind::String => text(json_escape(v.as_str().unwrap_or_default())),
            _ => text(format_value(&v, false)?),
        }
    });
    register(env, "word_count", (1, 1), |_, a| Ok(Value::from(word_count(&to_json(&arg(a, 0))))));

    // ---- inja's built-in functions ---------------------------------------------------------------------------
    register(env, "upper", (1, 1), |_, a| text(str_at(a, 0)?.to_uppercase()));
    register(env, "lower", (1, 1), |_, a| text(str_at(a, 0)?.to_lowercase()));
    register(env, "capitalize", (1, 1), |_, a| {
        let lower = str_at(a, 0)?.to_lowercase();
        let mut chars = lower.chars();
        text(chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default())
    });
    register(env, "replace", (3, 3), |_, a| text(str_at(a, 0)?.replace(&str_at(a, 1)?, &str_at(a, 2)?)));
    register(env, "default", (2, 2), |_, a| {
        let v = arg(a, 0);
        Ok(if v.is_undefined() { arg(a, 1) } else { v })
    });
    register(env, "exists", (1, 1), |state, a| Ok(Value::from(!lookup_path(state, &str_at(a, 0)?).is_undefined())));
    register(env, "existsIn", (2, 2), |_, a| {
        let (object, key) = (arg(a, 0), str_at(a, 1)?);
        Ok(Value::from(object.kind() == ValueKind::Map && object.get_attr(&key).is_ok_and(|v| !v.is_undefined())))
    });
    register(env, "at", (2, 2), |_, a| {
        let (object, key) = (arg(a, 0), arg(a, 1));
        let item = match (object.kind(), key.as_i64()) {
            (ValueKind::Seq, Some(i)) => object.get_item_by_index(usize::try_from(i).map_err(|_| invalid("index"))?)?,
            _ => object.get_item(&key)?,
        };
        if item.is_undefined() {
            Err(invalid(format!("no element {key}")))
        } else {
            Ok(item)
        }
    });
    register(env, "length", (1, 1), |_, a| {
        let v = arg(a, 0);
        let n = match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().chars().count(),
            _ => v.len().ok_or_else(|| invalid("length of a value that has none"))?,
        };
        Ok(Value::from(n))
    });
    register(env, "first", (1, 1), |_, a| {
        arg(a, 0).try_iter()?.next().ok_or_else(|| invalid("first of an empty list"))
    });
    register(env, "last", (1, 1), |_, a| arg(a, 0).try_iter()?.last().ok_or_else(|| invalid("last of an empty list")));
    register(env, "join", (2, 2), |_, a| {
        let items: Result<Vec<String>, Error> = arg(a, 0).try_iter()?.map(|item| string_arg(&item)).collect();
        text(items?.join(&str_at(a, 1)?))
    });
    register(env, "round", (1, 2), |_, a| {
        let n = number(&arg(a, 0)).ok_or_else(|| invalid("round of a non-number"))?;
        let precision = if a.len() > 1 { i32::try_from(int_at(a, 1)?).map_err(|_| invalid("precision"))? } else { 0 };
        let factor = 10f64.powi(precision);
        let rounded = (n * factor).round() / factor;
        Ok(if precision <= 0 { Value::from(rounded as i64) } else { Value::from(rounded) })
    });
    register(env, "int", (1, 1), |_, a| {
        let v = arg(a, 0);
        let n = match v.kind() {
            ValueKind::String => {
                let t = v.as_str().unwrap_or_default().trim();
                t.parse::<i64>()
                    .or_else(|_| t.parse::<f64>().map(|f| f as i64))
                    .map_err(|_| invalid(format!("int of {t:?}")))?
            }
            _ => number(&v).map(|f| f as i64).ok_or_else(|| invalid("int of a non-number"))?,
        };
        Ok(Value::from(n))
    });
    register(env, "float", (1, 1), |_, a| {
        let v = arg(a, 0);
        let n = match v.kind() {
            ValueKind::String => {
                let t = v.as_str().unwrap_or_default().trim();
                t.parse::<f64>().map_err(|_| invalid(format!("float of {t:?}")))?
            }
            _ => number(&v).ok_or_else(|| invalid("float of a non-number"))?,
        };
        Ok(Value::from(n))
    });
    register(env, "range", (1, 1), |_, a| {
        let n = int_at(a, 0)?;
        if n > 100_000 {
            return Err(invalid("range too large"));
        }
        Ok((0..n.max(0)).map(Value::from).collect())
    });
    register(env, "sort", (1, 1), |_, a| {
        let mut items: Vec<Value> = arg(a, 0).try_iter()?.collect();
        items.sort();
        Ok(Value::from(items))
    });
    register(env, "max", (1, 1), |_, a| Ok(arg(a, 0).try_iter()?.max().unwrap_or_default()));
    register(env, "min", (1, 1), |_, a| Ok(arg(a, 0).try_iter()?.min().unwrap_or_default()));
    register(env, "isString", (1, 1), |_, a| Ok(Value::from(arg(a, 0).kind() == ValueKind::String)));
    register(env, "isNumber", (1, 1), |_, a| Ok(Value::from(arg(a, 0).kind() == ValueKind::Number)));
    register(env, "isInteger", (1, 1), |_, a| Ok(Value::from(is_integer(&arg(a, 0)))));
    register(env, "isFloat", (1, 1), |_, a| {
        let v = arg(a, 0);
        Ok(Value::from(v.kind() == ValueKind::Number && !is_integer(&v)))
    });
    register(env, "isBoolean", (1, 1), |_, a| Ok(Value::from(arg(a, 0).kind() == ValueKind::Bool)));
    register(env, "isObject", (1, 1), |_, a| Ok(Value::from(arg(a, 0).kind() == ValueKind::Map)));
    register(env, "isArray", (1, 1), |_, a| Ok(Value::from(arg(a, 0).kind() == ValueKind::Seq)));
    register(env, "even", (1, 1), |_, a| Ok(Value::from(int_at(a, 0)? % 2 == 0)));
    register(env, "odd", (1, 1), |_, a| Ok(Value::from(int_at(a, 0)? % 2 != 0)));
    register(env, "divisibleBy", (2, 2), |_, a| {
        let (v, by) = (int_at(a, 0)?, int_at(a, 1)?);
        Ok(Value::from(by != 0 && v % by == 0))
    });
    // `{% for k, v in object %}` (see inja.rs): key/value pairs of a map, or the items of anything else.
    register(env, "__inja_items", (1, 1), |_, a| {
        let v = arg(a, 0);
        if v.kind() == ValueKind::Map {
            let pairs: Result<Vec<Value>, Error> =
                v.try_iter()?.map(|key| Ok(Value::from(vec![key.clone(), v.get_item(&key)?]))).collect();
            Ok(Value::from(pairs?))
        } else {
            Ok(v)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
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
            context: json_context(Arc::new(json!({"name": "Ann", "items": [3, 1, 2], "obj": {"k": "v"}, "n": 2.5}))),
            env: Rc::new([("HOME_TEST".to_string(), "/home".to_string())].into_iter().collect()),
            data_sources: Rc::new([("greeting".to_string(), "hello".to_string())].into_iter().collect()),
            randoms: RefCell::default(),
        }
    }

    fn render_with(source: &str, escape: bool, pointer: bool) -> Result<String, String> {
        let mut templates = Templates::new(escape);
        templates.add("t", source, pointer)?;
        let scope = RenderScope::new(data());
        let context = with_data(|d| d.context.clone()).unwrap_or_default();
        let result = templates.render("t", &context);
        drop(scope);
        result
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
        assert!(render_with("{{ data_source(\"x\") }}", false, false).is_err());
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
        assert_eq!(render("{{ replace(\"a-b-c\", \"-\", \"+\") }}"), "a+b+c");
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
        assert_eq!(
            render("{{ obj }}|{{ items }}|{{ true }}|{{ null }}|{{ n }}"),
            "{\"k\":\"v\"}|[3,1,2]|true|null|2.5"
        );
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
        assert!(err.contains("undefined"), "{err}");
        let err = render_with("{{ missing.x }}", false, false).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(render_with("{{ nope(1) }}", false, false).is_err());
        // Jinja's filter and test libraries are not compiled in (inja has neither): use the functions.
        assert!(render_with("{{ name | upper }}", false, false).is_err());
        assert!(render_with("{% if name is defined %}1{% endif %}", false, false).is_err());
        assert!(render_with("{{ upper(1, 2) }}", false, false).unwrap_err().contains("wrong number of arguments"));
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
            assert_eq!(templates.render("t", &Value::UNDEFINED).unwrap(), source);
            assert!(templates.undeclared_variables("t").is_empty());
        }
        // A brace or a line statement still goes to the engine.
        assert_eq!(render("{{ name }}"), "Ann");
        assert_eq!(render("## if true\nyes\n## endif\n"), "yes\n");
    }

    #[test]
    fn json_views_render_as_copied_values() {
        let json = json!({"a": {"b": [1, {"c": "x"}, null]}, "list": [{"k": 2}, {"k": 1}], "s": "t", "e": {}, "z": []});
        let sources = [
            "{{ a }}|{{ a.b }}|{{ a.b.1.c }}|{{ a.b[-1] }}|{{ list.0.k }}|{{ s }}|{{ e }}|{{ z }}",
            "{% for x in a.b %}{{ loop.index }}{{ x }};{% endfor %}{% for k in a %}{{ k }}{% endfor %}",
            "{% for k, v in list.1 %}{{ k }}={{ v }}{% endfor %}|{{ length(list) }}|{{ length(a) }}",
            "{{ exists(\"a.b\") }}{{ exists(\"a.q\") }}|{{ at(a.b, 1) }}|{{ isObject(a) }}{{ isArray(a.b) }}",
            "{% if e %}full{% else %}empty{% endif %}{% if a %}!{% endif %}|{{ a.b.1.c == \"x\" }}{{ list.0.k > 1 }}",
        ];
        for source in sources {
            let mut templates = Templates::new(false);
            templates.add("t", source, false).unwrap();
            let viewed = templates.render("t", &json_context(Arc::new(json.clone()))).unwrap();
            assert_eq!(Ok(viewed), templates.render("t", &to_value(&json)), "{source}");
        }
        assert_eq!(to_json(&json_context(Arc::new(json.clone()))), json);
    }

    #[test]
    fn pure_helpers() {
        assert_eq!(word_count(&json!("")), 0);
        assert_eq!(word_count(&json!({"a b": ["c", 1, true, null]})), 5);
        assert_eq!(substring("héllo", 1, Some(2)), "é");
        assert_eq!(json_escape("a\"\\\u{1}"), "a\\\"\\\\\\u0001");
        assert_eq!(
            to_json(&to_value(&json!({"a": [1, 2.5, "x", null, false]}))),
            json!({"a": [1, 2.5, "x", null, false]})
        );
    }
}
