//! One transformation applied to one message (request or response): Gloo's `TransformationTemplate` (extractors,
//! headers, body modes) and `HeaderBodyTransform`. Pure: the whole message comes in as headers and body bytes (the
//! stream holds the headers until the body is complete when the transformation reads it), and what to change goes
//! out as header operations and an optional new body.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value};
use shared::request::{is_safe_header_value, query_param, split_path};
use shared::ConfigError;

use crate::body::set_dotted;
use crate::extractor::{Extractor, Source};
use crate::functions::is_function;
use crate::inja::Step;
use crate::json_reads::JsonReads;
use crate::metadata::{EnvoyMetadata, MetadataNeeds};
use crate::pseudo_headers::{check_authority, check_method, normalize_path};
use crate::template::{Metadata, RenderData, Templates};

/// The message a transformation reads.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    /// The headers of the message being transformed (pseudo-headers included).
    pub headers: Vec<(String, String)>,
    /// The request's headers, when transforming a response (`None` on requests: `headers` are the request's).
    pub request_headers: Option<Rc<Vec<(String, String)>>>,
    /// The (decoded) body; empty when the transformation does not need it.
    pub body: &'a [u8],
    pub is_request: bool,
    /// The Envoy metadata the transformation's templates read ([`Transformation::metadata_needs`]).
    pub metadata: EnvoyMetadata,
}

/// A change to the message's headers, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the header with this one.
    Set(String, String),
    Remove(String),
    /// Add a value, keeping the existing ones.
    Append(String, String),
}

impl HeaderOp {
    /// The header the operation changes.
    pub fn name(&self) -> &str {
        match self {
            HeaderOp::Set(name, _) | HeaderOp::Remove(name) | HeaderOp::Append(name, _) => name,
        }
    }
}

/// What a transformation changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ops: Vec<HeaderOp>,
    /// The new body, when the transformation replaces it.
    pub body: Option<Vec<u8>>,
}

/// Gloo's `Transformation`.
#[derive(Debug)]
pub enum Transformation {
    Template(Box<TemplateTransformation>),
    HeaderBody { add_request_metadata: bool },
}

impl Transformation {
    /// `true` when the body must be buffered before the transformation can run (header templates included).
    pub fn needs_body(&self) -> bool {
        match self {
            Transformation::Template(t) => t.needs_body,
            Transformation::HeaderBody { .. } => true,
        }
    }

    /// The Envoy metadata the templates read (each kind is a host call to get).
    pub fn metadata_needs(&self) -> MetadataNeeds {
        match self {
            Transformation::Template(t) => t.metadata_needs,
            Transformation::HeaderBody { .. } => MetadataNeeds::default(),
        }
    }

    /// Runs the transformation; the error is the reason (a render error, an unparsable JSON body, an unsafe
    /// header value).
    pub fn apply(&self, message: Message<'_>) -> Result<Outcome, String> {
        match self {
            Transformation::Template(t) => t.apply(message),
            Transformation::HeaderBody { add_request_metadata } => Ok(header_body(message, *add_request_metadata)),
        }
    }
}

/// The body part of a template transformation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySpec {
    /// The body is not changed (but is read when templates or extractors need it).
    Unchanged,
    /// The body is never buffered.
    Passthrough,
    Template(String),
    MergeExtractorsToBody,
    /// `(dotted name, template, override_empty)`.
    MergeJsonKeys(Vec<(String, String, bool)>),
}

/// Everything a `TransformationTemplate` says, before its templates are parsed.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub advanced_templates: bool,
    pub extractors: Vec<(String, Extractor)>,
    /// `(lower-case name, template)`.
    pub headers: Vec<(String, String)>,
    pub headers_to_append: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    pub body: BodySpec,
    pub parse_json: bool,
    pub ignore_error_on_parse: bool,
    pub escape_characters: bool,
    pub data_sources: BTreeMap<String, String>,
    /// Gloo's `string_delimiter`: separates the parts of a metadata key.
    pub delimiter: char,
}

