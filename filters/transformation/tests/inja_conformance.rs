//! inja's conformance suite: every case of `conformance/inja/cases.json` (inja's own tests restated as data, and
//! what Gloo's configuration of inja implies) rendered through our engine. A case that says it `differs` or is
//! `unsupported` asserts what our engine does instead, and why is in the file.

// Test code: a malformed case file should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use serde_json::Value;
use transformation::inja::line_column;
use transformation::template::{RenderData, Templates};

fn suite() -> Value {
    serde_json::from_str(include_str!("../conformance/inja/cases.json")).expect("cases.json is JSON")
}

fn text<'v>(case: &'v Value, field: &str) -> Option<&'v str> {
    case.get(field).map(|v| v.as_str().unwrap_or_else(|| panic!("`{field}` must be a string in {case}")))
}

/// Renders one case; the error is the parser's or the renderer's.
fn run(case: &Value, data_sets: &Value) -> Result<String, String> {
    let mut context = data_sets[text(case, "data").expect("every case names its data")].clone();
    assert!(context.is_object(), "unknown data set in {case}");
    if let Some(Value::Object(set)) = case.get("set") {
        for (key, value) in set {
            context[key] = value.clone();
        }
    }
    let flag = |name: &str| case.get(name).and_then(Value::as_bool).unwrap_or(false);
    let mut templates = Templates::new(flag("escape"));
    templates.add("t", text(case, "template").expect("every case has a template"), flag("pointer"))?;
    let data =
        RenderData { context, body: text(case, "body").unwrap_or_default().to_string(), ..RenderData::default() };
    templates.render("t", &data)
}

#[test]
fn inja_conformance() {
    let suite = suite();
    let cases = suite["cases"].as_array().expect("cases");
    let (mut identical, mut differs, mut unsupported) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in cases {
        match (case.get("differs"), case.get("unsupported")) {
            (None, None) => identical += 1,
            (Some(_), None) => differs += 1,
            (None, Some(_)) => unsupported += 1,
            _ => panic!("a case differs or is unsupported, not both: {case}"),
        }
        let outcome = run(case, &suite["data"]);
        let passed = match (text(case, "expect"), text(case, "error"), &outcome) {
            (Some(expected), None, Ok(out)) => out == expected,
            (None, Some(expected), Err(error)) => error.contains(expected),
            (Some(_), Some(_), _) | (None, None, _) => panic!("a case expects an output or an error: {case}"),
            _ => false,
        };
        if !passed {
            failures.push(format!(
                "{} {:?}: got {outcome:?}",
                case["group"],
                text(case, "template").unwrap_or_default()
            ));
        }
    }
    for location in suite["source_locations"].as_array().expect("source_locations") {
        let content = text(location, "content").expect("content");
        let offset = location["offset"].as_u64().expect("offset") as usize;
        let expected =
            (location["line"].as_u64().expect("line") as usize, location["column"].as_u64().expect("column") as usize);
        identical += 1;
        if line_column(content, offset) != expected {
            failures
                .push(format!("line_column({offset}) = {:?}, inja says {expected:?}", line_column(content, offset)));
        }
    }
    println!("inja conformance: {identical} identical, {differs} differ, {unsupported} unsupported");
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
