//! Property tests of the template engine: whatever the template (random text, or random templates shaped like
//! inja's grammar with tags, operators, functions and loops), the JSON body, the headers and the extractions, the
//! parser and the renderer return (an output or an error) without panicking, and a render stays within its work
//! bound. Rendering runs on request data, so a panic here would abort the worker's VM in Envoy.

// Test code: a broken strategy should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::rc::Rc;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use transformation::template::{Metadata, RenderData, Templates};

/// Names templates read: fields of the generated bodies, loop and set variables, `loop`, Gloo's callbacks.
const NAMES: &[&str] = &[
    "a",
    "b",
    "items",
    "n",
    "s",
    "x",
    "loop",
    "loop.index",
    "loop.parent.index1",
    "a.b",
    "a.0",
    "items.1",
    "body",
    "context",
    "$d",
    "@e",
    "_f",
    "a/b",
    "nope",
];

/// Every function the engine has, with a plausible argument count (wrong counts are covered by random text).
const FUNCTIONS: &[(&str, usize)] = &[
    ("header", 1),
    ("request_header", 1),
    ("extraction", 1),
    ("body", 0),
    ("context", 0),
    ("env", 1),
    ("data_source", 1),
    ("trim", 1),
    ("base64_encode", 1),
    ("base64url_encode", 1),
    ("base64_decode", 1),
    ("base64url_decode", 1),
    ("substring", 2),
    ("substring", 3),
    ("replace_with_random", 2),
    ("raw_string", 1),
    ("word_count", 1),
    ("cluster_metadata", 1),
    ("cluster_metadata", 2),
    ("dynamic_metadata", 1),
    ("host_metadata", 1),
    ("clusterMetadata", 1),
    ("upper", 1),
    ("lower", 1),
    ("capitalize", 1),
    ("replace", 3),
    ("default", 2),
    ("exists", 1),
    ("existsIn", 2),
    ("at", 2),
    ("length", 1),
    ("first", 1),
    ("last", 1),
    ("join", 2),
    ("round", 1),
    ("round", 2),
    ("int", 1),
    ("float", 1),
    ("range", 1),
    ("sort", 1),
    ("max", 1),
    ("min", 1),
    ("isString", 1),
    ("isNumber", 1),
    ("isInteger", 1),
    ("isFloat", 1),
    ("isBoolean", 1),
    ("isObject", 1),
    ("isArray", 1),
    ("even", 1),
    ("odd", 1),
    ("divisibleBy", 2),
];

const OPERATORS: &[&str] = &["+", "-", "*", "/", "%", "^", "==", "!=", "<", "<=", ">", ">=", "and", "or", "in"];

/// Numbers at the edges: the integer limits, -1 and 0 (division, modulo, negation), huge and tiny floats.
fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!(5e-324)),
        Just(json!(0.5)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
    ]
}

/// Short strings, with the characters templates and JSON treat specially.
fn short_text() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        'a', 'b', ' ', '\n', '"', '\\', '{', '}', '%', '#', '-', '.', '/', '~', 'é', '0', '9',
    ]);
    prop::collection::vec(chars, 0..8).prop_map(|c| c.into_iter().collect())
}

/// JSON values like request bodies, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_number(),
        short_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(vec!["a", "b", "items", "n", "s", "x", "0", ""]), inner), 0..6)
                .prop_map(|pairs| Value::Object(
                    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>()
                )),
        ]
    })
}

/// A JSON body: an object with the fields templates name, or any value.
fn body() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        (json_value(), json_value(), json_value(), edge_number(), short_text()).prop_map(|(a, items, x, n, s)| {
            json!({"a": a, "items": items, "x": x, "n": n, "s": s, "b": {"c": [1, 2]}})
        }),
    ]
}

/// An expression from inja's grammar, as text.
fn expression() -> impl Strategy<Value = String> {
    let literal = prop_oneof![
        edge_number().prop_map(|v| v.to_string()),
        short_text().prop_map(|s| Value::from(s).to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("[1, \"a\", null]".to_string()),
        Just("{\"k\": 2}".to_string()),
        prop::sample::select(NAMES).prop_map(str::to_string),
    ];
    literal.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (inner.clone(), prop::sample::select(OPERATORS), inner.clone())
                .prop_map(|(l, op, r)| format!("{l} {op} {r}")),
            inner.clone().prop_map(|e| format!("not {e}")),
            inner.clone().prop_map(|e| format!("-{e}")),
            inner.clone().prop_map(|e| format!("({e})")),
            (inner.clone(), inner.clone()).prop_map(|(e, i)| format!("{e}[{i}]")),
            inner.clone().prop_map(|e| format!("({e}).a")),
            (prop::sample::select(FUNCTIONS), prop::collection::vec(inner, 3)).prop_map(|((name, count), args)| {
                format!("{name}({})", args.get(..count).unwrap_or_default().join(", "))
            }),
        ]
    })
}

