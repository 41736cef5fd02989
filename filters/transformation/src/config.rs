//! Plugin configuration: the JSON form (snake_case, as in the proto) of Gloo's listener-level
//! `FilterTransformations`, plus the per-route `RouteTransformations` list (`transformations` with
//! `request_match` / `response_match`) inside each rule, and a few settings of our own (`max_body_size`,
//! `compressed_bodies`). Templates are parsed and regexes compiled here, once.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use shared::config::{self, ConfigError};
use shared::matcher::StringMatch;
use shared::{ByteSize, RouteMatch};

use crate::extractor::{Extractor, Mode, Source};
use crate::transform::{BodySpec, TemplateSpec, TemplateTransformation, Transformation};

pub const FILTER: &str = "transformation";

const XDS_MATCHER: &str = "not supported (xDS matcher trees need Envoy's matching API, which Wasm filters do not \
have; use `match` / `request_match`)";

/// The applied configuration.
#[derive(Debug)]
pub struct Config {
    pub rules: Vec<Rule>,
    /// Most body bytes buffered, and most decoded bytes of a compressed body.
    pub max_body: usize,
    /// Re-encode transformed gzip/deflate bodies (default) or send them as identity.
    pub reencode: bool,
}

/// One `transformations[]` entry: a request matcher and what to do.
#[derive(Debug)]
pub struct Rule {
    pub matcher: RouteMatch,
    /// `route_transformations.request_transformation` / `response_transformation`, and the `request_match`
    /// entries of `route_transformations.transformations`, in order (the first that matches wins).
    pub request_matches: Vec<RequestMatch>,
    /// `response_match` entries: used when the request match gave no response transformation.
    pub response_matches: Vec<ResponseMatch>,
}

#[derive(Debug)]
pub struct RequestMatch {
    pub matcher: RouteMatch,
    pub request: Option<Rc<Transformation>>,
    pub response: Option<Rc<Transformation>>,
    /// Envoy selects the route again once the request transformation is applied (see `Host::clear_route_cache`).
    pub clear_route_cache: bool,
}

#[derive(Debug)]
pub struct ResponseMatch {
    /// The response header matchers (`:status` included), as a matcher over the response headers.
    pub headers: RouteMatch,
    /// Envoy's `response.code_details` must match (non-empty usually means a local reply).
    pub response_code_details: Option<StringMatch>,
    pub response: Rc<Transformation>,
}

