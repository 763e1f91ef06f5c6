//! What selectors and mask presets mean once the number of steps (or
//! blocks) is known.

use tcc_core::Branch;

use crate::ast::{BranchItem, BranchSelector, IndexKind, SelNode, Selector};
use crate::diag::Diagnostic;
use crate::span::Spanned;

/// The set of indices `0..len` a selector picks, as one flag per index.
///
/// Indices written explicitly (a number, a range's ends, `first N`,
/// `last N`, `every N from S`) must lie inside `0..len` (an open range
/// `a..` may start at `len` and select nothing); a range with both ends
/// written must not be empty; `every N` needs N >= 1; `step % M` needs M >= 1. Predicates
/// and `every` simply pick nothing beyond the end.
pub fn eval_selector(sel: &Selector, kind: IndexKind, len: usize) -> Result<Vec<bool>, Diagnostic> {
    let mut out = vec![false; len];
    match &sel.value {
        SelNode::All => out.fill(true),
        SelNode::None => {}
        &SelNode::Index(i) => out[in_range(i, sel, kind, len)?] = true,
        &SelNode::Range {
            start,
            end,
            inclusive,
        } => {
            // An open end may leave the range empty (`1..` of a single
            // step); an explicit start past the end may not.
            let lo = match (start, end) {
                (Some(s), None) if s as u128 <= len as u128 => s as usize,
                (Some(s), _) => in_range(s, sel, kind, len)?,
                (None, _) => 0,
            };
            // Exclusive ends may equal `len`: `0..20` is every one of 20 steps.
            let hi = match end {
                Some(e) if inclusive => in_range(e, sel, kind, len)? + 1,
                Some(e) if e as u128 <= len as u128 => e as usize,
                Some(e) => return Err(out_of_range(e, sel, kind, len)),
                None => len,
            };
            if lo >= hi && start.is_some() && end.is_some() {
                return Err(
                    Diagnostic::new("empty range", sel.span, "this range selects nothing")
                        .with_help(
                            "a range `a..b` selects a, a+1, ..., b-1; `a..=b` also selects b",
                        ),
                );
            }
            if lo < hi {
                out[lo..hi].fill(true);
            }
        }
        &SelNode::Every { n, from } => {
            if !(n >= 1.0 && n.is_finite()) {
                return Err(Diagnostic::new(
                    format!("`every {n}` needs N >= 1"),
                    sel.span,
                    "interval too small",
                ));
            }
            let from = match from {
                Some(f) => in_range(f, sel, kind, len)?,
                None => 0,
            };
            for i in every_offsets(n, len - from.min(len)) {
                out[from + i] = true;
            }
        }
        &SelNode::First(n) => {
            let n = count_in_range(n, sel, kind, len)?;
            out[..n].fill(true);
        }
        &SelNode::Last(n) => {
            let n = count_in_range(n, sel, kind, len)?;
            out[len - n..].fill(true);
        }
        &SelNode::Compare { op, value } => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = op.holds(i as u64, value);
            }
        }
        &SelNode::Modulo {
            modulus,
            remainder,
            equal,
        } => {
            if modulus == 0 {
                return Err(Diagnostic::new(
                    format!("`{} % 0`", kind.var()),
                    sel.span,
                    "the modulus must be at least 1",
                ));
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = ((i as u64 % modulus) == remainder) == equal;
            }
        }
        SelNode::Union(items) => {
            for item in items {
                for (o, x) in out.iter_mut().zip(eval_selector(item, kind, len)?) {
                    *o |= x;
                }
            }
        }
        SelNode::Intersect(items) => {
            out.fill(true);
            for item in items {
                for (o, x) in out.iter_mut().zip(eval_selector(item, kind, len)?) {
                    *o &= x;
                }
            }
        }
        SelNode::Except { base, removed } => {
            out = eval_selector(base, kind, len)?;
            for (o, x) in out.iter_mut().zip(eval_selector(removed, kind, len)?) {
                *o &= !x;
            }
        }
    }
    Ok(out)
}

/// The offsets round(k * n), k = 0, 1, ..., below `len` (n >= 1). Halves
/// round away from zero: `every 2.5` refreshes 0, 3, 5, 8, 10, 13, ...
pub fn every_offsets(n: f64, len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut k = 0u64;
    loop {
        let x = (k as f64 * n).round();
        if x >= len as f64 {
            return out;
        }
        out.push(x as usize);
        k += 1;
    }
}

fn noun(kind: IndexKind) -> (&'static str, &'static str) {
    match kind {
        IndexKind::Step => ("step", "the sampler has"),
        IndexKind::Block => ("block", "the model has"),
    }
}

fn out_of_range(i: u64, sel: &Selector, kind: IndexKind, len: usize) -> Diagnostic {
    let (what, has) = noun(kind);
    let last = match len {
        0 => String::new(),
        n => format!(", numbered 0 to {}", n - 1),
    };
    Diagnostic::new(
        format!("{what} {i} is out of range"),
        sel.span,
        format!("{has} {len} {what}s{last}"),
    )
}

fn in_range(i: u64, sel: &Selector, kind: IndexKind, len: usize) -> Result<usize, Diagnostic> {
    if (i as u128) < len as u128 {
        Ok(i as usize)
    } else {
        Err(out_of_range(i, sel, kind, len))
    }
}

