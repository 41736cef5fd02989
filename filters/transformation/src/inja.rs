//! Gloo's inja template language, parsed once (at configure time) into a tree that `template.rs` renders.
//!
//! We parse inja ourselves instead of running a Jinja engine: the language is small, and a general engine was a
//! third of transformation.wasm and most of a header template's cost per request. The reference is inja v3.4.0 as
//! solo-io patched it for envoy-gloo, in the configuration Gloo gives it (no `trim_blocks`, no `lstrip_blocks`, no
//! template files). What is understood:
//! - text, `{{ expression }}`, `{% statement %}`, `{# comment #}` and line statements (`##` at the very start of a
//!   line: the rest of the line, its newline included, is a statement);
//! - whitespace control as inja does it: `-}}` and `-%}` drop all the whitespace after them (newlines included),
//!   `-#}` the spaces and tabs after it and one newline; `{{-`, `{%-` and `{#-` drop the spaces and tabs before
//!   them when nothing else stands between them and the start of their line;
//! - statements `if` / `else if` / `else` / `endif`, `for x in xs` / `for k, v in object` / `endfor`,
//!   `set name = expression` (a dotted name sets a field, creating the objects on its way), `raw` / `endraw`;
//! - expressions: `null`, `true`, `false`, numbers, strings (`"..."` or `'...'`, JSON escapes), arrays `[..]`,
//!   objects `{"k": v}`, variables, function calls, `.name` and `[index]` after any value, `loop` (`index` from 0,
//!   `index1`, `is_first`, `is_last`, `parent`), and the operators `or`, `and`, `not`, `==`, `!=`, `<`, `<=`, `>`,
//!   `>=`, `in`, `+`, `-`, `*`, `/`, `%`, `^` with inja's precedence;
//! - a name that is neither set nor in the data but names a function without arguments calls it, as in inja
//!   (`{{ body }}`, `{{ context }}`).
//!
//! Names are inja's: they start with a letter, `_`, `@`, `$` or `~` and may contain `-`, `.` and `/`
//! (`{{ my-extractor }}`, `{{ a.b.0 }}`). A name is a JSON pointer: its first part names a variable (a `set` or
//! loop variable, else a field of the JSON context) and the other parts go down into it. Parts are separated by
//! `.` or `/`; with Gloo's `advanced_templates` (`pointer_notation`) only by `/`, `.` is an ordinary character
//! and `~0` / `~1` stand for `~` / `/`.
//!
//! Beyond inja 3.4 (where Gloo refuses or misreads them): `raw` blocks, single-quoted strings, `[index]` and
//! `["key"]` subscripts (negative indexes count from the end), `-` before any value, a trailing `-` in a name
//! read as the operator, unknown string escapes kept as written, a one-variable loop over an object (its keys) and
//! a two-variable loop over an array (indexes). `conformance/inja/cases.json` lists every difference with its
//! reason, and `tests/inja_conformance.rs` checks them.
//!
//! Positions are byte offsets into the template; errors give them as inja does, `line:column` from 1:1.

use std::collections::HashSet;

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Default)]
pub struct Template {
    pub nodes: Vec<Node>,
    /// Names the template reads that it does not define itself: functions called and first parts of paths.
    pub undeclared: HashSet<String>,
    /// The template's text, for the line and column of render errors.
    pub source: String,
}

/// A node of the tree; `pos` is where its expression starts (what render errors point at).
#[derive(Debug)]
pub enum Node {
    Text(String),
    Print { expr: Expr, pos: usize },
    If { branches: Vec<(Expr, Vec<Node>)>, otherwise: Vec<Node>, pos: usize },
    For { key: Option<String>, value: String, iterable: Expr, body: Vec<Node>, pos: usize },
    Set { name: String, steps: Vec<Step>, expr: Expr, pos: usize },
}

/// One step down a path: an object key, or an array index when the part is one (`0`, or digits not starting with
/// `0`, as JSON pointers have them).
#[derive(Debug)]
pub struct Step {
    pub key: String,
    pub index: Option<usize>,
}