/// What a transformation reads of the JSON context: what its templates read, the extractions' dotted names
/// (merged into the context, which must be objects on the way), or all of it when the body mode writes it out.
fn json_reads(spec: &TemplateSpec, templates: &Templates) -> JsonReads {
    if matches!(spec.body, BodySpec::MergeExtractorsToBody | BodySpec::MergeJsonKeys(_)) {
        return JsonReads::everything();
    }
    let mut reads = templates.json_reads();
    if !spec.advanced_templates {
        for (name, _) in &spec.extractors {
            let mut parts = name.split('.');
            let root = parts.next().unwrap_or_default();
            let steps: Vec<Step> = parts.map(Step::key).collect();
            reads.add_path(root, &steps, false);
        }
    }
    reads
}

/// A `TransformationTemplate` with its templates parsed.
#[derive(Debug)]
pub struct TemplateTransformation {
    spec: TemplateSpec,
    templates: Templates,
    header_templates: Vec<(String, String)>,
    append_templates: Vec<(String, String)>,
    merge_templates: Vec<(String, String, bool)>,
    env: Rc<HashMap<String, String>>,
    data_sources: Rc<BTreeMap<String, String>>,
    needs_body: bool,
    metadata_needs: MetadataNeeds,
    /// What is read of the JSON body: the body is parsed only as far as that.
    json_reads: JsonReads,
    /// Whether the body is read as text (`body()`, a body extractor): only then is that copy made.
    reads_body_text: bool,
}

impl TemplateTransformation {
    /// Parses every template. Errors name the template by its JSON path (relative to the template object).
    pub fn build(spec: TemplateSpec, env: Rc<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let mut templates = Templates::new(spec.escape_characters);
        let pointer = spec.advanced_templates;
        let mut header_templates = Vec::new();
        for (name, text) in &spec.headers {
            let id = format!("headers.{name}");
            templates.add(&id, text, pointer).map_err(|e| ConfigError::at(format!("{id}.text"), e))?;
            header_templates.push((name.clone(), id));
        }
        let mut append_templates = Vec::new();
        for (index, (name, text)) in spec.headers_to_append.iter().enumerate() {
            let id = format!("headers_to_append[{index}].value");
            templates.add(&id, text, pointer).map_err(|e| ConfigError::at(format!("{id}.text"), e))?;
            append_templates.push((name.clone(), id));
        }
        let mut merge_templates = Vec::new();
        let mut ids: Vec<String> = header_templates.iter().chain(&append_templates).map(|(_, id)| id.clone()).collect();
        match &spec.body {
            BodySpec::Template(text) => {
                templates.add("body", text, pointer).map_err(|e| ConfigError::at("body.text", e))?;
                ids.push("body".to_string());
            }
            BodySpec::MergeJsonKeys(keys) => {
                for (name, text, override_empty) in keys {
                    let id = format!("merge_json_keys.json_keys.{name}.tmpl");
                    templates.add(&id, text, pointer).map_err(|e| ConfigError::at(format!("{id}.text"), e))?;
                    ids.push(id.clone());
                    merge_templates.push((name.clone(), id, *override_empty));
                }
            }
            _ => {}
        }
        let mut metadata_needs = MetadataNeeds::default();
        for id in &ids {
            for name in templates.undeclared_variables(id) {
                metadata_needs.add(&name);
            }
        }
        let json_reads = json_reads(&spec, &templates);
        let reads_body_text = spec.extractors.iter().any(|(_, e)| e.source == Source::Body)
            || ids.iter().any(|id| templates.undeclared_variables(id).contains("body"));
        let mut transformation = TemplateTransformation {
            json_reads,
            reads_body_text,
            data_sources: Rc::new(spec.data_sources.clone()),
            spec,
            templates,
            header_templates,
            append_templates,
            merge_templates,
            env,
            needs_body: false,
            metadata_needs,
        };
        transformation.needs_body = transformation.compute_needs_body();
        Ok(transformation)
    }

