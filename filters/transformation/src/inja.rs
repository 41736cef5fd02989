//! Gloo's inja template language, parsed once (at configure time) into a tree that `template.rs` renders.
//!
//! We parse inja ourselves instead of running a Jinja engine: the language is small, and a general engine was a
//! third of transformation.wasm and most of a header template's cost per request. What is understood:
//! - text, `{{ expression }}`, `{% statement %}`, `{# comment #}`, whitespace control (`{{-`, `-}}`, `{%-`, `-%}`)
//!   and line statements (a line starting with `##`, after optional whitespace, is a statement; the whole line,
//!   its newline included, is replaced by it);
//! - statements `if` / `else if` / `else` / `endif`, `for x in xs` / `for k, v in object` / `endfor`,
//!   `set name = expression`, `raw` / `endraw`;
//! - expressions: `null`, `true`, `false`, numbers, strings (`"..."` or `'...'`, JSON escapes), arrays `[..]`,
//!   objects `{"k": v}`, variables, function calls, `.name` and `[index]` after any value, `loop.index` (from 0),
//!   `loop.index1`, `loop.is_first`, `loop.is_last`, and the operators `or`, `and`, `not`, `==`, `!=`, `<`, `<=`,
//!   `>`, `>=`, `in`, `+`, `-`, `*`, `/`, `%`, `^` with inja's precedence.
//!
//! Variable names are inja's: they may contain `-`, `.` and `/` (`{{ my-extractor }}`, `{{ a.b.0 }}`). A name is
//! a path: its first part names a variable (a `set` or loop variable, else a field of the JSON context) and the
//! other parts go down into it. Parts are separated by `.`, or by `/` with Gloo's `advanced_templates`
//! (`pointer_notation`), where `.` is an ordinary name character.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Default)]
pub struct Template {
    pub nodes: Vec<Node>,
    /// Names the template reads that it does not define itself: functions called and first parts of paths.
    pub undeclared: HashSet<String>,
}

#[derive(Debug)]
pub enum Node {
    Text(String),
    Print { expr: Expr, line: u32 },
    If { branches: Vec<(Expr, Vec<Node>)>, otherwise: Vec<Node>, line: u32 },
    For { key: Option<String>, value: String, iterable: Expr, body: Vec<Node>, line: u32 },
    Set { name: String, expr: Expr, line: u32 },
}

/// One step down a path: an object key, or an array index when the part is a number.
#[derive(Debug)]
pub struct Step {
    pub key: String,
    pub index: Option<usize>,
}

