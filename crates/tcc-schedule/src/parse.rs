//! TOML text -> [`Schedule`]: syntax, schema and value types. What the
//! values mean for a model is checked by the plan compiler.

use toml::de::{DeTable, DeValue};
use toml::Spanned as TSpanned;

use tcc_core::{
    CalibMethod, CalibMode, CfgHalf, CfgOrder, DynamicPolicy, Pooling, PriorKind, RatioSchedule,
    SamplerKind, Selection, TokenScore,
};

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::selector::{self, join_or, Origin};
use crate::span::{Span, Spanned};

type TValue<'i> = TSpanned<DeValue<'i>>;

const SECTIONS: &[&str] = &[
    "model",
    "sampler",
    "cache",
    "limits",
    "toca",
    "calibration",
    "dynamic",
];
const MODEL_KEYS: &[&str] = &["name", "path", "weights"];
const SAMPLER_KEYS: &[&str] = &[
    "kind",
    "steps",
    "guidance",
    "eta",
    "cfg-order",
    "guided-channels",
];
const RULE_ACTIONS: &[&str] = &[
    "compute",
    "reuse",
    "refresh",
    "reuse-delta",
    "mask",
    "table",
    "partial",
];
const RULE_KEYS: &[&str] = &[
    "compute",
    "reuse",
    "refresh",
    "reuse-delta",
    "mask",
    "table",
    "partial",
    "blocks",
    "branches",
    "fresh-ratio",
    "ratio-schedule",
];
const TOCA_KEYS: &[&str] = &["score", "fresh-weight", "spread-bonus", "interval", "seed"];
const LIMIT_KEYS: &[&str] = &["warmup", "cutoff", "max-reuse"];
const DYNAMIC_KEYS: &[&str] = &[
    "policy",
    "threshold",
    "warmup",
    "cutoff",
    "max-reuse",
    "rescale",
];
const CALIBRATION_KEYS: &[&str] = &[
    "method",
    "mode",
    "steps",
    "alpha",
    "prior",
    "pooling",
    "pooled-half",
    "samples",
    "seed",
    "select",
    "candidates",
    "alphas",
    "ridge",
    "rank",
    "validation-samples",
    "validation-seed",
];

pub(crate) fn parse_schedule(source_name: &str, text: &str) -> Result<Schedule, Diagnostics> {
    let root = DeTable::parse(text).map_err(|e| Diagnostics::from(toml_error(&e, text)))?;
    let mut cx = Cx {
        text,
        diags: Diagnostics::new(),
    };
    let mut model = None;
    let mut model_seen = false;
    let mut sampler = None;
    let mut cache = Vec::new();
    let mut limits = None;
    let mut toca = None;
    let mut calibration = None;
    let mut dynamic = None;
    for (key, value) in sorted(root.get_ref()) {
        let header = span_of(value);
        match key.get_ref().as_ref() {
            "model" => {
                model_seen = true;
                if let Some(t) = cx.section(key, value) {
                    model = cx.model(t, header);
                }
            }
            "sampler" => {
                if let Some(t) = cx.section(key, value) {
                    sampler = Some(Spanned::new(cx.sampler(t), header));
                }
            }
            "cache" => cache = cx.cache(key, value),
            "limits" => {
                if let Some(t) = cx.section(key, value) {
                    limits = Some(Spanned::new(cx.limits(t), header));
                }
            }
            "toca" => {
                if let Some(t) = cx.section(key, value) {
                    toca = Some(Spanned::new(cx.toca(t), header));
                }
            }
            "calibration" => {
                if let Some(t) = cx.section(key, value) {
                    calibration = Some(Spanned::new(cx.calibration(t), header));
                }
            }
            "dynamic" => {
                if let Some(t) = cx.section(key, value) {
                    dynamic = Some(Spanned::new(cx.dynamic(t), header));
                }
            }
            other => {
                let d = Diagnostic::new(
                    format!("unknown section `{other}`"),
                    span_of(key),
                    "not a schedule section",
                );
                cx.diags.push(with_suggestion(d, other, SECTIONS, |s| {
                    if s == "cache" {
                        "[[cache]]".to_string()
                    } else {
                        format!("[{s}]")
                    }
                }));
            }
        }
    }
    let model = match model {
        Some(m) => m,
        None => {
            if !model_seen {
                cx.diags.push(
                    Diagnostic::new("missing [model] section", Span::at(0), "expected [model]")
                        .with_help("every schedule names its model: add `[model]` with `name = \"tiny\"` (or another preset) or `path = \"...\"`"),
                );
            }
            return Err(cx.diags.into_result(()).unwrap_err());
        }
    };
    let schedule = Schedule {
        source_name: source_name.to_string(),
        model,
        sampler,
        cache,
        limits,
        toca,
        calibration,
        dynamic,
    };
    cx.diags.into_result(schedule)
}

