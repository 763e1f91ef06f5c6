//! The pest-parsed mini-languages inside string values: step and block
//! selectors, branch selectors, step masks and table rows.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;
use pest_derive::Parser;
use tcc_core::Branch;

use crate::ast::{
    BranchItem, BranchSelector, Cell, CmpOp, IndexKind, Mask, SelNode, Selector, TableRow,
};
use crate::diag::Diagnostic;
use crate::span::{Span, Spanned};

#[derive(Parser)]
#[grammar = "selector.pest"]
struct SelParser;

/// Where the text of a string value sits in the file.
///
/// When the string is written without escapes, offsets in its value map
/// one to one onto the file and errors point at the exact character;
/// otherwise they point at the whole string.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin {
    base: Option<usize>,
    whole: Span,
}

impl Origin {
    pub(crate) fn exact(base: usize, whole: Span) -> Origin {
        Origin {
            base: Some(base),
            whole,
        }
    }

    pub(crate) fn whole(whole: Span) -> Origin {
        Origin { base: None, whole }
    }

    fn span(&self, start: usize, end: usize) -> Span {
        match self.base {
            Some(b) => Span::new(b + start, b + end),
            None => self.whole,
        }
    }

    fn of(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        self.span(s.start(), s.end())
    }
}

type Res<T> = Result<T, Diagnostic>;

fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of text",
        Rule::kw_except => "`except`",
        Rule::kw_and => "`and`",
        Rule::kw_from => "`from`",
        Rule::comma => "`,`",
        Rule::rparen => "`)`",
        Rule::number => "a number",
        Rule::int | Rule::range_end => "a number",
        Rule::eq_op => "`==` or `!=`",
        Rule::cmp_op => "a comparison (`<`, `<=`, `>`, `>=`, `==`, `!=`)",
        Rule::range_incl => "`..=`",
        Rule::range_excl => "`..`",
        Rule::branch_item | Rule::branch_include => "a branch (attn, cross, mlp or all)",
        Rule::branch_except => "`except`",
        Rule::bit | Rule::mask_bits => "`0` or `1`",
        Rule::mask_preset => "a mask preset name",
        Rule::cell => "`1`, `0` or `.`",
        _ => "a selector (a number, a range like `0..10`, `every N`, `all`, ...)",
    }
}

fn pest_error(e: pest::error::Error<Rule>, text: &str, origin: Origin, what: &str) -> Diagnostic {
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the offending word, or at the end when the text stopped early.
    let end = if start == end {
        let rest = &text[start..];
        let len = rest
            .char_indices()
            .find(|&(_, c)| c.is_whitespace() || c == ',' || c == ')')
            .map_or(rest.len(), |(i, _)| i);
        start + len.max(rest.chars().next().map_or(0, char::len_utf8))
    } else {
        end
    };
    let label = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut wanted: Vec<&str> = Vec::new();
            for &r in positives {
                let d = describe(r);
                if !wanted.contains(&d) {
                    wanted.push(d);
                }
            }
            format!("expected {}", join_or(&wanted))
        }
        ErrorVariant::ParsingError { .. } => "unexpected text".to_string(),
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let found = &text[start..end.min(text.len())];
    let message = if found.is_empty() {
        format!("{what} ends too early")
    } else {
        format!("invalid {what}: unexpected `{found}`")
    };
    Diagnostic::new(message, origin.span(start, end.min(text.len())), label)
}

/// "a", "a or b", "a, b or c"
pub(crate) fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn parse_u64(pair: &Pair<'_, Rule>, origin: Origin) -> Res<u64> {
    pair.as_str().parse::<u64>().map_err(|_| {
        Diagnostic::new(
            "number too large",
            origin.of(pair),
            format!("at most {}", u64::MAX),
        )
    })
}

/// How deeply a selector may nest (parentheses and chained `except`s):
/// far more than anyone writes, and little enough that no recursion over
/// the tree can exhaust the stack.
const MAX_NESTING: usize = 32;

/// Parses a step or block selector.
pub(crate) fn parse_selector(text: &str, origin: Origin, kind: IndexKind) -> Res<Selector> {
    let what = match kind {
        IndexKind::Step => "step selector",
        IndexKind::Block => "block selector",
    };
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        deepest = deepest.max(depth);
    }
    if deepest + text.matches("except").count() > MAX_NESTING {
        return Err(Diagnostic::new(
            format!("{what} nested too deeply"),
            origin.span(0, text.len()),
            format!("at most {MAX_NESTING} levels of parentheses and `except`"),
        ));
    }
    let mut pairs =
        SelParser::parse(Rule::selector, text).map_err(|e| pest_error(e, text, origin, what))?;
    let top = pairs.next().expect("selector rule matched");
    let expr = top.into_inner().next().expect("selector holds sel_expr");
    build_expr(expr, origin, kind)
}