impl Step {
    /// A path part: an array index too when it is a number (`items.0`).
    pub fn key(key: &str) -> Self {
        let index = if key.bytes().all(|b| b.is_ascii_digit()) { key.parse().ok() } else { None };
        Step { key: key.to_string(), index }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopField {
    Index,
    Index1,
    IsFirst,
    IsLast,
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
    /// A variable and the steps down into it.
    Path {
        name: String,
        steps: Vec<Step>,
    },
    Loop(LoopField),
    /// `function` is the index the resolver gave.
    Call {
        function: usize,
        args: Vec<Expr>,
    },
    Attr(Box<Expr>, Vec<Step>),
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

/// What the parser needs to know of a function: its index and how many arguments it takes (min, max).
pub type Resolver<'r> = &'r dyn Fn(&str) -> Option<(usize, usize, usize)>;

/// Parses the template `name` (what errors call it). The error is `syntax error: <what> (in <name>:<line>)`.
pub fn parse(name: &str, source: &str, pointer_notation: bool, functions: Resolver<'_>) -> Result<Template, String> {
    parse_source(source, pointer_notation, functions)
        .map_err(|e| format!("syntax error: {} (in {name}:{})", e.message, e.line))
}

fn parse_source(source: &str, pointer_notation: bool, functions: Resolver<'_>) -> Result<Template, SyntaxError> {
    let source = line_statements(source);
    let mut parser = Parser {
        source: &source,
        pos: 0,
        line: 1,
        counted_to: 0,
        trim_next: false,
        pointer_notation,
        functions,
        depth: 0,
        undeclared: HashSet::new(),
        declared: HashSet::new(),
    };
    let (nodes, end) = parser.block()?;
    match end {
        None => Ok(Template { nodes, undeclared: parser.undeclared }),
        Some((end, line)) => Err(syntax(&format!("unexpected {{% {} %}}", end.keyword()), line)),
    }
}

#[derive(Debug)]
struct SyntaxError {
    message: String,
    line: u32,
}

fn syntax(message: &str, line: u32) -> SyntaxError {
    SyntaxError { message: message.to_string(), line }
}

/// Turns inja's `## statement` lines (`##` at the start of the line) into `{% statement %}` blocks, without the
/// line's newline.
fn line_statements(source: &str) -> Cow<'_, str> {
    if !source.contains("##") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    for line in source.split_inclusive('\n') {
        match line.strip_prefix("##") {
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

/// How deep blocks, and brackets and operators in an expression, may nest: the parser and the renderer recurse,
/// and a configuration must not be able to overflow the VM's stack.
const MAX_DEPTH: usize = 64;

struct Parser<'s, 'r> {
    source: &'s str,
    pos: usize,
    /// The line at `counted_to` (tags are met in order, so lines are counted once).
    line: u32,
    counted_to: usize,
    /// A `-}}` / `-%}` / `-#}` asked to drop the spaces and first newline at the start of the next text.
    trim_next: bool,
    pointer_notation: bool,
    functions: Resolver<'r>,
    /// Blocks open around the current position.
    depth: usize,
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
}

/// The nodes of a block and the statement that ended it (with its line), if one did.
type Block = (Vec<Node>, Option<(BlockEnd, u32)>);

impl Parser<'_, '_> {
    fn line_at(&mut self, pos: usize) -> u32 {
        let skipped = self.source.get(self.counted_to..pos).unwrap_or_default();
        self.line += skipped.bytes().filter(|&b| b == b'\n').count() as u32;
        self.counted_to = self.counted_to.max(pos);
        self.line
    }

    /// A nested block, within `MAX_DEPTH`.
    fn nested_block(&mut self, line: u32) -> Result<Block, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(syntax("blocks nested too deeply", line));
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
            let Some(open) = find_open(rest) else {
                self.push_text(&mut nodes, rest, false);
                self.pos = self.source.len();
                return Ok((nodes, None));
            };
            let tag = rest.get(open..open + 2).unwrap_or_default();
            let code_start = self.pos + open + 2;
            let after_open = self.source.get(code_start..).unwrap_or_default();
            let trim_before = after_open.starts_with('-');
            self.push_text(&mut nodes, rest.get(..open).unwrap_or_default(), trim_before);
            let line = self.line_at(self.pos + open);
            if tag == "{#" {
                let end = after_open.find("#}").ok_or_else(|| syntax("unclosed comment", line))?;
                self.trim_next = after_open.get(..end).is_some_and(|c| c.ends_with('-'));
                self.pos = code_start + end + 2;
                continue;
            }
            let close = if tag == "{{" { "}}" } else { "%}" };
            let end = find_close(after_open, close)
                .ok_or_else(|| syntax(&format!("unexpected end of template, expected {close}"), line))?;
            let code = after_open.get(..end).unwrap_or_default();
            self.trim_next = code.ends_with('-');
            let code = code.strip_prefix(['-', '+']).unwrap_or(code);
            let code = code.strip_suffix(['-', '+']).unwrap_or(code);
            self.pos = code_start + end + close.len();
            if tag == "{%" && code.trim() == "raw" {
                let rest = self.source.get(self.pos..).unwrap_or_default();
                let (text, length) = raw_block(rest).ok_or_else(|| syntax("`raw` without `endraw`", line))?;
                if !text.is_empty() {
                    nodes.push(Node::Text(text.to_string()));
                }
                self.pos += length;
                self.trim_next = false;
                continue;
            }
            if tag == "{{" {
                let expr = self.expression(code, line)?;
                nodes.push(Node::Print { expr, line });
                continue;
            }
            if let Some(end) = self.statement(code, line, &mut nodes)? {
                return Ok((nodes, Some((end, line))));
            }
        }
    }

    /// Adds text, trimmed as inja does for whitespace control: a closing `-}}` before it drops its leading spaces
    /// and tabs and one newline; an opening `{{-` after it drops the spaces and tabs that end it when they stand
    /// alone on their line.
    fn push_text(&mut self, nodes: &mut Vec<Node>, text: &str, trim_end: bool) {
        let mut text = text;
        if std::mem::take(&mut self.trim_next) {
            let rest = text.trim_start_matches([' ', '\t']);
            text = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix(['\n', '\r'])).unwrap_or(rest);
        }
        if trim_end {
            let trimmed = text.trim_end_matches([' ', '\t']);
            if trimmed.is_empty() || trimmed.ends_with(['\n', '\r']) {
                text = trimmed;
            }
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_string()));
        }
    }