impl Step {
    pub fn key(key: &str) -> Self {
        let digits = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
        let index = if digits && (key == "0" || !key.starts_with('0')) { key.parse().ok() } else { None };
        Step { key: key.to_string(), index }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

#[derive(Debug)]
pub enum Expr {
    Literal(Value),
    Array(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    /// A variable and the steps down into it; `call` is the function without arguments of the same name, called
    /// when the name is not found (as inja does).
    Path {
        name: String,
        steps: Vec<Step>,
        written: String,
        call: Option<usize>,
        pos: usize,
    },
    /// `function` is the index the resolver gave.
    Call {
        function: usize,
        args: Vec<Expr>,
        pos: usize,
    },
    Attr(Box<Expr>, Vec<Step>),
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>, usize),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
        pos: usize,
    },
}

/// What the parser needs to know of a function: its index and how many arguments it takes (min, max).
pub type Resolver<'r> = &'r dyn Fn(&str) -> Option<(usize, usize, usize)>;

/// Parses the template `name` (what errors call it). The error is
/// `syntax error: [inja.exception.parser_error] (at <line>:<column>) <what> (in <name>)`.
pub fn parse(name: &str, source: &str, pointer_notation: bool, functions: Resolver<'_>) -> Result<Template, String> {
    parse_source(source, pointer_notation, functions).map_err(|e| {
        let (line, column) = line_column(source, e.pos);
        format!("syntax error: [inja.exception.parser_error] (at {line}:{column}) {} (in {name})", e.message)
    })
}

/// inja's position of a byte offset: line and column from 1, the column counted in bytes.
pub fn line_column(source: &str, pos: usize) -> (usize, usize) {
    let before = source.as_bytes().get(..pos).unwrap_or(source.as_bytes());
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len() - before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn parse_source(source: &str, pointer_notation: bool, functions: Resolver<'_>) -> Result<Template, SyntaxError> {
    let mut parser = Parser {
        source,
        pos: 0,
        trim_next: Trim::None,
        pointer_notation,
        functions,
        depth: 0,
        loops: 0,
        undeclared: HashSet::new(),
        declared: HashSet::new(),
    };
    let (nodes, end) = parser.block()?;
    match end {
        None => Ok(Template { nodes, undeclared: parser.undeclared, source: source.to_string() }),
        Some((end, pos)) => Err(syntax(&format!("{} without matching {}", end.keyword(), end.opener()), pos)),
    }
}

#[derive(Debug)]
struct SyntaxError {
    message: String,
    pos: usize,
}

fn syntax(message: &str, pos: usize) -> SyntaxError {
    SyntaxError { message: message.to_string(), pos }
}

/// How deep blocks, and brackets and operators in an expression, may nest: the parser and the renderer recurse,
/// and a configuration must not be able to overflow the VM's stack.
const MAX_DEPTH: usize = 64;

/// What a closing tag asked of the text after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trim {
    None,
    /// `-}}`, `-%}`: all spaces, tabs and newlines.
    All,
    /// `-#}`: spaces and tabs, then one newline.
    Line,
}

struct Parser<'s, 'r> {
    source: &'s str,
    pos: usize,
    trim_next: Trim,
    pointer_notation: bool,
    functions: Resolver<'r>,
    /// Blocks open around the current position.
    depth: usize,
    /// `for` blocks open around the current position (where `loop` is the loop's, not a name to look up).
    loops: usize,
    undeclared: HashSet<String>,
    declared: HashSet<String>,
}

/// A statement that ends a block.
enum BlockEnd {
    Else,
    ElseIf(Expr),
    EndIf,
    EndFor,
}

impl BlockEnd {
    fn keyword(&self) -> &'static str {
        match self {
            BlockEnd::Else => "else",
            BlockEnd::ElseIf(_) => "else if",
            BlockEnd::EndIf => "endif",
            BlockEnd::EndFor => "endfor",
        }
    }

    fn opener(&self) -> &'static str {
        match self {
            BlockEnd::EndFor => "for",
            _ => "if",
        }
    }
}

/// The nodes of a block and the statement that ended it (with its position), if one did.
type Block = (Vec<Node>, Option<(BlockEnd, usize)>);

/// The kinds of tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Expression,
    Statement,
    Comment,
    Line,
}