fn build_expr(pair: Pair<'_, Rule>, origin: Origin, kind: IndexKind) -> Res<Selector> {
    let mut inner = pair.into_inner();
    let head = inner.next().expect("sel_expr is not empty");
    let mut acc = match head.as_rule() {
        Rule::lead_except => {
            let mut it = head.into_inner();
            let kw = it.next().expect("except keyword");
            let all = Spanned::new(SelNode::All, origin.of(&kw));
            let removed = build_union(it.next().expect("except operand"), origin, kind)?;
            except(all, removed)
        }
        _ => build_union(head, origin, kind)?,
    };
    while let Some(kw) = inner.next() {
        debug_assert_eq!(kw.as_rule(), Rule::kw_except);
        let removed = build_union(inner.next().expect("except operand"), origin, kind)?;
        acc = except(acc, removed);
    }
    Ok(acc)
}

fn except(base: Selector, removed: Selector) -> Selector {
    let span = base.span.to(removed.span);
    Spanned::new(
        SelNode::Except {
            base: Box::new(base),
            removed: Box::new(removed),
        },
        span,
    )
}

fn build_union(pair: Pair<'_, Rule>, origin: Origin, kind: IndexKind) -> Res<Selector> {
    let span = origin.of(&pair);
    let mut items = Vec::new();
    for p in pair.into_inner().filter(|p| p.as_rule() == Rule::inter) {
        items.push(build_inter(p, origin, kind)?);
    }
    Ok(if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        Spanned::new(SelNode::Union(items), span)
    })
}

fn build_inter(pair: Pair<'_, Rule>, origin: Origin, kind: IndexKind) -> Res<Selector> {
    let span = origin.of(&pair);
    let mut items = Vec::new();
    for p in pair.into_inner().filter(|p| p.as_rule() != Rule::kw_and) {
        items.push(build_atom(p, origin, kind)?);
    }
    Ok(if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        Spanned::new(SelNode::Intersect(items), span)
    })
}

fn build_atom(pair: Pair<'_, Rule>, origin: Origin, kind: IndexKind) -> Res<Selector> {
    let span = origin.of(&pair);
    let node = match pair.as_rule() {
        Rule::group => {
            let expr = pair
                .into_inner()
                .find(|p| p.as_rule() == Rule::sel_expr)
                .expect("group holds an expression");
            return build_expr(expr, origin, kind);
        }
        Rule::kw_all => SelNode::All,
        Rule::kw_none => SelNode::None,
        Rule::int => SelNode::Index(parse_u64(&pair, origin)?),
        Rule::every => {
            let mut it = pair.into_inner().skip(1);
            let num = it.next().expect("every has a number");
            let n: f64 = num.as_str().parse().map_err(|_| {
                Diagnostic::new(
                    "invalid number",
                    origin.of(&num),
                    "expected a decimal number",
                )
            })?;
            if !n.is_finite() {
                return Err(Diagnostic::new(
                    "number too large",
                    origin.of(&num),
                    "not a finite number",
                ));
            }
            let from = match it.nth(1) {
                Some(p) => Some(parse_u64(&p, origin)?),
                None => None,
            };
            SelNode::Every { n, from }
        }
        Rule::first | Rule::last => {
            let rule = pair.as_rule();
            let n = parse_u64(&pair.into_inner().nth(1).expect("count"), origin)?;
            if rule == Rule::first {
                SelNode::First(n)
            } else {
                SelNode::Last(n)
            }
        }
        Rule::compare => {
            let mut it = pair.into_inner();
            check_var(&it.next().expect("variable"), origin, kind)?;
            let op = match it.next().expect("operator").as_str() {
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                ">=" => CmpOp::Ge,
                "==" => CmpOp::Eq,
                _ => CmpOp::Ne,
            };
            let value = parse_u64(&it.next().expect("value"), origin)?;
            SelNode::Compare { op, value }
        }
        Rule::modulo => {
            let mut it = pair.into_inner();
            check_var(&it.next().expect("variable"), origin, kind)?;
            let modulus = parse_u64(&it.next().expect("modulus"), origin)?;
            let equal = it.next().expect("operator").as_str() == "==";
            let remainder = parse_u64(&it.next().expect("remainder"), origin)?;
            SelNode::Modulo {
                modulus,
                remainder,
                equal,
            }
        }
        Rule::range => {
            let (mut start, mut end, mut inclusive) = (None, None, false);
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::range_start => {
                        start = Some(parse_u64(&p.into_inner().next().expect("int"), origin)?)
                    }
                    Rule::range_end => {
                        end = Some(parse_u64(&p.into_inner().next().expect("int"), origin)?)
                    }
                    Rule::range_incl => inclusive = true,
                    _ => {}
                }
            }
            SelNode::Range {
                start,
                end,
                inclusive,
            }
        }
        r => unreachable!("atom rule {r:?}"),
    };
    Ok(Spanned::new(node, span))
}