/// Converts a TOML syntax error into a diagnostic at its span.
fn toml_error(e: &toml::de::Error, text: &str) -> Diagnostic {
    let span = e.span().map_or(Span::at(0), Span::from);
    let message = e.message().trim().to_string();
    let found = text.get(span.range()).unwrap_or("");
    let (headline, label) = match message.split_once(", expected ") {
        Some((what, expected)) => (what.to_string(), format!("expected {expected}")),
        None if message == "duplicate key" => (message.clone(), "given twice".to_string()),
        None => (message.clone(), String::new()),
    };
    let mut d = Diagnostic::new(format!("TOML syntax: {headline}"), span, label);
    let bare_word = !found.is_empty()
        && found
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        && found
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
    if bare_word && (message.contains("invalid") || message.contains("quoted")) {
        d = d.with_help(format!("strings are quoted: \"{found}\""));
    }
    d
}

fn span_of<T>(v: &TSpanned<T>) -> Span {
    Span::from(v.span())
}

/// Table entries in source order (the TOML map is sorted by key).
fn sorted<'a, 'i>(
    t: &'a DeTable<'i>,
) -> Vec<(&'a TSpanned<std::borrow::Cow<'i, str>>, &'a TValue<'i>)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// "did you mean `x`?" for a near miss, else the list of what is allowed.
fn with_suggestion(
    d: Diagnostic,
    found: &str,
    allowed: &[&str],
    show: impl Fn(&str) -> String,
) -> Diagnostic {
    let best = allowed
        .iter()
        // Optimal string alignment: swapping two neighbouring characters costs 1.
        .map(|a| (strsim::osa_distance(found, a), *a))
        .min()
        .filter(|&(dist, a)| dist <= (a.len().max(found.len()) / 3).max(1));
    match best {
        Some((_, a)) => d.with_help(format!("did you mean `{}`?", show(a))),
        None => {
            let all: Vec<String> = allowed.iter().map(|a| format!("`{}`", show(a))).collect();
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            d.with_help(format!("expected {}", join_or(&all)))
        }
    }
}

struct Cx<'t> {
    text: &'t str,
    diags: Diagnostics,
}