impl Parser<'_, '_> {
    /// A nested block, within `MAX_DEPTH`.
    fn nested_block(&mut self, pos: usize) -> Result<Block, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(syntax("blocks nested too deeply", pos));
        }
        self.depth += 1;
        let result = self.block();
        self.depth -= 1;
        result
    }

    /// Parses nodes up to the end of the text or a statement that ends a block, which it returns.
    fn block(&mut self) -> Result<Block, SyntaxError> {
        let mut nodes = Vec::new();
        loop {
            let rest = self.source.get(self.pos..).unwrap_or_default();
            let at_line_start = self.pos == 0 || self.source.as_bytes().get(self.pos - 1) == Some(&b'\n');
            let Some((open, tag)) = find_open(rest, at_line_start) else {
                self.push_text(&mut nodes, rest, false);
                self.pos = self.source.len();
                return Ok((nodes, None));
            };
            let tag_pos = self.pos + open;
            let code_start = tag_pos + 2;
            let after_open = self.source.get(code_start..).unwrap_or_default();
            let lstrip = tag != Tag::Line && after_open.starts_with('-');
            self.push_text(&mut nodes, rest.get(..open).unwrap_or_default(), lstrip);
            let (code, code_pos) = match tag {
                Tag::Comment => {
                    let end =
                        after_open.find("#}").ok_or_else(|| syntax("expected comment close, got '<eof>'", tag_pos))?;
                    self.trim_next =
                        if after_open.get(..end).is_some_and(|c| c.ends_with('-')) { Trim::Line } else { Trim::None };
                    self.pos = code_start + end + 2;
                    continue;
                }
                Tag::Line => {
                    let end = after_open.find('\n').unwrap_or(after_open.len());
                    self.pos = (code_start + end + 1).min(self.source.len());
                    (after_open.get(..end).unwrap_or_default(), code_start)
                }
                Tag::Expression | Tag::Statement => {
                    let close = if tag == Tag::Expression { "}}" } else { "%}" };
                    let end = find_close(after_open, close).ok_or_else(|| {
                        syntax(&format!("expected {} close, got '<eof>'", tag.describe()), self.source.len())
                    })?;
                    let code = after_open.get(..end).unwrap_or_default();
                    self.trim_next = if code.ends_with('-') { Trim::All } else { Trim::None };
                    self.pos = code_start + end + close.len();
                    let code = code.strip_suffix('-').unwrap_or(code);
                    let opening = if tag == Tag::Statement { ['-', '+'].as_slice() } else { ['-'].as_slice() };
                    match code.strip_prefix(opening) {
                        Some(stripped) => (stripped, code_start + 1),
                        None => (code, code_start),
                    }
                }
            };
            if tag == Tag::Expression {
                let tokens = tokenize(code, code_pos, self.pointer_notation)?;
                let end = code_pos + code.len();
                let pos = tokens.first().map_or(end, |t| t.1);
                let expr = self.expression(tokens, pos, end)?;
                nodes.push(Node::Print { expr, pos });
                continue;
            }
            if let Some(end) = self.statement(code, code_pos, &mut nodes)? {
                return Ok((nodes, Some(end)));
            }
        }
    }

    /// Adds text, trimmed as the tag before it asked (`trim_next`) and, when the tag after it opens with `-`
    /// (`lstrip`), without the spaces and tabs that end it if they are all its last line has.
    fn push_text(&mut self, nodes: &mut Vec<Node>, text: &str, lstrip: bool) {
        let mut text = text;
        match std::mem::replace(&mut self.trim_next, Trim::None) {
            Trim::None => {}
            Trim::All => text = text.trim_start_matches([' ', '\t', '\n', '\r']),
            Trim::Line => {
                let rest = text.trim_start_matches([' ', '\t']);
                text = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix(['\n', '\r'])).unwrap_or(rest);
            }
        }
        if lstrip {
            let trimmed = text.trim_end_matches([' ', '\t']);
            if trimmed.is_empty() || trimmed.ends_with(['\n', '\r']) {
                text = trimmed;
            }
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_string()));
        }
    }

    /// Parses one statement; statements that end a block are returned instead, with their position.
    fn statement(
        &mut self,
        code: &str,
        code_pos: usize,
        nodes: &mut Vec<Node>,
    ) -> Result<Option<(BlockEnd, usize)>, SyntaxError> {
        let mut tokens = tokenize(code, code_pos, self.pointer_notation)?.into_iter().peekable();
        let Some((Token::Name(keyword), pos)) = tokens.next() else {
            let (found, pos) = tokens_start(code, code_pos);
            return Err(syntax(&format!("expected statement, got '{found}'"), pos));
        };
        let rest: Vec<(Token, usize)> = tokens.collect();
        let end = code_pos + code.len();
        let rest_pos = rest.first().map_or(end, |t| t.1);
        let ends = |end: BlockEnd, rest: &[(Token, usize)]| match rest.first() {
            None => Ok(Some((end, pos))),
            Some((token, at)) => Err(syntax(&format!("expected statement close, got {token}"), *at)),
        };
        match keyword.as_str() {
            "if" => {
                let condition = self.expression(rest, rest_pos, end)?;
                let node = self.if_chain(condition, rest_pos)?;
                nodes.push(node);
                Ok(None)
            }
            "for" => {
                let mut names = Vec::new();
                let mut rest = rest.into_iter();
                loop {
                    match rest.next() {
                        Some((Token::Name(name), _)) if is_name(&name) => names.push(name),
                        Some((token, at)) => return Err(syntax(&format!("expected id, got {token}"), at)),
                        None => return Err(syntax("expected id, got '<eof>'", rest_pos)),
                    }
                    match rest.next() {
                        Some((Token::Symbol(","), _)) if names.len() == 1 => continue,
                        Some((Token::Name(word), _)) if word == "in" => break,
                        Some((token, at)) => return Err(syntax(&format!("expected 'in', got {token}"), at)),
                        None => return Err(syntax("expected 'in', got '<eof>'", rest_pos)),
                    }
                }
                let iterable: Vec<(Token, usize)> = rest.collect();
                let iterable_pos = iterable.first().map_or(rest_pos, |t| t.1);
                let iterable = self.expression(iterable, iterable_pos, end)?;
                let mut names = names.into_iter();
                let (first, second) = (names.next().unwrap_or_default(), names.next());
                for name in [Some(&first), second.as_ref()].into_iter().flatten() {
                    self.declared.insert(name.clone());
                }
                self.loops += 1;
                let block = self.nested_block(pos);
                self.loops -= 1;
                let (body, end) = block?;
                match end {
                    Some((BlockEnd::EndFor, _)) => {}
                    Some((end, at)) => {
                        return Err(syntax(&format!("{} without matching {}", end.keyword(), end.opener()), at))
                    }
                    None => return Err(syntax("unmatched for", self.source.len())),
                }
                let (key, value) = match second {
                    Some(value) => (Some(first), value),
                    None => (None, first),
                };
                nodes.push(Node::For { key, value, iterable, body, pos: iterable_pos });
                Ok(None)
            }
            "set" => {
                let mut rest = rest.into_iter();
                let name = match rest.next() {
                    Some((Token::Name(name), _)) => name,
                    Some((token, at)) => return Err(syntax(&format!("expected variable name, got {token}"), at)),
                    None => return Err(syntax("expected variable name, got '<eof>'", rest_pos)),
                };
                match rest.next() {
                    Some((Token::Symbol("="), _)) => {}
                    Some((token, at)) => return Err(syntax(&format!("expected '=', got {token}"), at)),
                    None => return Err(syntax("expected '=', got '<eof>'", rest_pos)),
                }
                let value: Vec<(Token, usize)> = rest.collect();
                let value_pos = value.first().map_or(rest_pos, |t| t.1);
                let expr = self.expression(value, value_pos, end)?;
                let (root, steps) = self.split_path(&name, rest_pos)?;
                if root.is_empty() {
                    return Err(syntax(&format!("cannot set '{name}'"), rest_pos));
                }
                self.declared.insert(root.clone());
                nodes.push(Node::Set { name: root, steps, expr, pos: value_pos });
                Ok(None)
            }
            "else" => match rest.split_first() {
                None => Ok(Some((BlockEnd::Else, pos))),
                Some(((Token::Name(word), at), condition)) if word == "if" => {
                    let condition_pos = condition.first().map_or(*at, |t| t.1);
                    let condition = self.expression(condition.to_vec(), condition_pos, end)?;
                    Ok(Some((BlockEnd::ElseIf(condition), pos)))
                }
                Some(((token, at), _)) => Err(syntax(&format!("expected statement close, got {token}"), *at)),
            },
            "endif" => ends(BlockEnd::EndIf, &rest),
            "endfor" => ends(BlockEnd::EndFor, &rest),
            "raw" if rest.is_empty() => {
                let rest = self.source.get(self.pos..).unwrap_or_default();
                let (text, length) = raw_block(rest).ok_or_else(|| syntax("raw without matching endraw", pos))?;
                if !text.is_empty() {
                    nodes.push(Node::Text(text.to_string()));
                }
                self.pos += length;
                self.trim_next = Trim::None;
                Ok(None)
            }
            "include" | "extends" | "block" | "endblock" => Err(syntax(
                &format!("'{keyword}' is not supported: Gloo's templates are single, with no files or blocks"),
                pos,
            )),
            _ => Err(syntax(&format!("expected statement, got '{keyword}'"), pos)),
        }
    }

    fn if_chain(&mut self, condition: Expr, pos: usize) -> Result<Node, SyntaxError> {
        let mut branches = Vec::new();
        let mut condition = condition;
        loop {
            let (body, end) = self.nested_block(pos)?;
            branches.push((condition, body));
            match end {
                Some((BlockEnd::ElseIf(next), _)) => condition = next,
                Some((BlockEnd::Else, _)) => {
                    let (otherwise, end) = self.nested_block(pos)?;
                    return match end {
                        Some((BlockEnd::EndIf, _)) => Ok(Node::If { branches, otherwise, pos }),
                        Some((end, at)) => Err(syntax(&format!("{} after else", end.keyword()), at)),
                        None => Err(syntax("unmatched if", self.source.len())),
                    };
                }
                Some((BlockEnd::EndIf, _)) => return Ok(Node::If { branches, otherwise: Vec::new(), pos }),
                Some((BlockEnd::EndFor, at)) => return Err(syntax("endfor without matching for", at)),
                None => return Err(syntax("unmatched if", self.source.len())),
            }
        }
    }

    /// Parses an expression's tokens; `pos` is where it starts, `end` where its tag closes.
    fn expression(&mut self, tokens: Vec<(Token, usize)>, pos: usize, end: usize) -> Result<Expr, SyntaxError> {
        if tokens.is_empty() {
            return Err(syntax("empty expression", pos));
        }
        let mut parser = ExprParser { tokens, next: 0, end, depth: 0, outer: self };
        let expr = parser.or()?;
        match parser.tokens.get(parser.next) {
            None => Ok(expr),
            Some((token, at)) => Err(syntax(&format!("unexpected {token}"), *at)),
        }
    }

    /// A name's first part and the steps after it: parts separated by `.` or `/`, or only by `/` with JSON
    /// pointer escapes under `pointer_notation`.
    fn split_path(&self, name: &str, pos: usize) -> Result<(String, Vec<Step>), SyntaxError> {
        let mut parts = Vec::new();
        if self.pointer_notation {
            for part in name.split('/') {
                parts.push(unescape_pointer(part).ok_or_else(|| syntax(&format!("invalid pointer '{name}'"), pos))?);
            }
        } else {
            parts.extend(name.split(['.', '/']).map(str::to_string));
        }
        let mut parts = parts.into_iter();
        let root = parts.next().unwrap_or_default();
        Ok((root, parts.map(|p| Step::key(&p)).collect()))
    }
}