fn check_var(pair: &Pair<'_, Rule>, origin: Origin, kind: IndexKind) -> Res<()> {
    if pair.as_str() == kind.var() {
        return Ok(());
    }
    let what = match kind {
        IndexKind::Step => "step",
        IndexKind::Block => "block",
    };
    Err(Diagnostic::new(
        format!("`{}` in a {what} selector", pair.as_str()),
        origin.of(pair),
        format!("expected `{}`", kind.var()),
    )
    .with_help(format!(
        "predicates of a {what} selector test the {what} index, written `{}`",
        kind.var()
    )))
}

/// Parses a branch selector: `attn, mlp`, `all`, `all except cross`, `except cross`.
pub(crate) fn parse_branches(text: &str, origin: Origin) -> Res<BranchSelector> {
    let what = "branch selector";
    let mut pairs =
        SelParser::parse(Rule::branches, text).map_err(|e| pest_error(e, text, origin, what))?;
    let top = pairs.next().expect("branches rule matched");
    let mut include = Vec::new();
    let mut except = Vec::new();
    for part in top.into_inner() {
        let target = match part.as_rule() {
            Rule::branch_include => &mut include,
            Rule::branch_except => &mut except,
            _ => continue,
        };
        for item in part
            .into_inner()
            .filter(|p| p.as_rule() == Rule::branch_item)
        {
            let name = item.as_str();
            let value = if name == "all" {
                BranchItem::All
            } else {
                BranchItem::One(Branch::from_name(name).ok_or_else(|| {
                    Diagnostic::new(
                        format!("unknown branch `{name}`"),
                        origin.of(&item),
                        "expected attn, cross, mlp or all",
                    )
                })?)
            };
            target.push(Spanned::new(value, origin.of(&item)));
        }
    }
    if include.is_empty() {
        // `except x` on its own means `all except x`.
        include.push(Spanned::new(BranchItem::All, Span::at(origin.whole.start)));
    }
    Ok(BranchSelector { include, except })
}

/// Parses a step mask: digits `0`/`1` (spaces, `_` and `|` may separate
/// them), or a preset name.
pub(crate) fn parse_mask(text: &str, origin: Origin) -> Res<Mask> {
    let mut pairs =
        SelParser::parse(Rule::mask, text).map_err(|e| pest_error(e, text, origin, "step mask"))?;
    let top = pairs.next().expect("mask rule matched");
    let body = top
        .into_inner()
        .find(|p| matches!(p.as_rule(), Rule::mask_bits | Rule::mask_preset))
        .expect("mask holds bits or a preset");
    Ok(match body.as_rule() {
        Rule::mask_bits => Mask::Bits(
            body.into_inner()
                .map(|b| Spanned::new(b.as_str() == "1", origin.of(&b)))
                .collect(),
        ),
        _ => Mask::Preset(Spanned::new(body.as_str().to_string(), origin.of(&body))),
    })
}

/// Parses one table row: cells `1` (compute), `0` (reuse), `.` (keep),
/// optionally separated by spaces, `_` or `|`.
pub(crate) fn parse_row(text: &str, origin: Origin) -> Res<TableRow> {
    let mut pairs =
        SelParser::parse(Rule::row, text).map_err(|e| pest_error(e, text, origin, "table row"))?;
    let top = pairs.next().expect("row rule matched");
    let cells = top
        .into_inner()
        .filter(|p| p.as_rule() == Rule::cell)
        .map(|c| {
            let cell = match c.as_str() {
                "1" => Cell::Compute,
                "0" => Cell::Reuse,
                _ => Cell::Keep,
            };
            Spanned::new(cell, origin.of(&c))
        })
        .collect();
    Ok(TableRow { cells })
}
