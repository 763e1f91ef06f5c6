//! Diagnostics: what went wrong, where, rendered like rustc's.

use std::fmt;

use crate::span::Span;

/// One error about one place in a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The headline, after `error: `.
    pub message: String,
    /// The offending text (may be empty: then the caret points between characters).
    pub span: Span,
    /// Printed after the carets, e.g. "expected a step selector".
    pub label: String,
    pub help: Option<String>,
    pub note: Option<String>,
    /// Another place that explains the error (e.g. the earlier rule it
    /// conflicts with), underlined with `-` and its label. Boxed: most
    /// diagnostics have none, and every `Result` carries the size.
    pub secondary: Option<Box<(Span, String)>>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: label.into(),
            help: None,
            note: None,
            secondary: None,
        }
    }

    /// Points at another place too, as rustc's secondary labels do.
    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary = Some(Box::new((span, label.into())));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.note = Some(note.into());
        self
    }

    /// Renders this diagnostic against the source it points into, without
    /// colours:
    ///
    /// ```text
    /// error: unknown key `stepz` in [sampler]
    ///  --> fora3.sched:3:1
    ///   |
    /// 3 | stepz = 20
    ///   | ^^^^^ not a sampler setting
    ///   |
    ///   = help: expected one of: kind, steps, guidance, eta, cfg-order, guided-channels
    /// ```
    pub fn render(&self, source_name: &str, source_text: &str) -> String {
        let loc = Location::of(source_text, self.span.start);
        // Every labelled place, in line order: (location, span, mark, label).
        let mut marks = vec![(loc.clone(), self.span, '^', self.label.as_str())];
        if let Some(other) = &self.secondary {
            let (span, label) = &**other;
            marks.push((Location::of(source_text, span.start), *span, '-', label));
        }
        marks.sort_by_key(|(l, ..)| (l.line, l.column));
        let widest = marks.iter().map(|(l, ..)| l.line).max().unwrap_or(loc.line);
        let pad = " ".repeat(widest.to_string().len());

        let mut out = format!("error: {}\n", self.message);
        out += &format!("{pad}--> {source_name}:{}:{}\n", loc.line, loc.column);
        out += &format!("{pad} |\n");
        let mut last_line = None;
        for (at, span, mark, label) in &marks {
            if let Some(last) = last_line {
                if at.line > last + 1 {
                    out += "...\n";
                }
            }
            last_line = Some(at.line);
            let line_text: String = at
                .line_text
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            // Underline up to the span's end or the end of its first line.
            let line_chars = at.line_text.chars().count();
            let span_end = span.end.clamp(span.start, source_text.len());
            let span_chars = source_text
                .get(span.start.min(source_text.len())..span_end)
                .map_or(0, |s| s.chars().take_while(|&c| c != '\n').count());
            let width = span_chars
                .min(line_chars.saturating_sub(at.column - 1))
                .max(1);
            out += &format!(
                "{:>w$} | {}\n",
                at.line,
                line_text.trim_end(),
                w = pad.len()
            );
            let underline = format!(
                "{}{}",
                " ".repeat(at.column - 1),
                mark.to_string().repeat(width)
            );
            if label.is_empty() {
                out += &format!("{pad} | {underline}\n");
            } else {
                out += &format!("{pad} | {underline} {label}\n");
            }
        }
        if self.help.is_some() || self.note.is_some() {
            out += &format!("{pad} |\n");
        }
        if let Some(help) = &self.help {
            out += &format!("{pad} = help: {help}\n");
        }
        if let Some(note) = &self.note {
            out += &format!("{pad} = note: {note}\n");
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.label.is_empty() {
            write!(f, ": {}", self.label)?;
        }
        Ok(())
    }
}

/// A 1-based line and column (in characters) of a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location<'a> {
    pub line: usize,
    pub column: usize,
    /// The whole line the offset is on, without its line break.
    pub line_text: &'a str,
}

impl<'a> Location<'a> {
    /// Where byte `offset` of `text` is. Offsets past the end, or inside a
    /// multi-byte character, are moved back to the nearest character start.
    pub fn of(text: &'a str, offset: usize) -> Location<'a> {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        Location {
            line: text[..offset].matches('\n').count() + 1,
            column: text[line_start..offset].chars().count() + 1,
            line_text,
        }
    }
}

/// Every error found in one schedule, in source order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics(Vec::new())
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when nothing was reported, else these diagnostics sorted
    /// by position.
    pub fn into_result<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort_by_key(|d| (d.span.start, d.span.end));
            Err(self)
        }
    }

    /// All diagnostics rendered against their source, separated by blank
    /// lines. No colours, so the output is stable for snapshots.
    pub fn render(&self, source_name: &str, source_text: &str) -> String {
        self.0
            .iter()
            .map(|d| d.render(source_name, source_text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Diagnostics {
        Diagnostics(vec![d])
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Without the source text: one line per diagnostic, message and label.
/// Use [`Diagnostics::render`] to show the offending text.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secondary label is underlined with `-` on its own line, places in
    /// source order whichever is primary, `...` only between lines that are
    /// not neighbours.
    #[test]
    fn secondary_labels_render_in_source_order() {
        let text = "a = 1\nb = 2\n";
        let d = Diagnostic::new("clash", Span::new(6, 7), "this one")
            .with_secondary(Span::new(0, 1), "that one");
        assert_eq!(
            d.render("x.sched", text),
            "error: clash\n --> x.sched:2:1\n  |\n1 | a = 1\n  | - that one\n2 | b = 2\n  | ^ this one\n"
        );
        let text = "a = 1\n\n\nb = 2\n";
        let d = Diagnostic::new("clash", Span::new(0, 1), "first")
            .with_secondary(Span::new(8, 9), "later");
        let out = d.render("x.sched", text);
        assert!(
            out.contains("  | ^ first\n...\n4 | b = 2\n  | - later\n"),
            "{out}"
        );
    }
}