impl Tag {
    fn describe(self) -> &'static str {
        match self {
            Tag::Expression => "expression",
            Tag::Statement => "statement",
            Tag::Comment => "comment",
            Tag::Line => "line statement",
        }
    }
}

/// A JSON pointer part: `~1` is `/`, `~0` is `~`; any other `~` is invalid.
fn unescape_pointer(part: &str) -> Option<String> {
    if !part.contains('~') {
        return Some(part.to_string());
    }
    let mut out = String::with_capacity(part.len());
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next()? {
                '0' => out.push('~'),
                '1' => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// What a statement starts with, for an error: its first word or character.
fn tokens_start(code: &str, code_pos: usize) -> (String, usize) {
    let trimmed = code.trim_start();
    let pos = code_pos + code.len() - trimmed.len();
    match trimmed.split_whitespace().next() {
        Some(word) => (word.to_string(), pos),
        None => ("eof".to_string(), pos),
    }
}

/// The first tag: `{{`, `{%`, `{#`, or `##` at the start of a line.
fn find_open(text: &str, at_line_start: bool) -> Option<(usize, Tag)> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1)).find_map(|i| {
        let tag = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'{'), Some(b'{')) => Tag::Expression,
            (Some(b'{'), Some(b'%')) => Tag::Statement,
            (Some(b'{'), Some(b'#')) => Tag::Comment,
            (Some(b'#'), Some(b'#')) if (i == 0 && at_line_start) || (i > 0 && bytes.get(i - 1) == Some(&b'\n')) => {
                Tag::Line
            }
            _ => return None,
        };
        Some((i, tag))
    })
}