impl Config {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

// ---- JSON shapes ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// No rules is a filter that does nothing, as in Gloo (whose rules often live on routes).
    #[serde(default)]
    transformations: Vec<RawRule>,
    #[serde(default)]
    stage: u32,
    /// Gloo logs bodies and headers with this; we never log bodies (accepted, ignored).
    #[serde(default)]
    #[allow(dead_code)]
    #[serde(alias = "logRequestResponseInfo")]
    log_request_response_info: bool,
    #[serde(alias = "maxBodySize")]
    max_body_size: Option<ByteSize>,
    #[serde(default)]
    #[serde(alias = "compressedBodies")]
    compressed_bodies: CompressedBodies,
    /// Always in effect: upgrades and CONNECT are transformed as messages without a body, never held.
    #[serde(default)]
    #[serde(alias = "autoWebsocketPassthrough")]
    #[allow(dead_code)]
    auto_websocket_passthrough: bool,
    /// xDS's generic matcher tree (refused).
    matcher: Option<IgnoredAny>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CompressedBodies {
    #[default]
    Reencode,
    Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match", default)]
    matcher: RouteMatch,
    #[serde(alias = "routeTransformations")]
    route_transformations: Option<RawRouteTransformations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteTransformations {
    #[serde(alias = "requestTransformation")]
    request_transformation: Option<RawTransformation>,
    #[serde(alias = "responseTransformation")]
    response_transformation: Option<RawTransformation>,
    #[serde(default)]
    #[serde(alias = "clearRouteCache")]
    clear_route_cache: bool,
    #[serde(alias = "onStreamCompletionTransformation")]
    on_stream_completion_transformation: Option<serde_json::Value>,
    #[serde(default)]
    transformations: Vec<RawRouteTransformation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteTransformation {
    #[serde(default)]
    stage: u32,
    #[serde(alias = "requestMatch")]
    request_match: Option<RawRequestMatch>,
    #[serde(alias = "responseMatch")]
    response_match: Option<RawResponseMatch>,
    /// xDS's generic matcher tree (refused).
    matcher: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestMatch {
    #[serde(rename = "match", default)]
    matcher: RouteMatch,
    #[serde(alias = "requestTransformation")]
    request_transformation: Option<RawTransformation>,
    #[serde(alias = "responseTransformation")]
    response_transformation: Option<RawTransformation>,
    #[serde(default)]
    #[serde(alias = "clearRouteCache")]
    clear_route_cache: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponseMatch {
    #[serde(rename = "match", default)]
    matcher: RawResponseMatcher,
    #[serde(alias = "responseTransformation")]
    response_transformation: Option<RawTransformation>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResponseMatcher {
    #[serde(default)]
    headers: Vec<serde_json::Value>,
    #[serde(alias = "responseCodeDetails")]
    response_code_details: Option<StringMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransformation {
    #[serde(alias = "transformationTemplate")]
    transformation_template: Option<RawTemplate>,
    #[serde(alias = "headerBodyTransform")]
    header_body_transform: Option<RawHeaderBody>,
    #[serde(alias = "transformerConfig")]
    transformer_config: Option<serde_json::Value>,
    #[serde(alias = "aiTransformation")]
    ai_transformation: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    #[serde(alias = "logRequestResponseInfo")]
    log_request_response_info: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderBody {
    #[serde(default)]
    #[serde(alias = "addRequestMetadata")]
    add_request_metadata: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjaTemplate {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    #[serde(alias = "advancedTemplates")]
    advanced_templates: bool,
    #[serde(default)]
    extractors: BTreeMap<String, RawExtraction>,
    #[serde(default)]
    headers: BTreeMap<String, InjaTemplate>,
    #[serde(default)]
    #[serde(alias = "headersToAppend")]
    headers_to_append: Vec<RawHeaderToAppend>,
    #[serde(default)]
    #[serde(alias = "headersToRemove")]
    headers_to_remove: Vec<String>,
    body: Option<InjaTemplate>,
    passthrough: Option<Empty>,
    #[serde(alias = "mergeExtractorsToBody")]
    merge_extractors_to_body: Option<Empty>,
    #[serde(alias = "mergeJsonKeys")]
    merge_json_keys: Option<RawMergeJsonKeys>,
    #[serde(default)]
    #[serde(alias = "parseBodyBehavior")]
    parse_body_behavior: ParseBodyBehavior,
    #[serde(default)]
    #[serde(alias = "ignoreErrorOnParse")]
    ignore_error_on_parse: bool,
    #[serde(default)]
    #[serde(alias = "dynamicMetadataValues")]
    dynamic_metadata_values: Vec<serde_json::Value>,
    #[serde(default)]
    #[serde(alias = "escapeCharacters")]
    escape_characters: bool,
    #[serde(default)]
    #[serde(alias = "dataSources")]
    data_sources: BTreeMap<String, serde_json::Value>,
    /// Limits what Envoy reads from data source files; inline values (the only kind here) have no limit.
    #[serde(default)]
    #[serde(alias = "dataSourceMaxSize")]
    #[allow(dead_code)]
    data_source_max_size: u32,
    #[serde(default)]
    #[serde(alias = "stringDelimiter")]
    string_delimiter: String,
    #[serde(alias = "spanTransformer")]
    span_transformer: Option<serde_json::Value>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
enum ParseBodyBehavior {
    #[default]
    ParseAsJson,
    DontParse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderToAppend {
    key: String,
    value: Option<InjaTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMergeJsonKeys {
    #[serde(default)]
    #[serde(alias = "jsonKeys")]
    json_keys: BTreeMap<String, RawOverridableTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverridableTemplate {
    tmpl: Option<InjaTemplate>,
    #[serde(default)]
    #[serde(alias = "overrideEmpty")]
    override_empty: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtraction {
    header: Option<String>,
    body: Option<Empty>,
    query: Option<String>,
    #[serde(default)]
    regex: String,
    #[serde(default)]
    subgroup: u32,
    #[serde(alias = "replacementText")]
    replacement_text: Option<String>,
    #[serde(default)]
    mode: RawMode,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RawMode {
    #[default]
    Extract,
    SingleReplace,
    ReplaceAll,
}

// ---- building --------------------------------------------------------------------------------------------

/// Parses and validates the plugin configuration, with the process environment for `env()`.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(bytes, std::env::vars().collect())
}

/// Parses with an explicit environment (Gloo reads the environment once, at configuration time).
pub fn parse_with_env(bytes: &[u8], env: HashMap<String, String>) -> Result<Config, ConfigError> {
    let raw: RawConfig = config::parse(bytes)?;
    if raw.matcher.is_some() {
        return Err(ConfigError::at("matcher", XDS_MATCHER));
    }
    if raw.stage > 10 {
        return Err(ConfigError::at("stage", "must be at most 10"));
    }
    let env = Rc::new(env);
    let mut rules = Vec::with_capacity(raw.transformations.len());
    for (index, rule) in raw.transformations.into_iter().enumerate() {
        let path = format!("transformations[{index}]");
        rules.push(build_rule(rule, raw.stage, &env).map_err(|e| e.under(&path))?);
    }
    let max_body = raw.max_body_size.map_or(1 << 20, |size| size.0);
    if max_body == 0 {
        return Err(ConfigError::at("max_body_size", "must be greater than 0"));
    }
    Ok(Config {
        rules,
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        reencode: raw.compressed_bodies == CompressedBodies::Reencode,
    })
}

fn build_rule(raw: RawRule, stage: u32, env: &Rc<HashMap<String, String>>) -> Result<Rule, ConfigError> {
    let mut rule = Rule { matcher: raw.matcher, request_matches: Vec::new(), response_matches: Vec::new() };
    let Some(routes) = raw.route_transformations else { return Ok(rule) };
    let at = "route_transformations";
    if routes.on_stream_completion_transformation.is_some() {
        return Err(ConfigError::at(
            format!("{at}.on_stream_completion_transformation"),
            "not supported (proxy-wasm has no hook after the stream completes that can change it)",
        ));
    }
    for (index, entry) in routes.transformations.into_iter().enumerate() {
        let path = format!("{at}.transformations[{index}]");
        if entry.stage > 10 {
            return Err(ConfigError::at(format!("{path}.stage"), "must be at most 10"));
        }
        if entry.matcher.is_some() {
            return Err(ConfigError::at(format!("{path}.matcher"), XDS_MATCHER));
        }
        match (entry.request_match, entry.response_match) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::at(path, "set exactly one of `request_match`, `response_match`"));
            }
            // Entries of another stage belong to another transformation filter.
            _ if entry.stage != stage => {}
            (Some(m), None) => {
                let path = format!("{path}.request_match");
                rule.request_matches.push(RequestMatch {
                    matcher: m.matcher,
                    request: build_optional(m.request_transformation, env, &format!("{path}.request_transformation"))?,
                    response: build_optional(
                        m.response_transformation,
                        env,
                        &format!("{path}.response_transformation"),
                    )?,
                    clear_route_cache: m.clear_route_cache,
                });
            }
            (None, Some(m)) => {
                let path = format!("{path}.response_match");
                let headers = response_headers_matcher(m.matcher.headers)
                    .map_err(|e| ConfigError::at(format!("{path}.match.headers"), e))?;
                let Some(response) =
                    build_optional(m.response_transformation, env, &format!("{path}.response_transformation"))?
                else {
                    return Err(ConfigError::at(format!("{path}.response_transformation"), "is required"));
                };
                rule.response_matches.push(ResponseMatch {
                    headers,
                    response_code_details: m.matcher.response_code_details,
                    response,
                });
            }
        }
    }
    // The deprecated direct fields act as a last request match that matches everything.
    let request = build_optional(routes.request_transformation, env, &format!("{at}.request_transformation"))?;
    let response = build_optional(routes.response_transformation, env, &format!("{at}.response_transformation"))?;
    if request.is_some() || response.is_some() {
        let matcher = RouteMatch::default();
        rule.request_matches.push(RequestMatch {
            matcher,
            request,
            response,
            clear_route_cache: routes.clear_route_cache,
        });
    }
    Ok(rule)
}

/// Response header matchers reuse the shared request matcher, over the response's headers.
fn response_headers_matcher(headers: Vec<serde_json::Value>) -> Result<RouteMatch, String> {
    let value = serde_json::json!({ "headers": headers });
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn build_optional(
    raw: Option<RawTransformation>,
    env: &Rc<HashMap<String, String>>,
    path: &str,
) -> Result<Option<Rc<Transformation>>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(raw) => build_transformation(raw, env).map(|t| t.map(Rc::new)).map_err(|e| e.under(path)),
    }
}

fn build_transformation(
    raw: RawTransformation,
    env: &Rc<HashMap<String, String>>,
) -> Result<Option<Transformation>, ConfigError> {
    if raw.ai_transformation.is_some() {
        return Err(ConfigError::at(
            "ai_transformation",
            "not supported (Gloo's AI transformer rewrites streamed LLM chat bodies chunk by chunk; not ported)",
        ));
    }
    match (raw.transformation_template, raw.header_body_transform, raw.transformer_config) {
        (None, None, None) => Ok(None),
        (Some(template), None, None) => {
            let spec = build_spec(template, env)?;
            let built =
                TemplateTransformation::build(spec, env.clone()).map_err(|e| e.under("transformation_template"))?;
            Ok(Some(Transformation::Template(Box::new(built))))
        }
        (None, Some(hb), None) => {
            Ok(Some(Transformation::HeaderBody { add_request_metadata: hb.add_request_metadata }))
        }
        (None, None, Some(_)) => Err(ConfigError::at(
            "transformer_config",
            "not supported (external transformer extensions are C++ plugins of Gloo's Envoy build)",
        )),
        _ => Err(ConfigError::at(
            "",
            "set only one of `transformation_template`, `header_body_transform`, `transformer_config`",
        )),
    }
}

fn header_name(name: &str, path: &str, allow_pseudo: bool) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let valid = match lower.strip_prefix(':') {
        Some(pseudo) => allow_pseudo && matches!(pseudo, "path" | "method" | "authority" | "status"),
        None => {
            !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        }
    };
    if valid {
        Ok(lower)
    } else if lower.starts_with(':') {
        Err(ConfigError::at(path, format!("pseudo-header {name:?} cannot be changed here (only :path, :method, :authority, :status can be templated)")))
    } else {
        Err(ConfigError::at(path, format!("invalid header name {name:?}")))
    }
}

fn build_spec(raw: RawTemplate, env: &HashMap<String, String>) -> Result<TemplateSpec, ConfigError> {
    let at = "transformation_template";
    if raw.span_transformer.is_some_and(|s| s.get("name").is_some()) {
        return Err(ConfigError::at(
            format!("{at}.span_transformer"),
            "not supported (a Wasm filter cannot rename the active tracing span)",
        ));
    }
    // Gloo's default, and Gloo's rule: one character.
    let mut chars = raw.string_delimiter.chars();
    let delimiter = match (chars.next(), chars.next()) {
        (None, _) => ':',
        (Some(c), None) => c,
        _ => {
            return Err(ConfigError::at(format!("{at}.string_delimiter"), "must be a single character"));
        }
    };
    if !raw.dynamic_metadata_values.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.dynamic_metadata_values"),
            "not supported (proxy-wasm cannot set Envoy dynamic metadata)",
        ));
    }
    let mut extractors = Vec::with_capacity(raw.extractors.len());
    for (name, e) in raw.extractors {
        let path = format!("{at}.extractors.{name}");
        let source = match (e.header, e.body, e.query) {
            (Some(h), None, None) => Source::Header(header_name(&h, &format!("{path}.header"), true)?),
            (None, Some(_), None) => Source::Body,
            (None, None, Some(q)) => Source::Query(q),
            _ => return Err(ConfigError::at(path, "set exactly one of `header`, `body`, `query`")),
        };
        let mode = match e.mode {
            RawMode::Extract => Mode::Extract,
            RawMode::SingleReplace => Mode::SingleReplace,
            RawMode::ReplaceAll => Mode::ReplaceAll,
        };
        let extractor = Extractor::new(source, &e.regex, e.subgroup, mode, e.replacement_text)
            .map_err(|message| ConfigError::at(path.clone(), message))?;
        extractors.push((name, extractor));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, template) in raw.headers {
        headers.push((header_name(&name, &format!("{at}.headers.{name}"), true)?, template.text));
    }
    let mut headers_to_append = Vec::with_capacity(raw.headers_to_append.len());
    for (index, h) in raw.headers_to_append.into_iter().enumerate() {
        let name = header_name(&h.key, &format!("{at}.headers_to_append[{index}].key"), true)?;
        headers_to_append.push((name, h.value.map(|v| v.text).unwrap_or_default()));
    }
    let mut headers_to_remove = Vec::with_capacity(raw.headers_to_remove.len());
    for (index, name) in raw.headers_to_remove.into_iter().enumerate() {
        headers_to_remove.push(header_name(&name, &format!("{at}.headers_to_remove[{index}]"), false)?);
    }
    let parse_json = raw.parse_body_behavior == ParseBodyBehavior::ParseAsJson;
    let body = match (raw.body, raw.passthrough, raw.merge_extractors_to_body, raw.merge_json_keys) {
        (None, None, None, None) => BodySpec::Unchanged,
        (Some(t), None, None, None) => BodySpec::Template(t.text),
        (None, Some(_), None, None) => BodySpec::Passthrough,
        (None, None, Some(_), None) => BodySpec::MergeExtractorsToBody,
        (None, None, None, Some(m)) => {
            let at = format!("{at}.merge_json_keys");
            if !parse_json {
                return Err(ConfigError::at(at, "MergeJsonKeys requires parsing the body"));
            }
            // Gloo's checks: keys are top-level names (dots are kept free for nested keys later).
            if raw.advanced_templates {
                return Err(ConfigError::at(at, "MergeJsonKeys is not supported with advanced templates"));
            }
            if let Some(name) = m.json_keys.keys().find(|name| name.contains('.')) {
                return Err(ConfigError::at(format!("{at}.json_keys.{name}"), "a key name cannot contain '.'"));
            }
            BodySpec::MergeJsonKeys(
                m.json_keys
                    .into_iter()
                    .map(|(name, t)| (name, t.tmpl.map(|t| t.text).unwrap_or_default(), t.override_empty))
                    .collect(),
            )
        }
        _ => {
            return Err(ConfigError::at(
                at,
                "set only one of `body`, `passthrough`, `merge_extractors_to_body`, `merge_json_keys`",
            ))
        }
    };
    let mut data_sources = BTreeMap::new();
    for (name, source) in raw.data_sources {
        let value = data_source(source, env).map_err(|(field, e)| {
            let path = format!("{at}.data_sources.{name}");
            ConfigError::at(if field.is_empty() { path } else { format!("{path}.{field}") }, e)
        })?;
        data_sources.insert(name, value);
    }
    Ok(TemplateSpec {
        advanced_templates: raw.advanced_templates,
        extractors,
        headers,
        headers_to_append,
        headers_to_remove,
        body,
        parse_json,
        ignore_error_on_parse: raw.ignore_error_on_parse,
        escape_characters: raw.escape_characters,
        data_sources,
        delimiter,
    })
}

/// One Envoy `DataSource` (a plain string, `inline_string`, `inline_bytes` in base64, `environment_variable` read
/// at configuration time as Envoy does): its value, or the field at fault and why. Read from the JSON value by hand
/// (serde's untagged enums cost KBs of .wasm).
fn data_source(source: serde_json::Value, env: &HashMap<String, String>) -> Result<String, (&'static str, String)> {
    let object = match source {
        serde_json::Value::String(text) => return Ok(text),
        serde_json::Value::Object(object) => object,
        _ => return Err(("", "expected a string or a DataSource object".into())),
    };
    const ONE_OF: &str = "set exactly one of `inline_string`, `inline_bytes`, `environment_variable`";
    let mut chosen = None;
    for (name, value) in object {
        let field = match name.as_str() {
            "inline_string" | "inlineString" => "inline_string",
            "inline_bytes" | "inlineBytes" => "inline_bytes",
            "environment_variable" | "environmentVariable" => "environment_variable",
            "filename" => "filename",
            "watched_directory" | "watchedDirectory" => "watched_directory",
            _ => return Err(("", format!("unknown field `{name}`"))),
        };
        if field == "filename" || field == "watched_directory" {
            let reason = "not supported (a Wasm filter cannot read files; use inline_string or inline_bytes)";
            return Err((field, reason.into()));
        }
        let serde_json::Value::String(text) = value else { return Err((field, "expected a string".into())) };
        if chosen.replace((field, text)).is_some() {
            return Err(("", ONE_OF.into()));
        }
    }
    match chosen {
        Some(("inline_bytes", b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| ("inline_bytes", format!("invalid base64: {e}"))),
        Some(("environment_variable", name)) => match env.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(("environment_variable", format!("{name:?} is not set in the environment"))),
        },
        Some((_, text)) => Ok(text),
        None => Err(("", ONE_OF.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{HeaderOp, Message};

    fn parse_ok(json: &str) -> Config {
        parse_with_env(json.as_bytes(), HashMap::new()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn parse_err(json: &str) -> String {
        parse_with_env(json.as_bytes(), HashMap::new()).unwrap_err().to_string()
    }

    #[test]
    fn accepts_matchers() {
        let config = parse_ok(r#"{"transformations": [{"match": {"prefix": "/users"}}, {}]}"#);
        assert_eq!(config.rule_count(), 2);
        assert_eq!(config.max_body, 1 << 20);
        assert!(config.reencode);
    }

    #[test]
    fn the_issue_example_parses_and_runs() {
        let config = parse_ok(
            r#"{"transformations": [
              {"match": {"prefix": "/users"},
               "route_transformations": {
                 "request_transformation": {"transformation_template": {
                    "extractors": {"id": {"header": ":path", "regex": "/users/(\\d+)", "subgroup": 1}},
                    "headers": {"x-user-id": {"text": "{{ extraction(\"id\") }}"}},
                    "body": {"text": "{\"user\": \"{{ id }}\", \"name\": \"{{ name }}\"}"}}},
                 "response_transformation": {"transformation_template": {"headers": {"x-served-by": {"text": "gateway"}}}}}}
            ]}"#,
        );
        let rule = &config.rules[0];
        let entry = &rule.request_matches[0];
        let request = entry.request.as_ref().unwrap();
        assert!(request.needs_body());
        assert!(!entry.response.as_ref().unwrap().needs_body());
        let headers = vec![(":path".to_string(), "/users/7".to_string())];
        let out = request
            .apply(Message { headers, body: br#"{"name": "Bo"}"#, is_request: true, ..Message::default() })
            .unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-user-id".into(), "7".into())]);
        assert_eq!(out.body.unwrap(), br#"{"user": "7", "name": "Bo"}"#);
    }

    #[test]
    fn header_templates_that_read_the_body_are_accepted() {
        // As in Gloo: body(), context(), JSON fields and body extractors in header templates (the filter holds the
        // headers until the body is complete).
        let config = parse_ok(
            r#"{"transformations": [{"route_transformations": {"request_transformation": {"transformation_template": {
                "extractors": {"b": {"body": {}, "regex": ".*n(\\d).*", "subgroup": 1}},
                "headers": {"x-json": {"text": "{{ user.name }}"}, "x-body": {"text": "{{ body() }}"},
                            "x-context": {"text": "{{ length(context()) }}"}, "x-extracted": {"text": "{{ b }}"}}}}}}]}"#,
        );
        let t = config.rules[0].request_matches[0].request.clone().unwrap();
        assert!(t.needs_body());
        let body = br#"{"user": {"name": "n1"}}"#;
        let out = t.apply(Message { body, is_request: true, ..Message::default() }).unwrap();
        assert_eq!(
            out.ops,
            vec![
                HeaderOp::Set("x-body".into(), String::from_utf8_lossy(body).into_owned()),
                HeaderOp::Set("x-context".into(), "2".into()),
                HeaderOp::Set("x-extracted".into(), "1".into()),
                HeaderOp::Set("x-json".into(), "n1".into()),
            ]
        );
        assert_eq!(out.body, None);
    }

    #[test]
    fn route_transformation_lists_and_stages() {
        let config = parse_ok(
            r#"{"stage": 1, "transformations": [{"route_transformations": {"transformations": [
                {"stage": 1, "request_match": {"match": {"prefix": "/a"}, "request_transformation": {"header_body_transform": {}}}},
                {"stage": 0, "request_match": {"request_transformation": {"header_body_transform": {}}}},
                {"stage": 1, "response_match": {"match": {"headers": [{"name": ":status", "exact_match": "404"}],
                  "response_code_details": {"exact": "route_not_found"}},
                  "response_transformation": {"transformation_template": {"headers": {"x-a": {"text": "b"}}}}}}
            ]}}]}"#,
        );
        let rule = &config.rules[0];
        assert_eq!(rule.request_matches.len(), 1, "the stage-0 entry belongs to another filter");
        assert_eq!(rule.response_matches.len(), 1);
        let status = vec![(":status".to_string(), "404".to_string())];
        assert!(rule.response_matches[0].headers.matches(&status));
        let ok = vec![(":status".to_string(), "200".to_string())];
        assert!(!rule.response_matches[0].headers.matches(&ok));
        assert!(rule.response_matches[0].response_code_details.as_ref().unwrap().matches("route_not_found"));
    }

    #[test]
    fn data_sources_and_env() {
        let config = parse_with_env(
            br#"{"transformations": [{"route_transformations": {"request_transformation": {"transformation_template": {
                "data_sources": {"a": "text", "b": {"inline_string": "s"}, "c": {"inline_bytes": "Ynl0ZXM="}},
                "headers": {"x-d": {"text": "{{ data_source(\"a\") }}{{ data_source(\"b\") }}{{ data_source(\"c\") }}{{ env(\"E\") }}"}}}}}}]}"#,
            [("E".to_string(), "env".to_string())].into_iter().collect(),
        )
        .unwrap();
        let t = config.rules[0].request_matches[0].request.clone().unwrap();
        let out = t.apply(Message { is_request: true, ..Message::default() }).unwrap();
        assert_eq!(out.ops, vec![HeaderOp::Set("x-d".into(), "textsbytesenv".into())]);
    }

    #[test]
    fn camel_case_names_are_accepted_and_user_names_kept() {
        // As Gloo's CRDs write them (protobuf's JSON names); the names of headers, extractors, data sources and
        // JSON keys are the user's and stay as written.
        let config = parse_with_env(
            br#"{"autoWebsocketPassthrough": true, "logRequestResponseInfo": false, "transformations": [
              {"match": {"safeRegex": {"regex": "/u/.*"}, "caseSensitive": false,
                         "headers": [{"name": "x-m", "exactMatch": "1", "invertMatch": false}],
                         "queryParameters": [{"name": "q", "stringMatch": {"exact": "v", "ignoreCase": true}}]},
               "routeTransformations": {"clearRouteCache": true, "transformations": [
                 {"requestMatch": {"match": {"prefix": "/u"}, "requestTransformation": {"transformationTemplate": {
                    "advancedTemplates": false, "parseBodyBehavior": "DontParse", "ignoreErrorOnParse": true,
                    "escapeCharacters": false, "stringDelimiter": ":", "dataSourceMaxSize": 10, "spanTransformer": {},
                    "extractors": {"myId": {"header": ":path", "regex": "/u/(.*)", "subgroup": 1}},
                    "dataSources": {"myData": {"inlineString": "d"}, "fromEnv": {"environmentVariable": "E"}},
                    "headers": {"X-Out": {"text": "{{ myId }}{{ data_source(\"myData\") }}{{ data_source(\"fromEnv\") }}"}},
                    "headersToAppend": [{"key": "x-app", "value": {"text": "a"}}],
                    "headersToRemove": ["x-gone"]}}}},
                 {"responseMatch": {"match": {"responseCodeDetails": {"exact": "via_upstream"}},
                    "responseTransformation": {"headerBodyTransform": {"addRequestMetadata": true}}}}]}}]}"#,
            [("E".to_string(), "env".to_string())].into_iter().collect(),
        )
        .unwrap();
        let rule = &config.rules[0];
        let request = |path: &str| vec![(":path".to_string(), path.to_string()), ("x-m".to_string(), "1".to_string())];
        assert!(rule.matcher.matches(&request("/u/x?q=V")));
        assert!(!rule.matcher.matches(&request("/u/x?q=w")));
        let lower = request("/u/x");
        assert_eq!(rule.response_matches.len(), 1);
        let t = rule.request_matches[0].request.clone().unwrap();
        let out = t.apply(Message { headers: lower, is_request: true, ..Message::default() }).unwrap();
        assert_eq!(
            out.ops,
            vec![
                HeaderOp::Set("x-out".into(), "xdenv".into()),
                HeaderOp::Remove("x-gone".into()),
                HeaderOp::Append("x-app".into(), "a".into()),
            ]
        );
        let merge = parse_ok(
            r#"{"transformations": [{"route_transformations": {"request_transformation": {"transformation_template": {
                "mergeJsonKeys": {"jsonKeys": {"keyName": {"tmpl": {"text": "1"}, "overrideEmpty": true}}}}}}}]}"#,
        );
        let t = merge.rules[0].request_matches[0].request.clone().unwrap();
        let out = t.apply(Message { body: b"{}", is_request: true, ..Message::default() }).unwrap();
        assert_eq!(out.body.unwrap(), br#"{"keyName":1}"#);
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let wrap = |template: &str| {
            format!(
                r#"{{"transformations": [{{"route_transformations": {{"request_transformation": {{"transformation_template": {template}}}}}}}]}}"#
            )
        };
        let t = "transformations[0].route_transformations.request_transformation.transformation_template";
        let cases: Vec<(String, String)> = vec![
            (r#"{"transformations": [], "stage": 11}"#.into(), "stage: must be at most 10".into()),
            (r#"{"transformations": [{"match": {"path": 1}}]}"#.into(), "transformations[0].match.path: invalid type".into()),
            (r#"{"transformation": []}"#.into(), "unknown field `transformation`".into()),
            (wrap(r#"{"headers": {"x-a": {"text": "{{ nope"}}}"#), format!("{t}.headers.x-a.text: syntax error")),
            (wrap(r#"{"body": {"text": "{% for %}"}}"#), format!("{t}.body.text: syntax error")),
            (
                wrap(r#"{"extractors": {"e": {"header": "x", "regex": "(a)", "subgroup": 2}}}"#),
                format!("{t}.extractors.e: group 2 requested for regex with only 1 sub groups"),
            ),
            (
                wrap(r#"{"extractors": {"e": {"header": "x", "regex": "a", "mode": "SINGLE_REPLACE"}}}"#),
                format!("{t}.extractors.e: SINGLE_REPLACE mode set but no replacement text provided"),
            ),
            (
                wrap(r#"{"extractors": {"e": {"header": "x", "regex": "(a)", "subgroup": 1, "mode": "REPLACE_ALL", "replacement_text": "b"}}}"#),
                format!("{t}.extractors.e: REPLACE_ALL mode set but subgroup is not 0"),
            ),
            (
                wrap(r#"{"extractors": {"e": {"header": "x", "body": {}, "regex": "a"}}}"#),
                format!("{t}.extractors.e: set exactly one of `header`, `body`, `query`"),
            ),
            (wrap(r#"{"body": {"text": "x"}, "passthrough": {}}"#), format!("{t}: set only one of `body`")),
            (
                wrap(r#"{"merge_json_keys": {"json_keys": {}}, "parse_body_behavior": "DontParse"}"#),
                format!("{t}.merge_json_keys: MergeJsonKeys requires parsing the body"),
            ),
            (
                wrap(r#"{"merge_json_keys": {"json_keys": {}}, "advanced_templates": true}"#),
                format!("{t}.merge_json_keys: MergeJsonKeys is not supported with advanced templates"),
            ),
            (
                wrap(r#"{"merge_json_keys": {"json_keys": {"a.b": {"tmpl": {"text": "1"}}}}}"#),
                format!("{t}.merge_json_keys.json_keys.a.b: a key name cannot contain '.'"),
            ),
            (wrap(r#"{"headers": {"bad name": {"text": "x"}}}"#), format!("{t}.headers.bad name: invalid header name")),
            (wrap(r#"{"headers_to_remove": [":path"]}"#), format!("{t}.headers_to_remove[0]: pseudo-header")),
            (wrap(r#"{"dynamic_metadata_values": [{"key": "k"}]}"#), format!("{t}.dynamic_metadata_values: not supported")),
            (wrap(r#"{"parse_body_behavior": "Sometimes"}"#), format!("{t}.parse_body_behavior: unknown variant")),
            (
                r#"{"transformations": [{"route_transformations": {"transformations": [{}]}}]}"#.into(),
                "transformations[0].route_transformations.transformations[0]: set exactly one of".into(),
            ),
            (r#"{"stage": 11, "transformations": [{}]}"#.into(), "stage: must be at most 10".into()),
            (r#"{"max_body_size": "0", "transformations": [{}]}"#.into(), "max_body_size: must be greater than 0".into()),
            (
                r#"{"transformations": [{"route_transformations": {"request_transformation": {"transformer_config": {}}}}]}"#.into(),
                "transformations[0].route_transformations.request_transformation.transformer_config: not supported".into(),
            ),
            (
                r#"{"transformations": [{"route_transformations": {"request_transformation": {"ai_transformation": {}}}}]}"#.into(),
                "transformations[0].route_transformations.request_transformation.ai_transformation: not supported".into(),
            ),
            (r#"{"matcher": {}, "transformations": [{}]}"#.into(), "matcher: not supported (xDS matcher trees".into()),
            (
                r#"{"transformations": [{"route_transformations": {"transformations": [{"matcher": {}, "request_match": {}}]}}]}"#.into(),
                "transformations[0].route_transformations.transformations[0].matcher: not supported".into(),
            ),
            (wrap(r#"{"string_delimiter": "::"}"#), format!("{t}.string_delimiter: must be a single character")),
            (wrap(r#"{"span_transformer": {"name": {"text": "x"}}}"#), format!("{t}.span_transformer: not supported")),
            (wrap(r#"{"data_sources": {"f": {"filename": "/etc/x"}}}"#), format!("{t}.data_sources.f.filename: not supported")),
            (
                wrap(r#"{"data_sources": {"w": {"watchedDirectory": {}}}}"#),
                format!("{t}.data_sources.w.watched_directory: not supported"),
            ),
            (wrap(r#"{"data_sources": {"e": {"environment_variable": "NOPE"}}}"#), format!("{t}.data_sources.e.environment_variable: \"NOPE\" is not set")),
            (wrap(r#"{"data_sources": {"b": {"inline_bytes": "!"}}}"#), format!("{t}.data_sources.b.inline_bytes: invalid base64")),
            (wrap(r#"{"data_sources": {"x": {"inline_string": "a", "inline_bytes": "YQ=="}}}"#), format!("{t}.data_sources.x: set exactly one of")),
            (wrap(r#"{"data_sources": {"x": {}}}"#), format!("{t}.data_sources.x: set exactly one of")),
            (wrap(r#"{"data_sources": {"x": {"inline": "a"}}}"#), format!("{t}.data_sources.x: unknown field `inline`")),
            (wrap(r#"{"data_sources": {"x": 1}}"#), format!("{t}.data_sources.x: expected a string or a DataSource")),
            // camelCase names are the same fields: errors name them in the proto's form.
            (
                r#"{"transformations": [{"routeTransformations": {"requestTransformation": {"transformationTemplate": {"parseBodyBehavior": "No"}}}}]}"#.into(),
                "transformations[0].routeTransformations.requestTransformation.transformationTemplate.parseBodyBehavior: unknown variant".into(),
            ),
        ];
        for (json, expected) in cases {
            let err = parse_err(&json);
            assert!(err.contains(&expected), "{json}\n{err}\nshould contain {expected}");
        }
    }
}