fn count_in_range(
    n: u64,
    sel: &Selector,
    kind: IndexKind,
    len: usize,
) -> Result<usize, Diagnostic> {
    if n as u128 <= len as u128 {
        Ok(n as usize)
    } else {
        let (what, has) = noun(kind);
        Err(Diagnostic::new(
            format!("more {what}s than there are"),
            sel.span,
            format!("{has} only {len} {what}s"),
        ))
    }
}

/// The branches a branch selector picks, in the model's order, given the
/// branches the model has. Naming a branch the model lacks is an error
/// (`all` never is).
pub fn eval_branches(
    sel: &Spanned<BranchSelector>,
    model_branches: &[Branch],
    model_name: &str,
) -> Result<Vec<Branch>, Diagnostic> {
    let pick = |items: &[Spanned<BranchItem>]| -> Result<Vec<Branch>, Diagnostic> {
        let mut out = Vec::new();
        for item in items {
            match item.value {
                BranchItem::All => out.extend_from_slice(model_branches),
                BranchItem::One(b) if model_branches.contains(&b) => out.push(b),
                BranchItem::One(b) => {
                    let names: Vec<&str> = model_branches.iter().map(|b| b.name()).collect();
                    return Err(Diagnostic::new(
                        format!("model `{model_name}` has no `{b}` branch"),
                        item.span,
                        format!("its blocks have {}", names.join(", ")),
                    ));
                }
            }
        }
        Ok(out)
    };
    let include = pick(&sel.value.include)?;
    let except = pick(&sel.value.except)?;
    Ok(model_branches
        .iter()
        .copied()
        .filter(|b| include.contains(b) && !except.contains(b))
        .collect())
}

/// Names accepted by [`mask_preset`].
pub const MASK_PRESETS: &[&str] = &["slow", "medium", "fast", "ultra"];

/// A named step mask (`true` = compute) for `steps` steps.
///
/// The four presets are the 28-step masks of cache-dit's
/// `steps_mask(mask_policy=...)`, given as alternating compute / cache run
/// lengths:
///
/// | preset | compute runs | cache runs | computed of 28 |
/// |---|---|---|---|
/// | slow | 8,3,3,2,1,1 | 1,2,2,2,3 | 18 |
/// | medium | 6,2,2,2,2,1 | 1,3,3,3,3 | 15 |
/// | fast | 6,1,1,1,1,1 | 1,3,4,5,4 | 11 |
/// | ultra | 4,1,1,1,1 | 2,5,6,7 | 8 |
///
/// For another step count the 28-step mask is resampled (step i of n takes
/// entry round(i * 27 / (n - 1))), and the first and last steps always
/// compute. This resampling is ours; cache-dit truncates or stretches its
/// run lengths instead.
pub fn mask_preset(name: &str, steps: usize) -> Option<Vec<bool>> {
    let (compute, cache): (&[usize], &[usize]) = match name {
        "slow" => (&[8, 3, 3, 2, 1, 1], &[1, 2, 2, 2, 3]),
        "medium" => (&[6, 2, 2, 2, 2, 1], &[1, 3, 3, 3, 3]),
        "fast" => (&[6, 1, 1, 1, 1, 1], &[1, 3, 4, 5, 4]),
        "ultra" => (&[4, 1, 1, 1, 1], &[2, 5, 6, 7]),
        _ => return None,
    };
    let mut base = Vec::with_capacity(28);
    for (i, &c) in compute.iter().enumerate() {
        base.extend(std::iter::repeat_n(true, c));
        if let Some(&k) = cache.get(i) {
            base.extend(std::iter::repeat_n(false, k));
        }
    }
    debug_assert_eq!(base.len(), 28);
    let mut out: Vec<bool> = (0..steps)
        .map(|i| {
            if steps == 1 {
                return true;
            }
            let j = (i as f64 * 27.0 / (steps - 1) as f64).round() as usize;
            base[j.min(27)]
        })
        .collect();
    if let Some(first) = out.first_mut() {
        *first = true;
    }
    if let Some(last) = out.last_mut() {
        *last = true;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rounds_fractional_offsets() {
        assert_eq!(every_offsets(3.0, 10), vec![0, 3, 6, 9]);
        // k * 2.5 = 0, 2.5, 5, 7.5, 10, 12.5 -> halves away from zero.
        assert_eq!(every_offsets(2.5, 13), vec![0, 3, 5, 8, 10]);
        assert_eq!(every_offsets(1.0, 3), vec![0, 1, 2]);
        assert_eq!(every_offsets(7.0, 0), Vec::<usize>::new());
    }

    #[test]
    fn presets_at_28_steps_are_cache_dit_masks() {
        let bits = |s: &str| -> Vec<bool> {
            s.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c == '1')
                .collect()
        };
        // Written out from cache-dit's run lengths by hand.
        assert_eq!(
            mask_preset("slow", 28).unwrap(),
            bits("11111111 0 111 00 111 00 11 00 1 000 1")
        );
        assert_eq!(
            mask_preset("fast", 28).unwrap(),
            bits("111111 0 1 000 1 0000 1 00000 1 0000 1")
        );
        for name in MASK_PRESETS {
            for n in 1..60 {
                let m = mask_preset(name, n).unwrap();
                assert_eq!(m.len(), n);
                assert!(m[0] && m[n - 1], "{name} {n}");
            }
        }
        assert!(mask_preset("turbo", 20).is_none());
    }
}