    /// Header-only transformations never buffer: the body is needed only for a body mode that writes it, a body
    /// extractor, or a template that reads `body()`, `context()` or a name that can only come from the JSON body.
    fn compute_needs_body(&self) -> bool {
        match self.spec.body {
            BodySpec::Passthrough => return false,
            BodySpec::Template(_) | BodySpec::MergeExtractorsToBody | BodySpec::MergeJsonKeys(_) => return true,
            BodySpec::Unchanged => {}
        }
        self.spec.extractors.iter().any(|(_, e)| e.source == Source::Body) || self.headers_need_body()
    }

    /// Whether a header template reads the body (directly, through the JSON context, or through a body extractor).
    fn headers_need_body(&self) -> bool {
        if self.spec.body == BodySpec::Passthrough {
            return false;
        }
        let body_extractors: Vec<&str> = self
            .spec
            .extractors
            .iter()
            .filter(|(_, e)| e.source == Source::Body)
            .map(|(name, _)| name.split('.').next().unwrap_or_default())
            .collect();
        let extractor_roots: HashSet<&str> = if self.spec.advanced_templates {
            HashSet::new()
        } else {
            self.spec.extractors.iter().map(|(name, _)| name.split('.').next().unwrap_or_default()).collect()
        };
        let ids = self.header_templates.iter().chain(&self.append_templates).map(|(_, id)| id);
        for id in ids {
            for name in self.templates.undeclared_variables(id) {
                if name == "body" || name == "context" || body_extractors.contains(&name.as_str()) {
                    return true;
                }
                if name == "extraction" && !body_extractors.is_empty() {
                    return true;
                }
                let from_json = !is_function(&name) && !extractor_roots.contains(name.as_str());
                if from_json && self.spec.parse_json {
                    return true;
                }
            }
        }
        false
    }