    /// Parses one statement; statements that end a block are returned instead.
    fn statement(&mut self, code: &str, line: u32, nodes: &mut Vec<Node>) -> Result<Option<BlockEnd>, SyntaxError> {
        let code = code.trim();
        // The keyword needs no space after it: `{% if(x) %}`.
        let (keyword, rest) = code.split_at(code.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(code.len()));
        let rest = rest.trim();
        match keyword {
            "if" => {
                let node = self.if_chain(rest, line)?;
                nodes.push(node);
                Ok(None)
            }
            "for" => {
                let (vars, iterable) =
                    split_at_word(rest, "in").ok_or_else(|| syntax("expected `for x in ...`", line))?;
                let mut names = vars.split(',').map(str::trim);
                let first = names.next().unwrap_or_default();
                let second = names.next();
                if names.next().is_some() || !is_name(first) || second.is_some_and(|s| !is_name(s)) {
                    return Err(syntax(&format!("invalid loop variables `{vars}`"), line));
                }
                let iterable = self.expression(iterable, line)?;
                for name in [Some(first), second].into_iter().flatten() {
                    self.declared.insert(name.to_string());
                }
                let (body, end) = self.nested_block(line)?;
                if !matches!(end, Some((BlockEnd::EndFor, _))) {
                    return Err(syntax("`for` without `endfor`", line));
                }
                let (key, value) = match second {
                    Some(value) => (Some(first.to_string()), value.to_string()),
                    None => (None, first.to_string()),
                };
                nodes.push(Node::For { key, value, iterable, body, line });
                Ok(None)
            }
            "set" => {
                let (name, value) = rest.split_once('=').ok_or_else(|| syntax("expected `set name = ...`", line))?;
                let name = name.trim();
                if !is_name(name) {
                    return Err(syntax(&format!("cannot set `{name}`"), line));
                }
                let expr = self.expression(value, line)?;
                self.declared.insert(name.to_string());
                nodes.push(Node::Set { name: name.to_string(), expr, line });
                Ok(None)
            }
            "else" if rest.is_empty() => Ok(Some(BlockEnd::Else)),
            "else" => match rest.strip_prefix("if").filter(|c| !c.starts_with(|c: char| c.is_ascii_alphanumeric())) {
                Some(condition) => Ok(Some(BlockEnd::ElseIf(self.expression(condition, line)?))),
                None => Err(syntax(&format!("unknown statement `{code}`"), line)),
            },
            "endif" if rest.is_empty() => Ok(Some(BlockEnd::EndIf)),
            "endfor" if rest.is_empty() => Ok(Some(BlockEnd::EndFor)),
            _ => Err(syntax(&format!("unknown statement `{code}`"), line)),
        }
    }

    fn if_chain(&mut self, condition: &str, line: u32) -> Result<Node, SyntaxError> {
        let mut branches = Vec::new();
        let mut condition = self.expression(condition, line)?;
        loop {
            let (body, end) = self.nested_block(line)?;
            branches.push((condition, body));
            match end {
                Some((BlockEnd::ElseIf(next), _)) => condition = next,
                Some((BlockEnd::Else, _)) => {
                    let (otherwise, end) = self.nested_block(line)?;
                    return match end {
                        Some((BlockEnd::EndIf, _)) => Ok(Node::If { branches, otherwise, line }),
                        _ => Err(syntax("`if` without `endif`", line)),
                    };
                }
                Some((BlockEnd::EndIf, _)) => return Ok(Node::If { branches, otherwise: Vec::new(), line }),
                _ => return Err(syntax("`if` without `endif`", line)),
            }
        }
    }

