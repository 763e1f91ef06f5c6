//! The canonical printer: fixed section and key order, one `[[cache]]`
//! header per rule, selectors with the fewest parentheses that keep their
//! structure.

use std::fmt::Write as _;

use crate::ast::*;

pub(crate) fn print_schedule(s: &Schedule) -> String {
    let mut out = String::new();
    out += "[model]\n";
    let m = &s.model.value;
    match &m.source.value {
        ModelSource::Preset(name) => kv(&mut out, "name", &quote(name)),
        ModelSource::Path(path) => kv(&mut out, "path", &quote(path)),
    }
    if let Some(w) = &m.weights {
        kv(&mut out, "weights", &quote(w));
    }

    if let Some(sampler) = &s.sampler {
        let p = &sampler.value;
        out += "\n[sampler]\n";
        if let Some(k) = &p.kind {
            kv(&mut out, "kind", &quote(k.value.as_str()));
        }
        if let Some(n) = &p.steps {
            kv(&mut out, "steps", &n.to_string());
        }
        if let Some(g) = &p.guidance {
            kv(&mut out, "guidance", &float(g.value));
        }
        if let Some(e) = &p.eta {
            kv(&mut out, "eta", &float(e.value));
        }
        if let Some(o) = &p.cfg_order {
            kv(&mut out, "cfg-order", &quote(o.value.as_str()));
        }
        if let Some(g) = &p.guided_channels {
            match g.value {
                GuidedChannels::All => kv(&mut out, "guided-channels", &quote("all")),
                GuidedChannels::First(n) => kv(&mut out, "guided-channels", &n.to_string()),
            }
        }
    }

    for rule in &s.cache {
        let r = &rule.value;
        out += "\n[[cache]]\n";
        let key = r.action.value.key();
        match &r.action.value {
            RuleAction::Compute(sel)
            | RuleAction::Reuse(sel)
            | RuleAction::Refresh(sel)
            | RuleAction::ReuseDelta(sel)
            | RuleAction::Partial(sel) => {
                kv(&mut out, key, &quote(&selector(sel, IndexKind::Step)))
            }
            RuleAction::Mask(Mask::Bits(bits)) => {
                let text: String = bits
                    .iter()
                    .map(|b| if b.value { '1' } else { '0' })
                    .collect();
                kv(&mut out, key, &quote(&text));
            }
            RuleAction::Mask(Mask::Preset(name)) => kv(&mut out, key, &quote(name)),
            RuleAction::Table(rows) => {
                out += "table = [\n";
                for row in rows {
                    let text: String = row.value.cells.iter().map(|c| c.value.symbol()).collect();
                    let _ = writeln!(out, "    {},", quote(&text));
                }
                out += "]\n";
            }
        }
        if let Some(b) = &r.blocks {
            kv(&mut out, "blocks", &quote(&selector(b, IndexKind::Block)));
        }
        if let Some(b) = &r.branches {
            kv(&mut out, "branches", &quote(&branches(&b.value)));
        }
        if let Some(x) = &r.fresh_ratio {
            kv(&mut out, "fresh-ratio", &float(x.value));
        }
        if let Some(x) = &r.ratio_schedule {
            kv(&mut out, "ratio-schedule", &quote(x.value.as_str()));
        }
    }

    if let Some(limits) = &s.limits {
        let l = &limits.value;
        out += "\n[limits]\n";
        for (key, v) in [
            ("warmup", &l.warmup),
            ("cutoff", &l.cutoff),
            ("max-reuse", &l.max_reuse),
        ] {
            if let Some(v) = v {
                kv(&mut out, key, &v.to_string());
            }
        }
    }

    if let Some(toca) = &s.toca {
        let t = &toca.value;
        out += "\n[toca]\n";
        if let Some(x) = &t.score {
            kv(&mut out, "score", &quote(x.value.as_str()));
        }
        for (key, x) in [
            ("fresh-weight", &t.fresh_weight),
            ("spread-bonus", &t.spread_bonus),
            ("interval", &t.interval),
        ] {
            if let Some(x) = x {
                kv(&mut out, key, &float(x.value));
            }
        }
        if let Some(n) = &t.seed {
            kv(&mut out, "seed", &n.to_string());
        }
    }

    if let Some(dynamic) = &s.dynamic {
        let d = &dynamic.value;
        out += "\n[dynamic]\n";
        if let Some(p) = &d.policy {
            kv(&mut out, "policy", &quote(p.value.as_str()));
        }
        if let Some(t) = &d.threshold {
            kv(&mut out, "threshold", &float(t.value));
        }
        for (key, v) in [
            ("warmup", &d.warmup),
            ("cutoff", &d.cutoff),
            ("max-reuse", &d.max_reuse),
        ] {
            if let Some(v) = v {
                kv(&mut out, key, &v.to_string());
            }
        }
        if let Some(list) = &d.rescale {
            let items: Vec<String> = list.value.iter().map(|x| float(x.value)).collect();
            kv(&mut out, "rescale", &format!("[{}]", items.join(", ")));
        }
    }

    if let Some(cal) = &s.calibration {
        let c = &cal.value;
        out += "\n[calibration]\n";
        if let Some(m) = &c.method {
            kv(&mut out, "method", &quote(m.value.as_str()));
        }
        if let Some(m) = &c.mode {
            kv(&mut out, "mode", &quote(m.value.as_str()));
        }
        if let Some(sel) = &c.steps {
            kv(&mut out, "steps", &quote(&selector(sel, IndexKind::Step)));
        }
        if let Some(a) = &c.alpha {
            kv(&mut out, "alpha", &float(a.value));
        }
        if let Some(p) = &c.prior {
            kv(&mut out, "prior", &quote(p.value.as_str()));
        }
        if let Some(p) = &c.pooling {
            kv(&mut out, "pooling", &quote(p.value.as_str()));
        }
        if let Some(h) = &c.pooled_half {
            kv(&mut out, "pooled-half", &quote(h.value.as_str()));
        }
        if let Some(n) = &c.samples {
            kv(&mut out, "samples", &n.to_string());
        }
        if let Some(n) = &c.seed {
            kv(&mut out, "seed", &n.to_string());
        }
        if let Some(s) = &c.select {
            kv(&mut out, "select", &quote(s.value.as_str()));
        }
        if let Some(list) = &c.candidates {
            let items: Vec<String> = list.value.iter().map(|k| quote(k.value.as_str())).collect();
            kv(&mut out, "candidates", &format!("[{}]", items.join(", ")));
        }
        for (key, list) in [("alphas", &c.alphas), ("ridge", &c.ridge)] {
            if let Some(list) = list {
                let items: Vec<String> = list.value.iter().map(|x| float(x.value)).collect();
                kv(&mut out, key, &format!("[{}]", items.join(", ")));
            }
        }
        for (key, n) in [
            ("rank", &c.rank),
            ("validation-samples", &c.validation_samples),
            ("validation-seed", &c.validation_seed),
        ] {
            if let Some(n) = n {
                kv(&mut out, key, &n.to_string());
            }
        }
    }
    out
}

