//! Translation of Gloo's inja template syntax into the Jinja2 syntax minijinja parses.
//!
//! Both languages share `{{ }}`, `{% %}`, `{# #}`, `if`/`for`/`set`, function calls and string literals. The
//! differences this module bridges, inside expressions and statements only (text and comments are copied as they
//! are, and so are string literals):
//! - inja identifiers may contain `-`, `.` and `/` (`{{ my-extractor }}`, `{{ a.b }}`, `{{ time/start }}` with
//!   `advanced_templates`): names that are not plain Jinja names become lookups (`context()["my-extractor"]`,
//!   `a["b"]`), and numeric path parts become indexes (`items.0` -> `items[0]`);
//! - `loop.index` is 0-based in inja and 1-based in Jinja: `loop.index` -> `loop.index0`, `loop.index1` ->
//!   `loop.index`, `loop.is_first` -> `loop.first`, `loop.is_last` -> `loop.last`;
//! - `{% else if c %}` -> `{% elif c %}`; `{% for k, v in object %}` iterates key/value pairs; `null` -> `none`;
//! - line statements: a line starting with `##` (after optional whitespace) is a statement, and the whole line,
//!   its newline included, is replaced by it (`## if a` -> `{% if a %}`).

use std::borrow::Cow;

/// Translates one template. `pointer_notation` is Gloo's `advanced_templates`: paths are written `a/b/0`.
pub fn translate(source: &str, pointer_notation: bool) -> String {
    let source = line_statements(source);
    let mut out = String::with_capacity(source.len() + 16);
    let mut rest: &str = &source;
    while let Some(start) = find_open(rest) {
        let (text, tail) = rest.split_at(start);
        out.push_str(text);
        let open = tail.get(..2).unwrap_or_default();
        let tail = tail.get(2..).unwrap_or_default();
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        out.push_str(open);
        if close == "#}" {
            // Comments: copied up to their end.
            let end = tail.find(close).map_or(tail.len(), |i| i + 2);
            out.push_str(tail.get(..end).unwrap_or_default());
            rest = tail.get(end..).unwrap_or_default();
            continue;
        }
        let end = find_close(tail, close);
        let inner = tail.get(..end).unwrap_or_default();
        let translated = translate_code(inner, pointer_notation);
        if open == "{%" {
            out.push_str(&translate_statement(&translated));
        } else {
            out.push_str(&translated);
        }
        rest = tail.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Turns inja's `## statement` lines into `{% statement %}` blocks (without the line's newline).
fn line_statements(source: &str) -> Cow<'_, str> {
    if !source.contains("##") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    for line in source.split_inclusive('\n') {
        match line.trim_start().strip_prefix("##") {
            Some(statement) => {
                out.push_str("{% ");
                out.push_str(statement.trim());
                out.push_str(" %}");
            }
            None => out.push_str(line),
        }
    }
    Cow::Owned(out)
}

fn find_open(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes.get(i) == Some(&b'{') && matches!(bytes.get(i + 1), Some(b'{') | Some(b'%') | Some(b'#')))
}

/// The end of a block's code: the closing delimiter outside string literals (or the end of the text, which the
/// parser then reports).
fn find_close(code: &str, close: &str) -> usize {
    let bytes = code.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while let Some(&b) = bytes.get(i) {
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'"' || b == b'\'' {
                    quote = Some(b);
                } else if code.get(i..).is_some_and(|t| t.starts_with(close)) {
                    // `-}}` / `-%}`: the whitespace-control dash belongs to the delimiter.
                    return if i > 0 && bytes.get(i - 1) == Some(&b'-') { i - 1 } else { i };
                }
            }
        }
        i += 1;
    }
    code.len()
}