/// Where a tag's code ends: its closing delimiter outside string literals.
fn find_close(code: &str, close: &str) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while let Some(&b) = bytes.get(i) {
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if code.get(i..).is_some_and(|t| t.starts_with(close)) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// The text of a `{% raw %}` block up to its `{% endraw %}`, and the length of both.
fn raw_block(rest: &str) -> Option<(&str, usize)> {
    let mut from = 0;
    loop {
        let open = from + rest.get(from..)?.find("{%")?;
        let inner = rest.get(open + 2..)?;
        let close = inner.find("%}")?;
        let code = inner.get(..close)?.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if code == "endraw" {
            return Some((rest.get(..open)?, open + 2 + close + 2));
        }
        from = open + 2;
    }
}

/// A loop variable's name: one part, no path.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '@' | '$'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Float(f64),
    Str(String),
    Name(String),
    Symbol(&'static str),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Int(n) => write!(f, "'{n}'"),
            Token::Float(n) => write!(f, "'{n}'"),
            Token::Str(s) => write!(f, "'{}'", Value::from(s.as_str())),
            Token::Name(n) => write!(f, "'{n}'"),
            Token::Symbol(s) => write!(f, "'{s}'"),
        }
    }
}

const SYMBOLS: [&str; 22] =
    ["==", "!=", "<=", ">=", "=", "(", ")", "[", "]", "{", "}", ",", ":", ".", "<", ">", "+", "-", "*", "/", "%", "^"];

