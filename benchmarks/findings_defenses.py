"""Finding: every defence side by side on the same threats, from a run folder (the default run by default).

Reads the results files of ``mmrobust run`` (no model is run again) and writes the defence
comparison (report.html's "Defences" table) as Markdown, plus, for each adaptively evaluated
defence, which attack variant broke how many samples at the largest ε, and every reliability flag in
words.

Usage::

    mmrobust run --runs-dir runs                                  # the default benchmark
    python benchmarks/findings_defenses.py runs/default --out docs/findings_defenses.md

With a run of ``configs/standard_eval.yaml`` (the default run plus ``auto`` at the same radii) it adds
the standard evaluation: per model and ε, PGD-10, ``auto`` and per sample the worst of both, with each
defence's gain over its base model under the worst case. A hand-written ``## What it shows`` section
of an earlier ``--out`` is kept.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmrobust.bench.report import _key, defense_rows
from mmrobust.bench.results import read_rows
from mmrobust.reliability import FLAG_DOCS

MODALITIES = ("image", "audio", "text")


def fmt(v: Any, pct: bool) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{100 * v:.1f}" if pct else f"{v:.0f}"
    return "—" if v is None else str(v)


def variant_shares(folder: Path, rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """At the largest ε of each adaptive attack row: per variant, the share of test samples it broke."""
    attack = [r for r in rows if r["model"] == model and r["family"] == "attack" and r["condition"].startswith(
        "worst_case[")]
    if not attack:
        return None
    r = attack[-1]  # rows come in grid order: the largest ε
    s = np.load(folder / "samples" / model / f"{r['threat']}.npz")
    cid = r["condition"]
    out: dict[str, Any] = {"threat": r["threat"], "eps": r["eps"], "n": int(r["n"]),
                           "worst": float(r["accuracy"]), "broken_by": {}}
    prefix = _key(f"info/{cid}/")
    for key in s.files:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split("__")
        if len(parts) == 3 and parts[0] in MODALITIES and parts[1] == "success":  # <m>/success/<variant>
            out["broken_by"].setdefault(parts[2], {})[parts[0]] = float(s[key].astype(bool).mean())
    return out


def correct_by_index(folder: Path, model: str, threat: str, rows: list[dict[str, Any]]) -> list[dict[int, bool]]:
    """Per ε of attack threat ``threat`` (grid order): {test index: correct under the attack}."""
    path = folder / "samples" / model / f"{threat}.npz"
    conds = [r["condition"] for r in rows if r["model"] == model and r["threat"] == threat and r["family"] == "attack"]
    if not path.is_file() or not conds:
        return []
    s = np.load(path)
    index, label = s["index"].tolist(), s["label"]
    return [dict(zip(index, (s[_key(f"pred/{c}")] == label).tolist(), strict=True)) for c in conds]


def standard_eval(folder: Path, rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Per model and ε: PGD alone, ``auto`` alone and per sample the worst of both, on the samples of both cells.

    Empty when the run has no ``auto`` attack threat (the default run); ``configs/standard_eval.yaml``
    adds one beside the default PGD-10 threat.
    """
    threats = list(dict.fromkeys(r["threat"] for r in rows if r["family"] == "attack"))
    auto = next((t for t in threats if t.startswith("attack-auto")), None)
    pgd = next((t for t in threats if t.startswith("attack-pgd")), None)
    if auto is None or pgd is None:
        return []
    out = []
    for model in models:
        a, p = correct_by_index(folder, model, auto, rows), correct_by_index(folder, model, pgd, rows)
        for j, (ca, cp) in enumerate(zip(a, p, strict=False)):
            common = sorted(set(ca) & set(cp))
            if not common:
                continue
            n = len(common)
            out.append({"model": model, "eps": j + 1, "n": n,
                        "pgd": sum(cp[i] for i in common) / n, "auto": sum(ca[i] for i in common) / n,
                        "worst": sum(cp[i] and ca[i] for i in common) / n})
    return out