/// A template from inja's grammar: text, prints, conditions, loops, sets, comments, whitespace control.
fn template() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        short_text(),
        expression().prop_map(|e| format!("{{{{ {e} }}}}")),
        expression().prop_map(|e| format!("{{{{- {e} -}}}}")),
        (prop::sample::select(vec!["x", "a.b", "loop", "n"]), expression())
            .prop_map(|(n, e)| format!("{{% set {n} = {e} %}}")),
        Just("{# note -#}\n".to_string()),
        Just("{% raw %}{{ x }}{% endraw %}".to_string()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|parts| parts.concat()),
            (expression(), inner.clone(), inner.clone())
                .prop_map(|(c, t, e)| format!("{{% if {c} %}}{t}{{% else if {c} %}}{e}{{%- else -%}}{t}{{% endif %}}")),
            (expression(), inner.clone()).prop_map(|(e, body)| format!("{{% for x in {e} %}}{body}{{% endfor %}}")),
            (expression(), inner.clone()).prop_map(|(e, body)| format!("{{% for k, v in {e} %}}{body}{{% endfor %}}")),
            (expression(), inner).prop_map(|(e, body)| format!("## for x in {e}\n{body}\n## endfor\n")),
        ]
    })
}

/// Random text made mostly of template syntax, so that it reaches deep into the parser.
fn template_soup() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "#}",
        "-",
        "+",
        "##",
        "\n",
        " ",
        "if",
        "else",
        "endif",
        "for",
        "in",
        "endfor",
        "set",
        "=",
        "raw",
        "endraw",
        "x",
        "a.b",
        "loop",
        "(",
        ")",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "\\",
        "1",
        "-1",
        "1e999",
        "9223372036854775808",
        "~",
        "/",
        "$",
        "@",
        "upper",
        "range",
        "not",
        "and",
        "*",
        "^",
        "%",
        ".",
        "{",
        "}",
        ":",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
}

fn render_data(context: Value, headers: Vec<(String, String)>, body: String) -> RenderData {
    let extractions: HashMap<String, String> = headers.iter().cloned().collect();
    RenderData {
        metadata: Metadata {
            cluster: json!({"io.solo.transformation": context.clone()}),
            dynamic: context.clone(),
            host: Value::Null,
            delimiter: '.',
        },
        request_headers: Some(Rc::new(headers.clone())),
        headers,
        body,
        extractions,
        context,
        ..RenderData::default()
    }
}

/// Parses and renders, in both notations and escapings; whatever happens must be an answer, within the bound.
fn check(source: &str, data: &RenderData) {
    for (escape, pointer) in [(false, false), (true, true)] {
        let mut templates = Templates::new(escape);
        if templates.add("t", source, pointer).is_err() {
            continue;
        }
        if let Ok(out) = templates.render("t", data) {
            // The work bound (64 Mi units, a byte written is one) bounds the output.
            assert!(out.len() <= 64 << 20, "{} bytes from {source:?}", out.len());
        }
    }
}

/// A path into the generated bodies (`items.0.a`), possibly through array indexes.
fn body_path() -> impl Strategy<Value = String> {
    let root = prop::sample::select(vec!["a", "b", "items", "x", "n", "s"]);
    let step = prop::sample::select(vec!["a", "b", "items", "x", "0", "1", "c"]);
    (root, prop::collection::vec(step, 0..3))
        .prop_map(|(root, steps)| std::iter::once(root).chain(steps).collect::<Vec<_>>().join("."))
}

/// An expression that reads the body in every way templates can: paths, counts, comparisons, functions that take
/// values or look names up at render time, indexes.
fn body_reading_expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => body_path(),
        1 => Just("1".to_string()),
        1 => Just("\"a\"".to_string()),
        1 => Just("context()".to_string()),
        1 => body_path().prop_map(|p| format!("exists(\"{p}\")")),
        2 => body_path().prop_map(|p| format!("length({p})")),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("length({e})")),
            (inner.clone(), prop::sample::select(vec!["==", "!=", "and", "or"]), inner.clone())
                .prop_map(|(l, op, r)| format!("{l} {op} {r}")),
            inner.clone().prop_map(|e| format!("not {e}")),
            (inner.clone(), inner.clone()).prop_map(|(e, i)| format!("{e}[{i}]")),
            (prop::sample::select(vec!["isArray", "isObject", "first", "last"]), inner.clone())
                .prop_map(|(f, e)| format!("{f}({e})")),
            inner.clone().prop_map(|e| format!("existsIn({e}, \"a\")")),
            (inner.clone(), prop::sample::select(vec!["\"a\"", "0"])).prop_map(|(e, k)| format!("at({e}, {k})")),
            inner.prop_map(|e| format!("({e}).a")),
        ]
    })
}

