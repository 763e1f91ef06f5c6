"""Markdown tables from `tcc eval --json` output, as docs/eval.md shows them.

    python3 tools/eval/tables.py eval.json [more.json ...]

Per file: the variants (FD, its paired change against the variant's cache
run per seed set, class accuracy, rel. L2 and PSNR against full
computation, speedup; mean ± standard deviation over seed sets), the
paired Wilcoxon tests eval ran, the priors each variant used, and, where
eval measured it (`--oracle`), the oracle bound per calibrated step.
Standard library only.
"""

import json
import statistics as st
import sys


def mean_sd(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = st.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(st.mean(xs))} ± {fmt.format(sd)}"


def cache_of(name, variants):
    """The cache variant a calibrated variant is compared with: `STEM:cache`
    for `STEM:tcc`, a shared `cache` otherwise (eval shares one between
    schedules whose plans differ only in calibration)."""
    stem = name.rsplit(":", 1)[0] if ":" in name else None
    for want in ([f"{stem}:cache"] if stem else []) + ["cache"]:
        if want in variants:
            return variants[want]
    caches = [v for n, v in variants.items() if n.endswith("cache")]
    return caches[0] if len(caches) == 1 else None


def tables(path):
    d = json.load(open(path))
    r = d["report"]
    variants = {v["name"]: v for v in r["variants"]}
    seeds = d.get("seeds", [])
    out = [f"`{path}`: {len(seeds)} seed sets ({', '.join(map(str, seeds))}) x "
           f"{r.get('samples_per_set', '?')} samples, model `{d.get('model')}`", ""]
    out += ["| variant | FD | ΔFD vs cache, paired by set (mean; min..max) | class accuracy | "
            "rel. L2 vs full | PSNR vs full (dB) | speedup |",
            "|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        sets = v["sets"]
        cache = cache_of(name, variants)
        dfd = "-"
        if cache is not None and cache is not v and name != "full" and not name.endswith("cache"):
            ds = [a["fd"] - b["fd"] for a, b in zip(sets, cache["sets"])]
            dfd = f"{st.mean(ds):+.0f}; {min(ds):+.0f}..{max(ds):+.0f}"
        out.append(f"| {name} | {mean_sd([s['fd'] for s in sets], '{:.0f}')} | {dfd} | "
                   f"{mean_sd([s['accuracy'] for s in sets], '{:.3f}')} | "
                   f"{mean_sd([s.get('rel_l2') for s in sets], '{:.4f}')} | "
                   f"{mean_sd([s.get('psnr') for s in sets], '{:.2f}')} | "
                   f"{mean_sd([s.get('speedup') for s in sets], '{:.2f}')} |")
    if r.get("tests"):
        out += ["", "| paired Wilcoxon on per-sample rel. L2 | median difference (a - b) | a closer in | p |",
                "|---|---|---|---|"]
        for t in r["tests"]:
            test = t.get("test") or {}
            p = test.get("p_value")
            label = f"{t['a']} vs {t['b']}"
            if p is None:
                out.append(f"| {label} | identical | - | - |")
            else:
                out.append(f"| {label} | {t['median_difference']:+.4f} | {100 * t['a_better']:.0f}% | {p:.2g} |")
    if d.get("priors"):
        out += ["", "| priors of | mode | select | alpha | sites with a prior | calibration samples |",
                "|---|---|---|---|---|---|"]
        for p in d["priors"]:
            out.append(f"| {p['variant']} | {p['mode']} | {p['select']} | {p.get('alpha', '-')} | "
                       f"{p['sites_with_prior']} / {p['sites']} | {p['samples']} (seed {p['seed']}) |")
    if d.get("oracle"):
        out += ["", "| variant | step | reused | with its priors | oracle | reached |",
                "|---|---|---|---|---|---|"]
        for o in d["oracle"]:
            gain = o["before"] - o["oracle"]
            reached = f"{100 * (o['before'] - o['used']) / gain:.0f}%" if gain > 0 else "-"
            out.append(f"| {o['variant']} | {o['step']} | {o['before']:.4f} | {o['used']:.4f} | "
                       f"{o['oracle']:.4f} | {reached} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n\n".join(tables(p) for p in sys.argv[1:]))