impl<'t> Cx<'t> {
    fn section<'a, 'i>(
        &mut self,
        key: &TSpanned<std::borrow::Cow<'i, str>>,
        value: &'a TValue<'i>,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                let name = key.get_ref();
                self.diags.push(
                    Diagnostic::new(
                        format!("`{name}` must be a section, found a {}", other.type_str()),
                        span_of(key),
                        format!("expected [{name}]"),
                    )
                    .with_help(format!("write the settings under a `[{name}]` header")),
                );
                None
            }
        }
    }

    fn unknown_key(
        &mut self,
        key: &TSpanned<std::borrow::Cow<'_, str>>,
        section: &str,
        allowed: &[&str],
    ) {
        let name = key.get_ref();
        let d = Diagnostic::new(
            format!("unknown key `{name}` in {section}"),
            span_of(key),
            "not a setting of this section",
        );
        self.diags
            .push(with_suggestion(d, name, allowed, str::to_string));
    }

    fn type_error(&mut self, v: &TValue<'_>, expected: &str) {
        self.diags.push(Diagnostic::new(
            format!("expected {expected}, found a {}", v.get_ref().type_str()),
            span_of(v),
            format!("expected {expected}"),
        ));
    }

    fn string(&mut self, v: &TValue<'_>) -> Option<Spanned<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(s.to_string(), span_of(v))),
            _ => {
                self.type_error(v, "a string");
                None
            }
        }
    }

    /// Where the characters of a string value sit in the file.
    fn origin(&self, v: &TValue<'_>, value: &str) -> Origin {
        let whole = span_of(v);
        let raw = self.text.get(whole.range()).unwrap_or("");
        for open in [
            "\"\"\"\r\n",
            "\"\"\"\n",
            "'''\r\n",
            "'''\n",
            "\"\"\"",
            "'''",
            "\"",
            "'",
        ] {
            // The closing quote is the opening one without its line break.
            let close = open.trim_end_matches(['\r', '\n']);
            if raw.starts_with(open)
                && raw[open.len()..].starts_with(value)
                && &raw[open.len() + value.len()..] == close
            {
                return Origin::exact(whole.start + open.len(), whole);
            }
        }
        Origin::whole(whole)
    }

    fn selector(&mut self, v: &TValue<'_>, kind: IndexKind) -> Option<Selector> {
        let s = self.string(v)?;
        let origin = self.origin(v, &s.value);
        self.ok(selector::parse_selector(&s.value, origin, kind))
    }

    fn ok<T>(&mut self, r: Result<T, Diagnostic>) -> Option<T> {
        r.map_err(|d| self.diags.push(d)).ok()
    }

    fn uint(&mut self, v: &TValue<'_>) -> Option<Spanned<u64>> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n >= 0 => Some(Spanned::new(n as u64, span_of(v))),
                Ok(_) => {
                    self.diags.push(Diagnostic::new(
                        "expected a non-negative integer",
                        span_of(v),
                        "negative",
                    ));
                    None
                }
                Err(_) => {
                    self.diags.push(Diagnostic::new(
                        "integer too large",
                        span_of(v),
                        "out of range",
                    ));
                    None
                }
            },
            _ => {
                self.type_error(v, "an integer");
                None
            }
        }
    }

    /// A float; integers are accepted too (`alpha = 2`).
    fn float(&mut self, v: &TValue<'_>) -> Option<Spanned<f64>> {
        let x = match v.get_ref() {
            DeValue::Float(f) => {
                let x: Option<f64> = f.as_str().parse().ok();
                match x {
                    Some(x) if x.is_infinite() && !f.as_str().contains("inf") => None,
                    x => x,
                }
            }
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.type_error(v, "a number");
                return None;
            }
        };
        match x {
            Some(x) => Some(Spanned::new(x, span_of(v))),
            None => {
                self.diags.push(Diagnostic::new(
                    "number out of range",
                    span_of(v),
                    "too large",
                ));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, v: &TValue<'_>, options: &[(&str, T)]) -> Option<Spanned<T>> {
        let s = self.string(v)?;
        if let Some(&(_, t)) = options.iter().find(|(name, _)| *name == s.value) {
            return Some(s.map(|_| t));
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let allowed: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let d = Diagnostic::new(
            format!("unknown value \"{}\"", s.value),
            s.span,
            format!("expected {}", join_or(&names)),
        );
        let d = match with_suggestion(d.clone(), &s.value, &allowed, str::to_string).help {
            Some(h) if h.starts_with("did you mean") => d.with_help(h),
            _ => d,
        };
        self.diags.push(d);
        None
    }

    /// A non-empty array whose items `item` reads; a lone value is a
    /// one-item list (`alphas = 0.5`).
    fn list<T>(
        &mut self,
        v: &TValue<'_>,
        what: &str,
        item: impl Fn(&mut Self, &TValue<'_>) -> Option<Spanned<T>>,
    ) -> Option<Spanned<Vec<Spanned<T>>>> {
        let DeValue::Array(items) = v.get_ref() else {
            return item(self, v).map(|x| Spanned::new(vec![x], span_of(v)));
        };
        if items.is_empty() {
            self.diags.push(Diagnostic::new(
                "empty list",
                span_of(v),
                format!("expected one or more {what}"),
            ));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for x in items.iter() {
            match item(self, x) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then(|| Spanned::new(out, span_of(v)))
    }

    fn model(&mut self, t: &DeTable<'_>, header: Span) -> Option<Spanned<ModelSection>> {
        let mut source: Option<Spanned<ModelSource>> = None;
        let mut weights = None;
        let mut complete = true;
        for (k, v) in sorted(t) {
            let key = k.get_ref().as_ref();
            match key {
                "name" | "path" => {
                    let Some(s) = self.string(v) else {
                        complete = false;
                        continue;
                    };
                    if let Some(prev) = &source {
                        let other = match prev.value {
                            ModelSource::Preset(_) => "name",
                            ModelSource::Path(_) => "path",
                        };
                        self.diags.push(
                            Diagnostic::new(
                                format!("`{key}` given together with `{other}`"),
                                span_of(k),
                                "a model has either a preset `name` or a `path`",
                            )
                            .with_help("keep only one of them"),
                        );
                        complete = false;
                        continue;
                    }
                    source = Some(s.map(|s| match key {
                        "name" => ModelSource::Preset(s),
                        _ => ModelSource::Path(s),
                    }));
                }
                "weights" => weights = self.string(v),
                _ => self.unknown_key(k, "[model]", MODEL_KEYS),
            }
        }
        match source {
            Some(source) if complete => {
                Some(Spanned::new(ModelSection { source, weights }, header))
            }
            Some(_) => None,
            None => {
                if complete {
                    self.diags.push(
                        Diagnostic::new(
                            "[model] names no model",
                            header,
                            "expected `name = \"...\"` or `path = \"...\"` in this section",
                        )
                        .with_help("e.g. name = \"tiny\", or path = \"models/DiT-XL-2-256\""),
                    );
                }
                None
            }
        }
    }

    fn sampler(&mut self, t: &DeTable<'_>) -> SamplerSection {
        let mut s = SamplerSection::default();
        for (k, v) in sorted(t) {
            match k.get_ref().as_ref() {
                "kind" => s.kind = self.choice(v, SamplerKind::ALL),
                "steps" => s.steps = self.uint(v),
                "guidance" => s.guidance = self.float(v),
                "eta" => s.eta = self.float(v),
                "cfg-order" => s.cfg_order = self.choice(v, CfgOrder::ALL),
                "guided-channels" => {
                    s.guided_channels = match v.get_ref() {
                        DeValue::String(_) => self
                            .choice(v, &[("all", ())])
                            .map(|x| x.map(|_| GuidedChannels::All)),
                        DeValue::Integer(_) => self.uint(v).map(|n| n.map(GuidedChannels::First)),
                        _ => {
                            self.type_error(v, "an integer or \"all\"");
                            None
                        }
                    }
                }
                _ => self.unknown_key(k, "[sampler]", SAMPLER_KEYS),
            }
        }
        s
    }

    fn cache(
        &mut self,
        key: &TSpanned<std::borrow::Cow<'_, str>>,
        value: &TValue<'_>,
    ) -> Vec<Spanned<CacheRule>> {
        let items = match value.get_ref() {
            DeValue::Array(a) => a,
            DeValue::Table(_) => {
                self.diags.push(
                    Diagnostic::new(
                        "`[cache]` must be written `[[cache]]`",
                        span_of(key),
                        "cache rules are an array of tables",
                    )
                    .with_help("write each rule under its own `[[cache]]` header"),
                );
                return Vec::new();
            }
            other => {
                self.diags.push(Diagnostic::new(
                    format!(
                        "`cache` must be rules under `[[cache]]` headers, found a {}",
                        other.type_str()
                    ),
                    span_of(key),
                    "expected [[cache]]",
                ));
                return Vec::new();
            }
        };
        let mut rules = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::Table(t) => {
                    if let Some(rule) = self.rule(t, span_of(item)) {
                        rules.push(Spanned::new(rule, span_of(item)));
                    }
                }
                _ => self.type_error(item, "a cache rule (a table)"),
            }
        }
        rules
    }

    fn rule(&mut self, t: &DeTable<'_>, header: Span) -> Option<CacheRule> {
        let mut action: Option<Spanned<RuleAction>> = None;
        let mut action_seen = false;
        let mut blocks = None;
        let mut branches = None;
        let mut fresh_ratio: Option<Spanned<f64>> = None;
        let mut ratio_schedule = None;
        let mut ok = true;
        for (k, v) in sorted(t) {
            let key = k.get_ref().as_ref();
            if RULE_ACTIONS.contains(&key) {
                if action_seen {
                    let first = action.as_ref().map_or("another action", |a| a.value.key());
                    self.diags.push(
                        Diagnostic::new(
                            format!("a cache rule has one action, found `{first}` and `{key}`"),
                            span_of(k),
                            "second action",
                        )
                        .with_help("split them into two `[[cache]]` rules (later rules override earlier ones)"),
                    );
                    ok = false;
                    continue;
                }
                action_seen = true;
                let parsed = match key {
                    "compute" => self.selector(v, IndexKind::Step).map(RuleAction::Compute),
                    "reuse" => self.selector(v, IndexKind::Step).map(RuleAction::Reuse),
                    "refresh" => self.selector(v, IndexKind::Step).map(RuleAction::Refresh),
                    "reuse-delta" => self
                        .selector(v, IndexKind::Step)
                        .map(RuleAction::ReuseDelta),
                    "mask" => self.string(v).and_then(|s| {
                        let origin = self.origin(v, &s.value);
                        self.ok(selector::parse_mask(&s.value, origin))
                            .map(RuleAction::Mask)
                    }),
                    "partial" => self.selector(v, IndexKind::Step).map(RuleAction::Partial),
                    _ => self.table(v).map(RuleAction::Table),
                };
                match parsed {
                    Some(a) => action = Some(Spanned::new(a, span_of(k))),
                    None => ok = false,
                }
                continue;
            }
            match key {
                "blocks" => {
                    blocks = self.selector(v, IndexKind::Block);
                    ok &= blocks.is_some();
                }
                "branches" => {
                    branches = self.string(v).and_then(|s| {
                        let origin = self.origin(v, &s.value);
                        self.ok(selector::parse_branches(&s.value, origin))
                            .map(|b| Spanned::new(b, s.span))
                    });
                    ok &= branches.is_some();
                }
                "fresh-ratio" => {
                    fresh_ratio = self.unit_interval(v, "a fresh ratio");
                    ok &= fresh_ratio.is_some();
                }
                "ratio-schedule" => {
                    ratio_schedule = self.choice(v, RatioSchedule::ALL);
                    ok &= ratio_schedule.is_some();
                }
                _ => {
                    self.unknown_key(k, "[[cache]]", RULE_KEYS);
                    ok = false;
                }
            }
        }
        if !action_seen {
            self.diags.push(
                Diagnostic::new(
                    "cache rule without an action",
                    header,
                    "this rule does nothing",
                )
                .with_help(format!(
                    "add one of {}",
                    join_or(
                        &RULE_ACTIONS
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                    )
                )),
            );
            return None;
        }
        let action = action?;
        let partial = matches!(action.value, RuleAction::Partial(_));
        if partial && fresh_ratio.is_none() && ok {
            self.diags.push(
                Diagnostic::new(
                    "a `partial` rule needs a `fresh-ratio`",
                    action.span,
                    "which fraction of the tokens is recomputed?",
                )
                .with_help("add e.g. `fresh-ratio = 0.1` (a number in [0, 1]) to this rule"),
            );
            return None;
        }
        if !partial {
            for (given, key) in [
                (fresh_ratio.as_ref().map(|r| r.span), "fresh-ratio"),
                (ratio_schedule.as_ref().map(|r| r.span), "ratio-schedule"),
            ] {
                if let Some(span) = given {
                    self.diags.push(
                        Diagnostic::new(
                            format!("`{key}` in a `{}` rule", action.value.key()),
                            span,
                            "only a `partial` rule recomputes a fraction of the tokens",
                        )
                        .with_help(format!("remove `{key}`, or make the rule `partial = ...`")),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(CacheRule {
            action,
            blocks,
            branches,
            fresh_ratio,
            ratio_schedule,
        })
    }

    fn table(&mut self, v: &TValue<'_>) -> Option<Vec<Spanned<TableRow>>> {
        let DeValue::Array(rows) = v.get_ref() else {
            self.type_error(v, "an array of strings, one per step");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for row in rows.iter() {
            let Some(s) = self.string(row) else {
                ok = false;
                continue;
            };
            let origin = self.origin(row, &s.value);
            match self.ok(selector::parse_row(&s.value, origin)) {
                Some(r) => out.push(Spanned::new(r, s.span)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn limits(&mut self, t: &DeTable<'_>) -> LimitsSection {
        let mut l = LimitsSection::default();
        for (k, v) in sorted(t) {
            match k.get_ref().as_ref() {
                "warmup" => l.warmup = self.uint(v),
                "cutoff" => l.cutoff = self.uint(v),
                "max-reuse" => l.max_reuse = self.uint(v),
                _ => self.unknown_key(k, "[limits]", LIMIT_KEYS),
            }
        }
        l
    }

    /// A finite number in [0, 1].
    fn unit_interval(&mut self, v: &TValue<'_>, what: &str) -> Option<Spanned<f64>> {
        let x = self.float(v)?;
        if x.value.is_finite() && (0.0..=1.0).contains(&x.value) {
            return Some(x);
        }
        self.diags.push(Diagnostic::new(
            format!("{what} must be in [0, 1], found {}", x.value),
            x.span,
            "expected a number from 0 to 1",
        ));
        None
    }

    /// A finite number >= `min`.
    fn at_least(&mut self, v: &TValue<'_>, what: &str, min: f64) -> Option<Spanned<f64>> {
        let x = self.float(v)?;
        if x.value.is_finite() && x.value >= min {
            return Some(x);
        }
        self.diags.push(Diagnostic::new(
            format!("{what} must be a finite number >= {min}, found {}", x.value),
            x.span,
            format!("expected a number >= {min}"),
        ));
        None
    }

    fn toca(&mut self, t: &DeTable<'_>) -> TocaSection {
        let mut c = TocaSection::default();
        for (k, v) in sorted(t) {
            match k.get_ref().as_ref() {
                "score" => c.score = self.choice(v, TokenScore::ALL),
                "fresh-weight" => c.fresh_weight = self.at_least(v, "a staleness weight", 0.0),
                "spread-bonus" => c.spread_bonus = self.at_least(v, "a spread bonus", 0.0),
                "interval" => c.interval = self.at_least(v, "an interval", 1.0),
                "seed" => c.seed = self.uint(v),
                _ => self.unknown_key(k, "[toca]", TOCA_KEYS),
            }
        }
        c
    }

    fn calibration(&mut self, t: &DeTable<'_>) -> CalibrationSection {
        let mut c = CalibrationSection::default();
        for (k, v) in sorted(t) {
            match k.get_ref().as_ref() {
                "method" => c.method = self.choice(v, CalibMethod::ALL),
                "mode" => c.mode = self.choice(v, CalibMode::ALL),
                "steps" => c.steps = self.selector(v, IndexKind::Step),
                "alpha" => c.alpha = self.float(v),
                "prior" => c.prior = self.choice(v, PriorKind::ALL),
                "pooling" => c.pooling = self.choice(v, Pooling::ALL),
                "pooled-half" => c.pooled_half = self.choice(v, CfgHalf::ALL),
                "samples" => c.samples = self.uint(v),
                "seed" => c.seed = self.uint(v),
                "select" => c.select = self.choice(v, Selection::ALL),
                "candidates" => {
                    c.candidates = self.list(v, "prior kinds", |cx, x| cx.choice(x, PriorKind::ALL))
                }
                "alphas" => c.alphas = self.list(v, "numbers", Cx::float),
                "ridge" => c.ridge = self.list(v, "numbers", Cx::float),
                "rank" => c.rank = self.uint(v),
                "validation-samples" => c.validation_samples = self.uint(v),
                "validation-seed" => c.validation_seed = self.uint(v),
                _ => self.unknown_key(k, "[calibration]", CALIBRATION_KEYS),
            }
        }
        c
    }

    fn dynamic(&mut self, t: &DeTable<'_>) -> DynamicSection {
        let mut d = DynamicSection::default();
        for (k, v) in sorted(t) {
            match k.get_ref().as_ref() {
                "policy" => d.policy = self.choice(v, DynamicPolicy::ALL),
                "threshold" => d.threshold = self.float(v),
                "warmup" => d.warmup = self.uint(v),
                "cutoff" => d.cutoff = self.uint(v),
                "max-reuse" => d.max_reuse = self.uint(v),
                // A list even for one coefficient: a lone number reads as
                // a threshold-like setting, which `rescale` is not.
                "rescale" => match v.get_ref() {
                    DeValue::Array(_) => d.rescale = self.list(v, "numbers", Cx::float),
                    _ => self.type_error(v, "a list of numbers"),
                },
                _ => self.unknown_key(k, "[dynamic]", DYNAMIC_KEYS),
            }
        }
        d
    }
}