/// The tokens of `code` with their positions (`base` is where `code` starts in the template).
fn tokenize(code: &str, base: usize, pointer_notation: bool) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut rest = code;
    loop {
        rest = rest.trim_start();
        let pos = base + code.len() - rest.len();
        let Some(c) = rest.chars().next() else { return Ok(tokens) };
        if c.is_ascii_alphabetic() || matches!(c, '_' | '@' | '$' | '~') {
            let end = rest
                .char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') || (pointer_notation && c == '~'))
                })
                .map_or(rest.len(), |(i, _)| i);
            // `a.b- 1`: a trailing `-`, `.` or `/` is an operator, not part of the name.
            let name = rest.get(..end).unwrap_or_default();
            let name = name.get(..1).unwrap_or_default().to_string()
                + name.get(1..).unwrap_or_default().trim_end_matches(['-', '.', '/']);
            rest = rest.get(name.len()..).unwrap_or_default();
            tokens.push((Token::Name(name), pos));
        } else if c.is_ascii_digit() {
            let mut end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            // An exponent: `1e3`, `2.5E-2`.
            if let Some(exp) = rest.get(end..).filter(|r| r.starts_with(['e', 'E'])) {
                let digits = exp.get(1..).unwrap_or_default();
                let digits = digits.strip_prefix(['+', '-']).unwrap_or(digits);
                if digits.starts_with(|c: char| c.is_ascii_digit()) {
                    end =
                        rest.len() - digits.len() + digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
                }
            }
            let text = rest.get(..end).unwrap_or_default();
            let token = match text.parse::<i64>() {
                Ok(n) => Token::Int(n),
                Err(_) => match text.parse::<f64>() {
                    Ok(f) if f.is_finite() => Token::Float(f),
                    _ => return Err(syntax(&format!("invalid number '{text}'"), pos)),
                },
            };
            tokens.push((token, pos));
            rest = rest.get(end..).unwrap_or_default();
        } else if c == '"' || c == '\'' {
            let (text, len) = string_literal(rest).ok_or_else(|| syntax("invalid or unterminated string", pos))?;
            tokens.push((Token::Str(text), pos));
            rest = rest.get(len..).unwrap_or_default();
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            tokens.push((Token::Symbol(symbol), pos));
            rest = rest.get(symbol.len()..).unwrap_or_default();
        } else {
            return Err(syntax(&format!("unexpected character '{c}'"), pos));
        }
    }
}
/// A quoted string at the start of `code`: its value and its length in the code. JSON's escapes; another
/// escaped character stands for itself with its backslash; a `\u` escape that is not four hex digits, or a missing
/// closing quote, is `None`.
fn string_literal(code: &str) -> Option<(String, usize)> {
    let mut chars = code.char_indices();
    let (_, quote) = chars.next()?;
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let unit = hex4(&mut chars)?;
                    let scalar = if (0xD800..0xDC00).contains(&unit) {
                        // A surrogate pair: `\ud83d\ude00`.
                        let mut ahead = chars.clone();
                        let low = match (ahead.next(), ahead.next()) {
                            (Some((_, '\\')), Some((_, 'u'))) => {
                                hex4(&mut ahead).filter(|l| (0xDC00..0xE000).contains(l))
                            }
                            _ => None,
                        };
                        match low {
                            Some(low) => {
                                chars = ahead;
                                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                            }
                            None => unit,
                        }
                    } else {
                        unit
                    };
                    out.push(char::from_u32(scalar).unwrap_or('\u{fffd}'));
                }
                escaped @ ('"' | '\'' | '\\' | '/') => out.push(escaped),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            c if c == quote => return Some((out, i + c.len_utf8())),
            c => out.push(c),
        }
    }
    None
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Option<u32> {
    let mut value = 0;
    for _ in 0..4 {
        value = value * 16 + chars.next()?.1.to_digit(16)?;
    }
    Some(value)
}

struct ExprParser<'p, 's, 'r> {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// Where the expression ends, for errors there.
    end: usize,
    /// Brackets and prefix operators open around the current token.
    depth: usize,
    outer: &'p mut Parser<'s, 'r>,
}

