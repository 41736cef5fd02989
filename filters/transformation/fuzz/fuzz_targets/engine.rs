//! Fuzzes the template engine: the input is a template, then (after a NUL byte) a JSON body; the first byte picks
//! Gloo's `escape_characters` and `advanced_templates`. Parsing and rendering must answer (output or error),
//! never panic, and stay within the work bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use transformation::template::{RenderData, Templates};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else { return };
    let (source, body) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else { return };
    let mut templates = Templates::new(flags & 1 != 0);
    if templates.add("t", source, flags & 2 != 0).is_err() {
        return;
    }
    let data = RenderData {
        context: serde_json::from_slice(body).unwrap_or(Value::Null),
        body: String::from_utf8_lossy(body).into_owned(),
        ..RenderData::default()
    };
    if let Ok(out) = templates.render("t", &data) {
        assert!(out.len() <= 64 << 20);
    }
});