    fn apply(&self, message: Message<'_>) -> Result<Outcome, String> {
        let spec = &self.spec;
        let body_text =
            if self.reads_body_text { String::from_utf8_lossy(message.body).into_owned() } else { String::new() };
        let mut json = Value::Null;
        if spec.parse_json && !message.body.is_empty() {
            match self.json_reads.parse(message.body) {
                Ok(parsed) => json = parsed,
                Err(e) if !spec.ignore_error_on_parse => return Err(format!("body is not valid JSON: {e}")),
                Err(_) => {}
            }
        }
        // Extractions: into the JSON context by dotted name (unless advanced_templates), and for `extraction()`.
        let request_headers = message.request_headers.as_deref().unwrap_or(&message.headers);
        let (_, query) = split_path(first(request_headers, ":path").unwrap_or_default());
        let mut extractions = HashMap::with_capacity(spec.extractors.len());
        for (name, extractor) in &spec.extractors {
            let value = match &extractor.source {
                Source::Header(header) => extractor.run(first(&message.headers, header)),
                Source::Body => extractor.run(Some(&body_text)),
                Source::Query(param) => extractor.run(query_param(query, param).as_deref()),
            };
            if !spec.advanced_templates {
                set_dotted(&mut json, name, Value::String(value.clone()))?;
            }
            extractions.insert(name.clone(), value);
        }
        // The render data owns the headers: each header template changes them in place, so that the next one sees
        // them as Gloo's would (no copy per template).
        let mut data = RenderData {
            headers: message.headers,
            request_headers: message.request_headers,
            body: body_text,
            extractions,
            context: json,
            env: self.env.clone(),
            data_sources: self.data_sources.clone(),
            randoms: Default::default(),
            metadata: Metadata {
                cluster: message.metadata.cluster,
                dynamic: message.metadata.dynamic,
                host: message.metadata.host,
                delimiter: spec.delimiter,
            },
        };

        // The body first (headers see the original body), as Gloo does; it replaces the old one at the end.
        let body = match &spec.body {
            BodySpec::Template(_) => Some(self.templates.render("body", &data)?.into_bytes()),
            BodySpec::MergeExtractorsToBody => Some(data.context.to_string().into_bytes()),
            BodySpec::MergeJsonKeys(_) => {
                let mut merged = data.context.clone();
                for (name, id, override_empty) in &self.merge_templates {
                    let rendered = self.templates.render(id, &data)?;
                    if !rendered.is_empty() || *override_empty {
                        // As in Gloo, the rendered text must be JSON (a string value is rendered with its quotes).
                        // (From bytes, as bodies are parsed: one JSON parser in the .wasm, not two.)
                        let value = serde_json::from_slice(rendered.as_bytes()).map_err(|e| {
                            format!("merge_json_keys.json_keys.{name}: the rendered value is not JSON ({e})")
                        })?;
                        set_dotted(&mut merged, name, value)?;
                    }
                }
                Some(merged.to_string().into_bytes())
            }
            BodySpec::Unchanged | BodySpec::Passthrough => None,
        };

        // Headers, in Gloo's order: `headers` (set; empty removes), `headers_to_remove`, `headers_to_append`.
        let mut ops = Vec::new();
        for (name, id) in &self.header_templates {
            let value = check_header(name, self.templates.render(id, &data)?)?;
            data.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if !value.is_empty() {
                data.headers.push((name.clone(), value.clone()));
            }
            ops.push(if value.is_empty() {
                HeaderOp::Remove(name.clone())
            } else {
                HeaderOp::Set(name.clone(), value)
            });
        }
        if !spec.headers_to_remove.is_empty() {
            data.headers.retain(|(n, _)| !spec.headers_to_remove.iter().any(|r| n.eq_ignore_ascii_case(r)));
            ops.extend(spec.headers_to_remove.iter().map(|name| HeaderOp::Remove(name.clone())));
        }
        for (name, id) in &self.append_templates {
            let value = self.templates.render(id, &data)?;
            if value.is_empty() {
                continue;
            }
            let value = check_header(name, value)?;
            data.headers.push((name.clone(), value.clone()));
            let op = if name.starts_with(':') {
                HeaderOp::Set(name.clone(), value)
            } else {
                HeaderOp::Append(name.clone(), value)
            };
            ops.push(op);
        }
        Ok(Outcome { ops, body })
    }
}