fn kv(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{key} = {value}");
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\t' => out += "\\t",
            '\r' => out += "\\r",
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML float that reads back as the same f64.
fn float(x: f64) -> String {
    if x.is_nan() {
        "nan".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        // `{:?}` is the shortest text that reads back exactly, and always
        // has a `.` or an exponent, so TOML reads a float.
        format!("{x:?}")
    }
}

/// Binding strength, loosest first.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Prec {
    Except,
    Union,
    Intersect,
    Atom,
}

fn prec(node: &SelNode) -> Prec {
    match node {
        SelNode::Except { .. } => Prec::Except,
        SelNode::Union(_) => Prec::Union,
        SelNode::Intersect(_) => Prec::Intersect,
        _ => Prec::Atom,
    }
}

/// Prints a selector in canonical form.
pub(crate) fn selector(sel: &Selector, kind: IndexKind) -> String {
    let mut out = String::new();
    write_sel(&mut out, &sel.value, kind);
    out
}

/// Writes `node` where an operand binding at least as tightly as `min` is
/// expected, in parentheses when it binds more loosely.
fn write_operand(out: &mut String, node: &SelNode, kind: IndexKind, min: Prec) {
    let needs = prec(node) < min;
    if needs {
        out.push('(');
    }
    write_sel(out, node, kind);
    if needs {
        out.push(')');
    }
}

fn write_sel(out: &mut String, node: &SelNode, kind: IndexKind) {
    let var = kind.var();
    match node {
        SelNode::All => out.push_str("all"),
        SelNode::None => out.push_str("none"),
        SelNode::Index(i) => {
            let _ = write!(out, "{i}");
        }
        SelNode::Range {
            start,
            end,
            inclusive,
        } => {
            if let Some(s) = start {
                let _ = write!(out, "{s}");
            }
            out.push_str(if *inclusive { "..=" } else { ".." });
            if let Some(e) = end {
                let _ = write!(out, "{e}");
            }
        }
        SelNode::Every { n, from } => {
            let _ = write!(out, "every {n}");
            if let Some(f) = from {
                let _ = write!(out, " from {f}");
            }
        }
        SelNode::First(n) => {
            let _ = write!(out, "first {n}");
        }
        SelNode::Last(n) => {
            let _ = write!(out, "last {n}");
        }
        SelNode::Compare { op, value } => {
            let _ = write!(out, "{var} {} {value}", op.symbol());
        }
        SelNode::Modulo {
            modulus,
            remainder,
            equal,
        } => {
            let op = if *equal { "==" } else { "!=" };
            let _ = write!(out, "{var} % {modulus} {op} {remainder}");
        }
        SelNode::Union(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_operand(out, &item.value, kind, Prec::Intersect);
            }
        }
        SelNode::Intersect(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" and ");
                }
                write_operand(out, &item.value, kind, Prec::Atom);
            }
        }
        SelNode::Except { base, removed } => {
            // `except` is left-associative: a nested base needs no parentheses.
            write_operand(out, &base.value, kind, Prec::Except);
            out.push_str(" except ");
            write_operand(out, &removed.value, kind, Prec::Union);
        }
    }
}

fn branches(b: &BranchSelector) -> String {
    let name = |i: &BranchItem| match i {
        BranchItem::All => "all",
        BranchItem::One(b) => b.name(),
    };
    let mut out = b
        .include
        .iter()
        .map(|i| name(&i.value))
        .collect::<Vec<_>>()
        .join(", ");
    if !b.except.is_empty() {
        out += " except ";
        out += &b
            .except
            .iter()
            .map(|i| name(&i.value))
            .collect::<Vec<_>>()
            .join(", ");
    }
    out
}