impl ExprParser<'_, '_, '_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|t| &t.0)
    }

    /// Where the next token is (the end when there is none).
    fn here(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |t| t.1)
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol);
        if found {
            self.next += 1;
        }
        found
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Name(n)) if n == word);
        if found {
            self.next += 1;
        }
        found
    }

    fn expect(&mut self, symbol: &str, what: &str) -> Result<(), SyntaxError> {
        if self.eat_symbol(symbol) {
            return Ok(());
        }
        let found = self.peek().map_or("'<eof>'".to_string(), |t| t.to_string());
        Err(syntax(&format!("expected {what}, got {found}"), self.here()))
    }

    /// One nesting level deeper, within `MAX_DEPTH`.
    fn deeper(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(syntax("expression nested too deeply", self.here()));
        }
        Ok(())
    }

    /// Parses with `part` one nesting level deeper.
    fn nested(&mut self, part: fn(&mut Self) -> Result<Expr, SyntaxError>) -> Result<Expr, SyntaxError> {
        self.deeper()?;
        let result = part(self);
        self.depth -= 1;
        result
    }

    /// One left-associative precedence level: `next (operator next)*`. A chain of operators builds a tree as
    /// deep as it is long, so each operator counts toward `MAX_DEPTH`.
    fn level(
        &mut self,
        next: fn(&mut Self) -> Result<Expr, SyntaxError>,
        operator: fn(&Token) -> Option<BinaryOp>,
    ) -> Result<Expr, SyntaxError> {
        let depth = self.depth;
        let mut left = next(self)?;
        while let Some(op) = self.peek().and_then(operator) {
            let pos = self.here();
            self.next += 1;
            self.deeper()?;
            let right = next(self)?;
            left = Expr::Binary { op, left: Box::new(left), right: Box::new(right), pos };
        }
        self.depth = depth;
        Ok(left)
    }

    /// inja's precedence, loosest first: `and` `or` (one level); comparisons and `in`; `+` `-`; `*` `/` `%`
    /// and prefix `not`; `^` (right-associative); prefix `-`; calls, `.name` and `[index]`.
    fn or(&mut self) -> Result<Expr, SyntaxError> {
        self.level(Self::comparison, |t| match t {
            Token::Name(n) if n == "and" => Some(BinaryOp::And),
            Token::Name(n) if n == "or" => Some(BinaryOp::Or),
            _ => None,
        })
    }

    fn comparison(&mut self) -> Result<Expr, SyntaxError> {
        self.level(Self::sum, |t| match t {
            Token::Symbol("==") => Some(BinaryOp::Eq),
            Token::Symbol("!=") => Some(BinaryOp::Ne),
            Token::Symbol("<") => Some(BinaryOp::Lt),
            Token::Symbol("<=") => Some(BinaryOp::Le),
            Token::Symbol(">") => Some(BinaryOp::Gt),
            Token::Symbol(">=") => Some(BinaryOp::Ge),
            Token::Name(n) if n == "in" => Some(BinaryOp::In),
            _ => None,
        })
    }

    fn sum(&mut self) -> Result<Expr, SyntaxError> {
        self.level(Self::product, |t| match t {
            Token::Symbol("+") => Some(BinaryOp::Add),
            Token::Symbol("-") => Some(BinaryOp::Sub),
            _ => None,
        })
    }

    fn product(&mut self) -> Result<Expr, SyntaxError> {
        self.level(Self::not, |t| match t {
            Token::Symbol("*") => Some(BinaryOp::Mul),
            Token::Symbol("/") => Some(BinaryOp::Div),
            Token::Symbol("%") => Some(BinaryOp::Rem),
            _ => None,
        })
    }

    fn not(&mut self) -> Result<Expr, SyntaxError> {
        if self.eat_word("not") {
            return Ok(Expr::Not(Box::new(self.nested(Self::not)?)));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr, SyntaxError> {
        let base = self.unary()?;
        let pos = self.here();
        if self.eat_symbol("^") {
            let exponent = self.nested(Self::power)?;
            return Ok(Expr::Binary { op: BinaryOp::Pow, left: Box::new(base), right: Box::new(exponent), pos });
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.here();
        if self.eat_symbol("-") {
            return Ok(Expr::Neg(Box::new(self.nested(Self::unary)?), pos));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let depth = self.depth;
        let mut expr = self.primary()?;
        loop {
            if matches!(self.peek(), Some(Token::Symbol(".")) | Some(Token::Symbol("["))) {
                self.deeper()?;
            }
            if self.eat_symbol(".") {
                let name = match self.peek() {
                    Some(Token::Name(n)) => n.clone(),
                    Some(Token::Int(n)) => n.to_string(),
                    _ => return Err(syntax("expected a name after '.'", self.here())),
                };
                let pos = self.here();
                self.next += 1;
                let (first, steps) = self.outer.split_path(&name, pos)?;
                let steps = std::iter::once(Step::key(&first)).chain(steps).collect();
                expr = Expr::Attr(Box::new(expr), steps);
            } else if self.eat_symbol("[") {
                let index = self.nested(Self::or)?;
                self.expect("]", "']'")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                self.depth = depth;
                return Ok(expr);
            }
        }
    }

    fn list(&mut self, close: &'static str) -> Result<Vec<Expr>, SyntaxError> {
        let mut items = Vec::new();
        if self.eat_symbol(close) {
            return Ok(items);
        }
        loop {
            items.push(self.nested(Self::or)?);
            if self.eat_symbol(close) {
                return Ok(items);
            }
            self.expect(",", &format!("',' or '{close}'"))?;
        }
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.here();
        let Some(token) = self.peek().cloned() else {
            return Err(syntax("too few arguments", pos));
        };
        self.next += 1;
        match token {
            Token::Int(n) => Ok(Expr::Literal(Value::from(n))),
            Token::Float(n) => Ok(Expr::Literal(Value::from(n))),
            Token::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Token::Symbol("(") => {
                if self.eat_symbol(")") {
                    return Err(syntax("empty expression in parentheses", pos));
                }
                let inner = self.nested(Self::or)?;
                self.expect(")", "right parenthesis")?;
                Ok(inner)
            }
            Token::Symbol("[") => Ok(Expr::Array(self.list("]")?)),
            Token::Symbol("{") => {
                let mut pairs = Vec::new();
                if self.eat_symbol("}") {
                    return Ok(Expr::Object(pairs));
                }
                loop {
                    let Some(Token::Str(key)) = self.peek().cloned() else {
                        return Err(syntax("object keys must be strings", self.here()));
                    };
                    self.next += 1;
                    self.expect(":", "':'")?;
                    pairs.push((key, self.nested(Self::or)?));
                    if self.eat_symbol("}") {
                        return Ok(Expr::Object(pairs));
                    }
                    self.expect(",", "',' or '}'")?;
                }
            }
            Token::Name(name) if name == "and" || name == "or" || name == "in" => {
                Err(syntax("too few arguments", self.end))
            }
            Token::Name(name) => self.name(name, pos),
            // An operator where an operand should be: inja's operators then lack one, which it reports at the end.
            Token::Symbol("+" | "*" | "/" | "%" | "^" | "==" | "!=" | "<" | "<=" | ">" | ">=") => {
                Err(syntax("too few arguments", self.end))
            }
            Token::Symbol(s) => Err(syntax(&format!("unexpected '{s}'"), pos)),
        }
    }

    fn name(&mut self, name: String, pos: usize) -> Result<Expr, SyntaxError> {
        match name.as_str() {
            "true" => return Ok(Expr::Literal(Value::Bool(true))),
            "false" => return Ok(Expr::Literal(Value::Bool(false))),
            "null" => return Ok(Expr::Literal(Value::Null)),
            _ => {}
        }
        if self.eat_symbol("(") {
            let args = self.list(")")?;
            // inja reports a function it does not know at the closing parenthesis.
            let close = self.tokens.get(self.next.saturating_sub(1)).map_or(pos, |t| t.1);
            let (function, min, max) =
                (self.outer.functions)(&name).ok_or_else(|| syntax(&format!("unknown function {name}"), close))?;
            if args.len() < min || args.len() > max {
                let takes = if min == max { min.to_string() } else { format!("{min} to {max}") };
                let message = format!("unknown function {name} with {} arguments (it takes {takes})", args.len());
                return Err(syntax(&message, close));
            }
            self.outer.undeclared.insert(name);
            return Ok(Expr::Call { function, args, pos });
        }
        let (root, steps) = self.outer.split_path(&name, pos)?;
        // A function without arguments answers for a name the data does not have.
        let call = match (self.outer.functions)(&name) {
            Some((function, 0, _)) => Some(function),
            _ => None,
        };
        let is_loop = root == "loop" && self.outer.loops > 0;
        if !is_loop && !self.outer.declared.contains(&root) {
            self.outer.undeclared.insert(root.clone());
        }
        Ok(Expr::Path { name: root, steps, written: name, call, pos })
    }
}