/// Rewrites identifiers in an expression or statement body, leaving string literals alone.
fn translate_code(code: &str, pointer: bool) -> String {
    let mut out = String::with_capacity(code.len() + 8);
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    // A leading whitespace-control character (`{{-`, `{%+`) is not an operator.
    if let Some(&c) = chars.first() {
        if c == '-' || c == '+' {
            out.push(c);
            i = 1;
        }
    }
    let mut previous_significant: Option<char> = None;
    while let Some(&c) = chars.get(i) {
        if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            while let Some(&d) = chars.get(i) {
                i += 1;
                if d == '\\' {
                    i += 1;
                } else if d == c {
                    break;
                }
            }
            out.extend(chars.get(start..i.min(chars.len())).unwrap_or_default());
            previous_significant = Some(c);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == '@' {
            let start = i;
            while let Some(&d) = chars.get(i) {
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' || d == '/' || d == '-' || d == '@' {
                    i += 1;
                } else {
                    break;
                }
            }
            let mut ident: String = chars.get(start..i).unwrap_or_default().iter().collect();
            // `a.b-` followed by something that is not part of a name: the dash is the operator.
            while ident.ends_with(['-', '.', '/']) {
                ident.pop();
                i -= 1;
            }
            let next = chars.get(i..).unwrap_or_default().iter().find(|c| !c.is_whitespace()).copied();
            // After `.` (attribute) or `|` (filter) or before `(` (call) names are left alone.
            let is_call = next == Some('(');
            let after_dot = previous_significant == Some('.');
            out.push_str(&translate_identifier(&ident, pointer, is_call || after_dot));
            previous_significant = ident.chars().last();
            continue;
        }
        if !c.is_whitespace() {
            previous_significant = Some(c);
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn translate_identifier(ident: &str, pointer: bool, keep: bool) -> String {
    if keep {
        return ident.to_string();
    }
    match ident {
        "null" => return "none".to_string(),
        "loop.index" => return "loop.index0".to_string(),
        "loop.index1" => return "loop.index".to_string(),
        "loop.is_first" => return "loop.first".to_string(),
        "loop.is_last" => return "loop.last".to_string(),
        _ => {}
    }
    let separator = if pointer { '/' } else { '.' };
    let parts: Vec<&str> = ident.split(separator).collect();
    let simple = parts.iter().all(|p| is_plain(p));
    if simple && !pointer {
        return ident.to_string();
    }
    if simple && parts.len() == 1 {
        return ident.to_string();
    }
    let mut out = String::new();
    for (index, part) in parts.iter().enumerate() {
        if index == 0 {
            if is_plain(part) {
                out.push_str(part);
            } else {
                out.push_str("context()[");
                out.push_str(&quote(part));
                out.push(']');
            }
        } else if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            out.push('[');
            out.push_str(&quote(part));
            out.push(']');
        }
    }
    out
}

fn quote(part: &str) -> String {
    // Identifier characters never include quotes or backslashes.
    format!("\"{part}\"")
}

/// Statement-level differences: `else if`, and `for k, v in object`.
fn translate_statement(code: &str) -> String {
    let (lead, body) = match code.strip_prefix(['-', '+']) {
        Some(rest) => (code.get(..1).unwrap_or_default(), rest),
        None => ("", code),
    };
    let trimmed = body.trim_start();
    let indent = body.get(..body.len() - trimmed.len()).unwrap_or_default();
    if let Some(rest) = trimmed.strip_prefix("else if ") {
        return format!("{lead}{indent}elif {rest}");
    }
    if let Some(rest) = trimmed.strip_prefix("for ") {
        if let Some((vars, iterable)) = rest.split_once(" in ") {
            if vars.contains(',') {
                let iterable_code = iterable.trim_end();
                let whitespace = iterable.get(iterable_code.len()..).unwrap_or_default();
                return format!("{lead}{indent}for {vars} in __inja_items({iterable_code}){whitespace}");
            }
        }
    }
    code.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_jinja_is_unchanged() {
        let t = "Hello {{ name }} {% if a.b %}x{% endif %}{# c-d #} {{ header(\"x-a\") }} {{ a | upper }}";
        assert_eq!(translate(t, false), t);
        assert_eq!(translate("no tags at all {", false), "no tags at all {");
    }

    #[test]
    fn dashed_names_become_context_lookups() {
        assert_eq!(translate("{{ my-extractor }}", false), "{{ context()[\"my-extractor\"] }}");
        assert_eq!(translate("{{ a.my-key.0 }}", false), "{{ a[\"my-key\"][0] }}");
        assert_eq!(translate("{{ items.0.name }}", false), "{{ items[0][\"name\"] }}");
        // Inside string literals nothing changes.
        assert_eq!(translate("{{ extraction(\"my-id\") }}", false), "{{ extraction(\"my-id\") }}");
        assert_eq!(translate("{{ 'a-b' }}", false), "{{ 'a-b' }}");
    }

    #[test]
    fn pointer_notation_paths() {
        assert_eq!(translate("{{ time/start }}", true), "{{ time[\"start\"] }}");
        assert_eq!(translate("{{ a/0/b-c }}", true), "{{ a[0][\"b-c\"] }}");
        assert_eq!(translate("{{ plain }}", true), "{{ plain }}");
        assert_eq!(translate("{{ a.b }}", true), "{{ context()[\"a.b\"] }}");
    }

    #[test]
    fn loop_variables_and_keywords() {
        assert_eq!(
            translate("{% for x in xs %}{{ loop.index }}{{ loop.index1 }}{{ loop.is_last }}{% endfor %}", false),
            "{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ loop.last }}{% endfor %}"
        );
        assert_eq!(translate("{% if a %}1{% else if b %}2{% endif %}", false), "{% if a %}1{% elif b %}2{% endif %}");
        assert_eq!(translate("{{ x == null }}", false), "{{ x == none }}");
        assert_eq!(
            translate("{% for k, v in obj %}{{ k }}{% endfor %}", false),
            "{% for k, v in __inja_items(obj) %}{{ k }}{% endfor %}"
        );
        assert_eq!(translate("{%- for k, v in a.b -%}", false), "{%- for k, v in __inja_items(a.b) -%}");
    }

    #[test]
    fn line_statements_become_blocks() {
        let t = "start\n## for x in xs\n{{ x }},\n  ## endfor\nend ## not a statement\n";
        assert_eq!(translate(t, false), "start\n{% for x in xs %}{{ x }},\n{% endfor %}end ## not a statement\n");
        assert_eq!(translate("## if a.b-c\nyes\n## endif", false), "{% if a[\"b-c\"] %}yes\n{% endif %}");
    }

    #[test]
    fn operators_and_whitespace_control() {
        assert_eq!(translate("{{- a - b -}}", false), "{{- a - b -}}");
        assert_eq!(translate("{{ a-b }}", false), "{{ context()[\"a-b\"] }}");
        assert_eq!(translate("{{ x.y- 1 }}", false), "{{ x.y- 1 }}");
        assert_eq!(translate("{{ \"}}\" }}", false), "{{ \"}}\" }}");
    }
}