    fn expression(&mut self, code: &str, line: u32) -> Result<Expr, SyntaxError> {
        let tokens = tokenize(code, line)?;
        let mut parser = ExprParser { tokens, next: 0, line, depth: 0, outer: self };
        let expr = parser.or()?;
        match parser.tokens.get(parser.next) {
            None => Ok(expr),
            Some(token) => Err(syntax(&format!("unexpected {token} in `{}`", code.trim()), line)),
        }
    }
}

/// The first `{{`, `{%` or `{#`.
fn find_open(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes.get(i) == Some(&b'{') && matches!(bytes.get(i + 1), Some(b'{') | Some(b'%') | Some(b'#')))
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

/// `code` around the first `word` that stands alone (whitespace on both sides).
fn split_at_word<'c>(code: &'c str, word: &str) -> Option<(&'c str, &'c str)> {
    let mut from = 0;
    loop {
        let at = from + code.get(from..)?.find(word)?;
        let (before, after) = (code.get(..at)?, code.get(at + word.len()..)?);
        if before.ends_with(char::is_whitespace) && after.starts_with(char::is_whitespace) {
            return Some((before, after));
        }
        from = at + word.len();
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
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
            Token::Int(n) => write!(f, "`{n}`"),
            Token::Float(n) => write!(f, "`{n}`"),
            Token::Str(s) => write!(f, "string {s:?}"),
            Token::Name(n) => write!(f, "`{n}`"),
            Token::Symbol(s) => write!(f, "`{s}`"),
        }
    }
}

const SYMBOLS: [&str; 21] =
    ["==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", ":", ".", "<", ">", "+", "-", "*", "/", "%", "^"];

fn tokenize(code: &str, line: u32) -> Result<Vec<Token>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut rest = code;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else { return Ok(tokens) };
        if c.is_ascii_alphabetic() || c == '_' || c == '@' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '-' | '.' | '/')))
                .unwrap_or(rest.len());
            // `a.b- 1`: a trailing `-`, `.` or `/` is an operator, not part of the name.
            let name = rest.get(..end).unwrap_or_default().trim_end_matches(['-', '.', '/']);
            tokens.push(Token::Name(name.to_string()));
            rest = rest.get(name.len()..).unwrap_or_default();
        } else if c.is_ascii_digit() {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let mut end = end;
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
                Err(_) => Token::Float(text.parse().map_err(|_| syntax(&format!("invalid number `{text}`"), line))?),
            };
            tokens.push(token);
            rest = rest.get(end..).unwrap_or_default();
        } else if c == '"' || c == '\'' {
            let (text, len) = string_literal(rest).ok_or_else(|| syntax("invalid or unterminated string", line))?;
            tokens.push(Token::Str(text));
            rest = rest.get(len..).unwrap_or_default();
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            tokens.push(Token::Symbol(symbol));
            rest = rest.get(symbol.len()..).unwrap_or_default();
        } else {
            return Err(syntax(&format!("unexpected character `{c}`"), line));
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
    tokens: Vec<Token>,
    next: usize,
    line: u32,
    /// Brackets and prefix operators open around the current token.
    depth: usize,
    outer: &'p mut Parser<'s, 'r>,
}