fn first<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A rendered header value must be forwardable: no CR, LF or NUL; pseudo-headers must stay valid (a `:path` is
/// normalised: the value to send is returned).
fn check_header(name: &str, value: String) -> Result<String, String> {
    if !is_safe_header_value(&value) {
        return Err(format!("header {name}: rendered value contains CR, LF or NUL"));
    }
    match name {
        ":status" if value.is_empty() => Ok(value),
        ":status" => match value.trim().parse::<u16>() {
            Ok(code) if (100..=999).contains(&code) => Ok(value),
            _ => Err(format!("header :status: rendered value {value:?} is not a status code")),
        },
        ":path" | ":method" | ":authority" if value.is_empty() => {
            Err(format!("header {name}: rendered value is empty"))
        }
        ":path" => normalize_path(&value),
        ":method" => check_method(&value).map(|()| value),
        ":authority" => check_authority(&value).map(|()| value),
        _ => Ok(value),
    }
}

/// Gloo's `header_body_transform`: the body becomes `{"headers": {...}, "body": "..."}`; with
/// `add_request_metadata`, requests also get `queryString`, `queryStringParameters`,
/// `multiValueQueryStringParameters`, `multiValueHeaders`, `httpMethod` and `path` (the multi-value fields list
/// only names with more than one value, as in API Gateway).
fn header_body(message: Message<'_>, add_request_metadata: bool) -> Outcome {
    let mut document = Map::new();
    let mut headers = Map::new();
    let mut multi_headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in &message.headers {
        headers.insert(name.clone(), Value::String(value.clone()));
        multi_headers.entry(name.as_str()).or_default().push(value.as_str());
    }
    document.insert("headers".to_string(), Value::Object(headers));
    if !message.body.is_empty() {
        document.insert("body".to_string(), Value::String(String::from_utf8_lossy(message.body).into_owned()));
    }
    if add_request_metadata && message.is_request {
        let full_path = first(&message.headers, ":path").unwrap_or_default();
        let (path, query) = split_path(full_path);
        let mut single = Map::new();
        let mut multi: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            single.insert(key.to_string(), Value::String(value.to_string()));
            multi.entry(key.into_owned()).or_default().push(value.into_owned());
        }
        let multi_only = |map: BTreeMap<String, Vec<String>>| -> Map<String, Value> {
            map.into_iter().filter(|(_, v)| v.len() > 1).map(|(k, v)| (k, Value::from(v))).collect()
        };
        document.insert("queryString".to_string(), Value::String(query.to_string()));
        document.insert("queryStringParameters".to_string(), Value::Object(single));
        document.insert("multiValueQueryStringParameters".to_string(), Value::Object(multi_only(multi)));
        let multi_headers = multi_headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
            .collect();
        document.insert("multiValueHeaders".to_string(), Value::Object(multi_only(multi_headers)));
        document.insert(
            "httpMethod".to_string(),
            Value::String(first(&message.headers, ":method").unwrap_or_default().to_string()),
        );
        document.insert("path".to_string(), Value::String(path.to_string()));
    }
    Outcome {
        ops: vec![HeaderOp::Set("content-type".to_string(), "application/json".to_string())],
        body: Some(Value::Object(document).to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extractor::Mode;
    use serde_json::json;

    fn spec() -> TemplateSpec {
        TemplateSpec {
            advanced_templates: false,
            extractors: Vec::new(),
            headers: Vec::new(),
            headers_to_append: Vec::new(),
            headers_to_remove: Vec::new(),
            body: BodySpec::Unchanged,
            parse_json: true,
            ignore_error_on_parse: false,
            escape_characters: false,
            data_sources: BTreeMap::new(),
            delimiter: ':',
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn request(headers: &[(&str, &str)], body: &'static [u8]) -> Message<'static> {
        let headers = pairs(headers);
        Message { headers, body, is_request: true, ..Message::default() }
    }

    fn build(spec: TemplateSpec) -> TemplateTransformation {
        TemplateTransformation::build(spec, Rc::new(HashMap::new())).unwrap()
    }

    fn header_extractor(name: &str, header: &str, regex: &str, group: u32) -> (String, Extractor) {
        (
            name.to_string(),
            Extractor::new(Source::Header(header.to_string()), regex, group, Mode::Extract, None).unwrap(),
        )
    }

    #[test]
    fn the_issue_example() {
        let mut s = spec();
        s.extractors.push(header_extractor("id", ":path", r"/users/(\d+)", 1));
        s.headers.push(("x-user-id".into(), "{{ extraction(\"id\") }}".into()));
        s.body = BodySpec::Template("{\"user\": \"{{ id }}\", \"name\": \"{{ name }}\"}".into());
        let t = build(s);
        assert!(t.needs_body);
        let out = t.apply(request(&[(":path", "/users/42")], br#"{"name": "Ann"}"#)).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-user-id".into(), "42".into())]);
        assert_eq!(out.body.unwrap(), br#"{"user": "42", "name": "Ann"}"#);
    }

    #[test]
    fn header_templates_read_the_body() {
        // Header templates see the body as Gloo's do: JSON fields, body(), context() and body extractors, with
        // the body template rendered from the same body in the same pass.
        let mut s = spec();
        // Extract mode matches the whole body, as Gloo's does.
        s.extractors.push((
            "greeting".into(),
            Extractor::new(Source::Body, r#".*"msg": "(\w+)".*"#, 1, Mode::Extract, None).unwrap(),
        ));
        s.headers.push(("x-name".into(), "{{ user.name }}".into()));
        s.headers.push(("x-raw".into(), "{{ length(body()) }}".into()));
        s.headers.push(("x-ctx".into(), "{{ length(context()) }}".into()));
        s.headers_to_append.push(("x-greeting".into(), "{{ extraction(\"greeting\") }}".into()));
        s.body = BodySpec::Template("{{ user.name }}!".into());
        let t = build(s);
        assert!(t.needs_body);
        let body = br#"{"user": {"name": "Ann", "id": 7}, "msg": "hi"}"#;
        let out = t.apply(request(&[(":path", "/p")], body)).unwrap();
        assert_eq!(
            out.ops,
            vec![
                HeaderOp::Set("x-name".into(), "Ann".into()),
                HeaderOp::Set("x-raw".into(), body.len().to_string()),
                HeaderOp::Set("x-ctx".into(), "3".into()),
                HeaderOp::Append("x-greeting".into(), "hi".into()),
            ]
        );
        assert_eq!(out.body.unwrap(), b"Ann!");
    }

    #[test]
    fn header_order_set_remove_append() {
        let mut s = spec();
        s.headers.push(("x-a".into(), "new".into()));
        s.headers.push(("x-empty".into(), "".into()));
        s.headers.push((":path".into(), "/v2{{ header(\":path\") }}".into()));
        s.headers_to_remove.push("x-gone".into());
        s.headers_to_append.push(("x-a".into(), "appended {{ header(\"x-a\") }}".into()));
        s.headers_to_append.push(("x-b".into(), "".into()));
        let t = build(s);
        assert!(!t.needs_body);
        let out = t.apply(request(&[(":path", "/p"), ("x-a", "old"), ("x-empty", "e"), ("x-gone", "g")], b"")).unwrap();
        assert_eq!(
            out.ops,
            vec![
                HeaderOp::Set("x-a".into(), "new".into()),
                HeaderOp::Remove("x-empty".into()),
                HeaderOp::Set(":path".into(), "/v2/p".into()),
                HeaderOp::Remove("x-gone".into()),
                HeaderOp::Append("x-a".into(), "appended new".into()),
            ]
        );
        assert_eq!(out.body, None);
    }

    #[test]
    fn unsafe_and_invalid_header_values_are_errors() {
        for (name, template) in [
            ("x-a", "a{{ \"\\r\\n\" }}x: y"),
            ("x-a", "{{ \"\\u0000\" }}"),
            (":status", "abc"),
            (":path", ""),
            (":method", "GE T"),
        ] {
            let mut s = spec();
            s.headers.push((name.into(), template.into()));
            let err = build(s).apply(request(&[(":path", "/")], b"")).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn json_body_errors_and_ignore_error_on_parse() {
        let mut s = spec();
        s.body = BodySpec::Template("x".into());
        let err = build(s.clone()).apply(request(&[], b"not json")).unwrap_err();
        assert!(err.starts_with("body is not valid JSON"), "{err}");
        s.ignore_error_on_parse = true;
        assert_eq!(build(s.clone()).apply(request(&[], b"not json")).unwrap().body.unwrap(), b"x");
        s.ignore_error_on_parse = false;
        s.parse_json = false;
        s.body = BodySpec::Template("{{ body() }}!".into());
        assert_eq!(build(s).apply(request(&[], b"not json")).unwrap().body.unwrap(), b"not json!");
    }

    #[test]
    fn render_errors_are_errors() {
        let mut s = spec();
        s.headers.push(("x-a".into(), "{{ missing_field }}".into()));
        let t = build(s);
        assert!(t.needs_body, "an unknown name may come from the JSON body");
        let err = t.apply(request(&[], b"{}")).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        assert_eq!(
            t.apply(request(&[], br#"{"missing_field": 1}"#)).unwrap().ops[0],
            HeaderOp::Set("x-a".into(), "1".into())
        );
    }

    #[test]
    fn extractor_sources_and_modes() {
        let mut s = spec();
        s.parse_json = false;
        s.extractors
            .push(("q".into(), Extractor::new(Source::Query("name".into()), ".*", 0, Mode::Extract, None).unwrap()));
        s.extractors.push(("b".into(), Extractor::new(Source::Body, r"hello (\w+)", 1, Mode::Extract, None).unwrap()));
        s.extractors.push((
            "masked".into(),
            Extractor::new(Source::Header("x-card".into()), r"\d", 0, Mode::ReplaceAll, Some("*".into())).unwrap(),
        ));
        s.headers.push(("x-out".into(), "{{ q }}|{{ b }}|{{ masked }}".into()));
        let t = build(s);
        assert!(t.needs_body);
        let out = t.apply(request(&[(":path", "/x?name=a%20b"), ("x-card", "1234-56")], b"hello world")).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-out".into(), "a b|world|****-**".into())]);
    }

    #[test]
    fn advanced_templates_keep_extractions_out_of_the_context() {
        let mut s = spec();
        s.advanced_templates = true;
        s.extractors.push(header_extractor("a.b", "x-a", ".*", 0));
        s.body = BodySpec::MergeExtractorsToBody;
        s.headers.push(("x-out".into(), "{{ extraction(\"a.b\") }}{{ obj/k }}".into()));
        let out = build(s).apply(request(&[("x-a", "v")], br#"{"obj": {"k": 1}}"#)).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-out".into(), "v1".into())]);
        assert_eq!(out.body.unwrap(), br#"{"obj":{"k":1}}"#);
    }

    #[test]
    fn merge_extractors_to_body_nests_dotted_names() {
        let mut s = spec();
        s.extractors.push(header_extractor("user.id", "x-id", ".*", 0));
        s.extractors.push(header_extractor("top", "x-top", ".*", 0));
        s.body = BodySpec::MergeExtractorsToBody;
        let out = build(s).apply(request(&[("x-id", "7"), ("x-top", "t")], br#"{"keep": true}"#)).unwrap();
        let body: Value = serde_json::from_slice(&out.body.unwrap()).unwrap();
        assert_eq!(body, json!({"keep": true, "user": {"id": "7"}, "top": "t"}));
        // A JSON array cannot take extractions.
        let mut s = spec();
        s.extractors.push(header_extractor("x", "x", ".*", 0));
        s.body = BodySpec::MergeExtractorsToBody;
        assert!(build(s).apply(request(&[], b"[1]")).is_err());
    }

    #[test]
    fn merge_json_keys_parses_json_and_skips_empty() {
        let merge = |keys: Vec<(&str, &str, bool)>| {
            let mut s = spec();
            s.body = BodySpec::MergeJsonKeys(keys.into_iter().map(|(n, t, o)| (n.into(), t.into(), o)).collect());
            build(s).apply(request(&[("x-n", "5")], br#"{"skipped": 2}"#))
        };
        let out = merge(vec![
            ("n", "{{ header(\"x-n\") }}", false),
            ("s", "\"text\"", false),
            ("skipped", "", false),
            ("keep", "{\"x\": [1]}", false),
        ])
        .unwrap();
        let body: Value = serde_json::from_slice(&out.body.unwrap()).unwrap();
        assert_eq!(body, json!({"n": 5, "s": "text", "skipped": 2, "keep": {"x": [1]}}));
        // As in Gloo, what a template renders must be JSON, also the empty text when `override_empty` is set.
        let err = merge(vec![("s", "text", false)]).unwrap_err();
        assert!(err.contains("merge_json_keys.json_keys.s: the rendered value is not JSON"), "{err}");
        assert!(merge(vec![("emptied", "", true)]).is_err());
    }

    #[test]
    fn needs_body_is_computed() {
        let t = |f: &dyn Fn(&mut TemplateSpec)| {
            let mut s = spec();
            f(&mut s);
            build(s).needs_body
        };
        assert!(!t(&|s| s.headers.push(("x".into(), "{{ header(\"a\") }}{{ upper(\"b\") }}".into()))));
        assert!(t(&|s| s.headers.push(("x".into(), "{{ body() }}".into()))));
        assert!(t(&|s| s.headers.push(("x".into(), "{{ context() }}".into()))));
        assert!(!t(&|s| {
            s.parse_json = false;
            s.headers.push(("x".into(), "{{ other }}".into()))
        }));
        assert!(!t(&|s| {
            s.extractors.push(header_extractor("e.f", "x", ".*", 0));
            s.headers.push(("x".into(), "{{ e.f }}".into()))
        }));
        assert!(!t(&|s| {
            s.body = BodySpec::Passthrough;
            s.headers.push(("x".into(), "{{ body() }}".into()))
        }));
        assert!(t(&|s| s.body = BodySpec::MergeExtractorsToBody));
    }

    #[test]
    fn template_errors_name_the_template() {
        let mut s = spec();
        s.headers.push(("x-a".into(), "{{ nope".into()));
        let err = TemplateTransformation::build(s, Rc::new(HashMap::new())).unwrap_err();
        assert_eq!(err.path, "headers.x-a.text");
        assert!(err.message.contains("syntax error"), "{}", err.message);
        let mut s = spec();
        s.body = BodySpec::Template("{% if %}".into());
        assert_eq!(TemplateTransformation::build(s, Rc::new(HashMap::new())).unwrap_err().path, "body.text");
    }

    #[test]
    fn header_body_transform_envelopes() {
        let message = request(
            &[(":method", "POST"), (":path", "/p/q?a=1&b=2&b=3"), ("x-m", "1"), ("x-m", "2"), ("x-s", "s")],
            b"raw",
        );
        let out = Transformation::HeaderBody { add_request_metadata: true }.apply(message.clone()).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("content-type".into(), "application/json".into())]);
        let body: Value = serde_json::from_slice(&out.body.unwrap()).unwrap();
        assert_eq!(body["body"], "raw");
        assert_eq!(body["headers"]["x-s"], "s");
        assert_eq!(body["headers"]["x-m"], "2");
        assert_eq!(body["multiValueHeaders"], json!({"x-m": ["1", "2"]}));
        assert_eq!(body["queryString"], "a=1&b=2&b=3");
        assert_eq!(body["queryStringParameters"], json!({"a": "1", "b": "3"}));
        assert_eq!(body["multiValueQueryStringParameters"], json!({"b": ["2", "3"]}));
        assert_eq!(body["httpMethod"], "POST");
        assert_eq!(body["path"], "/p/q");
        let plain = Transformation::HeaderBody { add_request_metadata: false }.apply(message).unwrap();
        let body: Value = serde_json::from_slice(&plain.body.unwrap()).unwrap();
        assert!(body.get("httpMethod").is_none() && body.get("headers").is_some());
        let empty = Transformation::HeaderBody { add_request_metadata: false }.apply(request(&[], b"")).unwrap();
        assert_eq!(empty.body.unwrap(), br#"{"headers":{}}"#);
    }

    #[test]
    fn response_templates_read_request_headers() {
        let mut s = spec();
        s.headers.push(("x-echo".into(), "{{ request_header(\"x-req\") }}/{{ header(\":status\") }}".into()));
        let message = Message {
            headers: pairs(&[(":status", "200")]),
            request_headers: Some(Rc::new(pairs(&[("x-req", "r")]))),
            body: b"",
            is_request: false,
            metadata: Default::default(),
        };
        let out = build(s).apply(message).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-echo".into(), "r/200".into())]);
    }
}