def standard_lines(std: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The standard-evaluation table and its computed statements (each defence against its base model)."""
    if not std:
        return [], []
    by = {(r["model"], r["eps"]): r for r in std}
    grid = sorted({r["eps"] for r in std})
    head = " | ".join(f"PGD-10 ε{j} | auto ε{j} | **worst ε{j}**" for j in grid)
    lines = [f"| model | n | {head} |", "|---|---|" + "---|---|---|" * len(grid)]
    for model in dict.fromkeys(r["model"] for r in std):
        cells = []
        for j in grid:
            r = by.get((model, j))
            if r is None:
                cells += ["—"] * 3
            else:
                cells += [fmt(r["pgd"], True), fmt(r["auto"], True), f"**{fmt(r['worst'], True)}**"]
        n = next(r["n"] for r in std if r["model"] == model)
        lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    said = []
    top = grid[-1]
    drops = [(r["pgd"] - r["worst"], r["model"], r["eps"]) for r in std]
    d, m, j = max(drops)
    said.append(f"- The worst case is below PGD-10 alone in {sum(x > 0 for x, _, _ in drops)} of {len(drops)} "
                f"cells, by up to {100 * d:.1f} points (`{m}`, ε{j}).")
    for model, info in summary.get("models", {}).items():
        base = info.get("base_model")
        if info.get("defense", "none") == "none" or (model, top) not in by or (base, top) not in by:
            continue
        g_pgd = by[(model, top)]["pgd"] - by[(base, top)]["pgd"]
        g = by[(model, top)]["worst"] - by[(base, top)]["worst"]
        said.append(f"- `{model}` against `{base}` at ε{top}: {100 * g:+.1f} points under the worst case "
                    f"({fmt(by[(base, top)]['worst'], True)} → {fmt(by[(model, top)]['worst'], True)} %; "
                    f"PGD-10 alone on these samples: {100 * g_pgd:+.1f}).")
    return lines, said


def kept_analysis(path: Path) -> str:
    """The hand-written "## What it shows" section of an earlier output (kept when the tables are rewritten)."""
    if not path.is_file():
        return ""
    text = path.read_text()
    i = text.find("\n## What it shows")
    return text[i:] if i >= 0 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder (e.g. runs/default)")
    ap.add_argument("--out", type=Path, default=Path("docs/findings_defenses.md"))
    args = ap.parse_args()
    rows = read_rows(args.run)
    summary = json.loads((args.run / "summary.json").read_text())
    table, cols = defense_rows(rows, summary)
    if not table:
        raise SystemExit(f"{args.run} has no defended model")
    text_cols = {"model", "defence", "kind", "adaptive attack", "cost (s)", "flags"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(fmt(r.get(c), c not in text_cols) for c in cols) + " |")
    shares = {m: variant_shares(args.run, rows, m) for m in summary["models"] if "+" in m}
    shares = {m: v for m, v in shares.items() if v}
    share_lines = []
    for model, v in shares.items():
        for variant, per in v["broken_by"].items():
            cells = ", ".join(f"{m} {100 * p:.1f}" for m, p in per.items())
            share_lines.append(f"| {model} | {variant} | {cells} |")
    flags = summary.get("flags", [])
    flag_lines = [f"- **{f['name']}** — {f['model']} · {f.get('condition') or 'model'}: {f['message']} "
                  f"({FLAG_DOCS.get(f['name'], '')})" for f in flags] or ["- none raised."]
    cfg = summary["config"]
    attacks = cfg["threats"]["attacks"]
    attack = attacks[0] if attacks else {}
    std = standard_eval(args.run, rows, list(summary["models"]))
    std_table, std_said = standard_lines(std, summary)
    command = f"python benchmarks/findings_defenses.py {args.run} --out {args.out}"
    cpu = (summary.get("provenance") or {}).get("cpu", "the 2-core project machine")
    how = ("the default run, then a copy of its folder with the standard evaluation added (models and "
           "other cells read back)") if std else "the default run"
    extra = ""
    if std:
        auto = next(a for a in attacks if a["name"] == "auto")
        extra = f"""
## The standard evaluation (`auto`)

`auto` (version `{auto.get('params', {}).get('version', 'standard')}`: APGD-CE → APGD-T → Square, each on the
samples still correct; docs/attacks.md), `modalities="each"`, the same radii, on the first
{auto.get('samples') or 'all'} test samples, adaptive to each defence (its gradient attacks replaced by the
defence's variants, Square on the defended model). Per model and ε: PGD-10 (adaptive, as above) on the
same samples, `auto`, and per sample the worst of both — the number to quote.

{chr(10).join(std_table)}

{chr(10).join(std_said)}
"""
    doc = f"""# Findings: every defence on the same threats (MM-Digits default run)

Measured with `mmrobust run{' ' + 'configs/standard_eval.yaml' if std else ''}` (seed {summary['seed']},
on {cpu}; {how}, wall time of the last invocation {summary['wall_seconds']:.0f} s) and tabulated from
its run folder with `{command}`.
Raw numbers: `{args.out.with_suffix('.json')}`; the same table is report.html's "Defences" section.

Threats (accuracy, %): clean and worst missing modality on the 1,000 test samples; single-source
{attack.get('name', 'pgd').upper()}-{attack.get('params', {}).get('steps', '')} ℓ∞ on each modality in turn
(`each`: a sample is broken when any one-modality attack breaks it) at ε1 = image 0.05 / audio 0.02 /
text 0.25 and ε2 = image 0.1 / audio 0.05 / text 0.5, on the first {attack.get('samples') or 'all'} test
samples{'; the standard evaluation `auto` at the same radii (its own section below)' if std else ''}; every
random corruption at severity 3 (mean and worst). Every attack on a defended model is
adaptive: per sample, the worst case over the variants in the *adaptive attack* column (transfer from the
undefended model, BPDA and full white-box for JR; CW and CE losses for CRMT; detector evasion `evade`
κ = 1, CW and CE for odd-one-out), each modality attacked in turn. Training defences fine-tune the trained
model for 3 epochs (the default run's budget; docs/findings_*.md train them fully); *cost* is the seconds
to train the model (undefended lines) or to build the defence.

{chr(10).join(lines)}
{extra}
## Which adaptive variant breaks the samples (ε2, PGD)

Share of the attacked test samples (%) that each variant, on each attacked modality, misclassifies.

| model | variant | broken (%) per attacked modality |
|---|---|---|
{chr(10).join(share_lines)}

## Reliability flags

{chr(10).join(flag_lines)}
{kept_analysis(args.out)}"""
    args.out.write_text(doc)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"table": table, "columns": cols, "variants": shares, "flags": flags, "standard_evaluation": std,
         "provenance": summary.get("provenance"), "config": cfg, "seed": summary["seed"]}, indent=1, default=str))
    print(doc)


if __name__ == "__main__":
    main()
