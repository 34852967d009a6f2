"""Finding: every defence side by side on the same threats, from a run folder (the default run by default).

Reads the results files of ``mmrobust run`` (no model is run again) and writes the defence
comparison (report.html's "Defences" table) as Markdown, plus, for each adaptively evaluated
defence, which attack variant broke how many samples at the largest ε, and every reliability flag in
words.

Usage::

    mmrobust run --runs-dir runs                                  # the default benchmark
    python benchmarks/findings_defenses.py runs/default --out docs/findings_defenses.md
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
    attack = cfg["threats"]["attacks"][0] if cfg["threats"]["attacks"] else {}
    doc = f"""# Findings: every defence on the same threats (MM-Digits default run)

Measured with `mmrobust run` (the built-in default benchmark, seed {summary['seed']}, wall time
{summary['wall_seconds']:.0f} s on the 2-core project machine) and tabulated from its run folder with
`python benchmarks/findings_defenses.py runs/default --out docs/findings_defenses.md`. Raw numbers:
`docs/findings_defenses.json`; the same table is report.html's "Defences" section.

Threats (accuracy, %): clean and worst missing modality on the 1,000 test samples; single-source
{attack.get('name', 'pgd').upper()}-{attack.get('params', {}).get('steps', '')} ℓ∞ on each modality in turn
(`each`: a sample is broken when any one-modality attack breaks it) at ε1 = image 0.05 / audio 0.02 /
text 0.25 and ε2 = image 0.1 / audio 0.05 / text 0.5, on the first {attack.get('samples') or 'all'} test
samples; every random corruption at severity 3 (mean and worst). Every attack on a defended model is
adaptive: per sample, the worst case over the variants in the *adaptive attack* column (transfer from the
undefended model, BPDA and full white-box for JR; CW and CE losses for CRMT; detector evasion `evade`
κ = 1, CW and CE for odd-one-out), each modality attacked in turn. Training defences fine-tune the trained
model for 3 epochs (the default run's budget; docs/findings_*.md train them fully); *cost* is the seconds
to train the model (undefended lines) or to build the defence.

{chr(10).join(lines)}

## Which adaptive variant breaks the samples (ε2)

Share of the attacked test samples (%) that each variant, on each attacked modality, misclassifies.

| model | variant | broken (%) per attacked modality |
|---|---|---|
{chr(10).join(share_lines)}

## Reliability flags

{chr(10).join(flag_lines)}
"""
    args.out.write_text(doc)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"table": table, "columns": cols, "variants": shares, "flags": flags,
         "provenance": summary.get("provenance"), "config": cfg, "seed": summary["seed"]}, indent=1, default=str))
    print(doc)


if __name__ == "__main__":
    main()