/// A template that reads the body and mostly renders (`default` catches what is not there).
fn body_reading_template() -> impl Strategy<Value = String> {
    let e = body_reading_expression;
    let node = prop_oneof![
        e().prop_map(|e| format!("{{{{ default({e}, \"-\") }}}}")),
        e().prop_map(|e| format!("{{% if default({e}, false) %}}T{{% else %}}F{{% endif %}}")),
        e().prop_map(|e| format!("{{% for v in default({e}, []) %}}{{{{ v }}}},{{% endfor %}}")),
        (e(), body_path()).prop_map(|(e, p)| format!("{{% set y = default({e}, 0) %}}{{{{ default(y.{p}, 1) }}}}")),
        (e(), body_path()).prop_map(|(e, p)| format!("{{% set {p} = default({e}, 0) %}}{{{{ default({p}, 1) }}}}")),
    ];
    prop::collection::vec(node, 1..4).prop_map(|nodes| nodes.join("|"))
}

/// A body with arrays and objects where the paths above lead, or any value.
fn body_to_read() -> impl Strategy<Value = Value> {
    let members = || prop::collection::vec((prop::sample::select(vec!["a", "b", "c", "0", "1"]), json_value()), 0..4);
    let object = || members().prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    prop_oneof![
        1 => json_value(),
        3 => (json_value(), prop::collection::vec(prop_oneof![object(), json_value()], 0..5), object(), edge_number())
            .prop_map(|(a, items, x, n)| json!({"a": a, "items": items, "x": x, "n": n, "b": {"c": [1, {"a": 2}]}})),
    ]
}

/// Render data with only a JSON context (and headers for `header()`), for comparing two contexts.
fn context_data(context: Value) -> RenderData {
    RenderData { headers: vec![("x-a".into(), "1".into())], context, ..RenderData::default() }
}

fn header() -> impl Strategy<Value = (String, String)> {
    (prop::sample::select(vec!["x-a", "X-A", ":path", "content-type", ""]), any::<String>())
        .prop_map(|(n, v)| (n.to_string(), v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(source in any::<String>(), context in body()) {
        check(&source, &render_data(context, Vec::new(), String::new()));
    }

    #[test]
    fn template_syntax_soup_never_panics(source in template_soup(), context in body()) {
        check(&source, &render_data(context, Vec::new(), String::new()));
    }

    #[test]
    fn grammar_shaped_templates_never_panic(
        source in template(),
        context in body(),
        headers in prop::collection::vec(header(), 0..4),
        raw in any::<String>(),
    ) {
        check(&source, &render_data(context, headers, raw));
    }

    #[test]
    fn every_function_on_edge_values_never_panics(
        function in prop::sample::select(FUNCTIONS),
        args in prop::collection::vec(json_value(), 3),
    ) {
        let (name, count) = function;
        let listed: Vec<String> = args.iter().take(count).map(Value::to_string).collect();
        let source = format!("{{{{ {name}({}) }}}}", listed.join(", "));
        check(&source, &render_data(json!({"a": args}), Vec::new(), String::new()));
    }

    /// The body parsed only as far as the template reads it (`JsonReads`) renders as the whole parsed body does,
    /// and a body that does not parse fails with the same error, whatever the template and the body (valid, or
    /// with one byte changed).
    #[test]
    fn a_body_parsed_as_far_as_templates_read_renders_as_the_whole_body(
        source in prop_oneof![body_reading_template(), template()],
        context in prop_oneof![body_to_read(), body()],
        change in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        // Random values differ from one render to the next.
        prop_assume!(!source.contains("replace_with_random"));
        let mut text = context.to_string().into_bytes();
        if let Some((at, byte)) = change {
            let index = at.index(text.len());
            text[index] = byte;
        }
        for (escape, pointer) in [(false, false), (true, true)] {
            let mut templates = Templates::new(escape);
            if templates.add("t", &source, pointer).is_err() {
                continue;
            }
            let reads = templates.json_reads();
            match (serde_json::from_slice::<Value>(&text), reads.parse(&text)) {
                (Ok(whole), Ok(pruned)) => prop_assert_eq!(
                    templates.render("t", &context_data(whole)),
                    templates.render("t", &context_data(pruned)),
                    "{:?} over {}", source, String::from_utf8_lossy(&text)
                ),
                (Err(whole), Err(pruned)) => prop_assert_eq!(whole.to_string(), pruned.to_string()),
                (whole, pruned) => prop_assert!(false, "whole: {:?}, pruned: {:?}", whole, pruned),
            }
        }
    }
}