impl ExprParser<'_, '_, '_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
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

    fn expect(&mut self, symbol: &str) -> Result<(), SyntaxError> {
        if self.eat_symbol(symbol) {
            return Ok(());
        }
        let found = self.peek().map_or("the end".to_string(), |t| t.to_string());
        Err(syntax(&format!("expected `{symbol}`, found {found}"), self.line))
    }

    /// One nesting level deeper, within `MAX_DEPTH`.
    fn deeper(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(syntax("expression nested too deeply", self.line));
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

    fn binary(op: BinaryOp, left: Expr, right: Expr) -> Expr {
        Expr::Binary(op, Box::new(left), Box::new(right))
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
            self.next += 1;
            self.deeper()?;
            left = Self::binary(op, left, next(self)?);
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
        if self.eat_symbol("^") {
            return Ok(Self::binary(BinaryOp::Pow, base, self.nested(Self::power)?));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.eat_symbol("-") {
            return Ok(Expr::Neg(Box::new(self.nested(Self::unary)?)));
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
                let name = match self.tokens.get(self.next) {
                    Some(Token::Name(n)) => n.clone(),
                    Some(Token::Int(n)) => n.to_string(),
                    _ => return Err(syntax("expected a name after `.`", self.line)),
                };
                self.next += 1;
                expr = Expr::Attr(Box::new(expr), name.split('.').filter(|p| !p.is_empty()).map(Step::key).collect());
            } else if self.eat_symbol("[") {
                let index = self.nested(Self::or)?;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                self.depth = depth;
                return Ok(expr);
            }
        }
    }

    fn list(&mut self, close: &str) -> Result<Vec<Expr>, SyntaxError> {
        let mut items = Vec::new();
        if self.eat_symbol(close) {
            return Ok(items);
        }
        loop {
            items.push(self.nested(Self::or)?);
            if self.eat_symbol(close) {
                return Ok(items);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let Some(token) = self.tokens.get(self.next).cloned() else {
            return Err(syntax("unexpected end of expression", self.line));
        };
        self.next += 1;
        match token {
            Token::Int(n) => Ok(Expr::Literal(Value::from(n))),
            Token::Float(n) => Ok(Expr::Literal(Value::from(n))),
            Token::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Token::Symbol("(") => {
                let inner = self.nested(Self::or)?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Symbol("[") => Ok(Expr::Array(self.list("]")?)),
            Token::Symbol("{") => {
                let mut pairs = Vec::new();
                if self.eat_symbol("}") {
                    return Ok(Expr::Object(pairs));
                }
                loop {
                    let Some(Token::Str(key)) = self.tokens.get(self.next).cloned() else {
                        return Err(syntax("object keys must be strings", self.line));
                    };
                    self.next += 1;
                    self.expect(":")?;
                    pairs.push((key, self.nested(Self::or)?));
                    if self.eat_symbol("}") {
                        return Ok(Expr::Object(pairs));
                    }
                    self.expect(",")?;
                }
            }
            Token::Name(name) => self.name(name),
            Token::Symbol(s) => Err(syntax(&format!("unexpected `{s}`"), self.line)),
        }
    }

    fn name(&mut self, name: String) -> Result<Expr, SyntaxError> {
        match name.as_str() {
            "true" => return Ok(Expr::Literal(Value::Bool(true))),
            "false" => return Ok(Expr::Literal(Value::Bool(false))),
            "null" => return Ok(Expr::Literal(Value::Null)),
            "loop.index" => return Ok(Expr::Loop(LoopField::Index)),
            "loop.index1" => return Ok(Expr::Loop(LoopField::Index1)),
            "loop.is_first" => return Ok(Expr::Loop(LoopField::IsFirst)),
            "loop.is_last" => return Ok(Expr::Loop(LoopField::IsLast)),
            _ => {}
        }
        if self.eat_symbol("(") {
            let (function, min, max) = (self.outer.functions)(&name)
                .ok_or_else(|| syntax(&format!("unknown function `{name}`"), self.line))?;
            let args = self.list(")")?;
            if args.len() < min || args.len() > max {
                let takes = if min == max { min.to_string() } else { format!("{min} to {max}") };
                let message = format!("`{name}`: wrong number of arguments ({} given, takes {takes})", args.len());
                return Err(syntax(&message, self.line));
            }
            self.outer.undeclared.insert(name);
            return Ok(Expr::Call { function, args });
        }
        let separator = if self.outer.pointer_notation { '/' } else { '.' };
        let mut parts = name.split(separator).filter(|p| !p.is_empty());
        let root = parts.next().unwrap_or_default().to_string();
        let steps = parts.map(Step::key).collect();
        if !self.outer.declared.contains(&root) {
            self.outer.undeclared.insert(root.clone());
        }
        Ok(Expr::Path { name: root, steps })
    }
}
