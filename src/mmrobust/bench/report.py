"""``report.html``: a self-contained, offline report of a run folder, built from its results files only.

:func:`write_report` reads ``results.csv``, ``summary.json`` and ``samples/<model>/<threat>.npz``
and writes ``report.html`` (plots embedded as base64 PNG, no scripts, no network) plus each plot as
a PNG beside it:

* the headline table (one line per model: clean, worst missing modality, each attack threat at
  each ε, corruptions);
* ``accuracy_vs_eps.png``: accuracy against ε per attacked modality (for ``each`` attacks, the
  accuracy under the attack on that modality alone, from the per-sample ``success/<m>`` info),
  one line per model;
* ``modality_matrix.png``: per model, the modality × perturbation heatmap (missing fills,
  corruption families at their strongest severity, attacks at their largest ε);
* the defence comparison: every defence on the same threats as its undefended model, with the
  adaptive attack variants, cost and reliability flags of each line;
* ``certified_accuracy.png``: certified accuracy against the ℓ2 radius for late-fusion models;
* the reliability flags in plain words (``docs/flags.md``), the provenance, and the full results
  table.

``mmrobust report RUN_DIR`` regenerates it; :func:`mmrobust.bench.runner.run` writes it at the end.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mmrobust.bench.results import headline_rows, read_rows
from mmrobust.metrics.results import each_modalities
from mmrobust.reliability import FLAG_DOCS
from mmrobust.utils.io import atomic_write, write_text

MODALITY_ORDER = ("image", "audio", "text")


def radius_of(eps: str, modality: str) -> float | None:
    """The radius of ``modality`` in an ``eps`` cell (``0.1`` or ``image:0.1/audio:0.05``)."""
    if eps in ("", None):
        return None
    if ":" in eps:
        for part in eps.split("/"):
            k, _, v = part.partition(":")
            if k == modality:
                return float(v)
        return None
    return float(eps)


def _modalities_of(row: dict[str, Any], samples: dict[str, np.ndarray]) -> list[str]:
    mods = row.get("modalities", "")
    if mods == "each":
        found = each_modalities(samples, row["condition"], key=_key)
        return sorted(found, key=lambda m: (MODALITY_ORDER.index(m) if m in MODALITY_ORDER else 99, m))
    return [mods] if mods and "+" not in mods else []


def _key(name: str) -> str:
    """A samples-array name as stored in ``.npz`` files (``/`` written as ``__``)."""
    return name.replace("/", "__")


def _load_samples(folder: Path, model: str, threat: str) -> dict[str, np.ndarray]:
    path = folder / "samples" / model / f"{threat}.npz"
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def eps_curves(folder: Path, rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[tuple[float, float]]]]:
    """``{(threat, modality): {model: [(ε, accuracy), ...]}}`` with (0, clean) first."""
    clean = {r["model"]: r["accuracy"] for r in rows if r["condition"] == "clean"}
    curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(dict)
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["family"] == "attack" and r.get("eps", "") != "":
            by_cell[(r["model"], r["threat"])].append(r)
    for (model, threat), cell in by_cell.items():
        samples = _load_samples(folder, model, threat)
        for r in cell:
            for m in _modalities_of(r, samples):
                e = radius_of(r["eps"], m)
                if e is None:
                    continue
                key = _key(f"info/{r['condition']}/success/{m}")
                acc = float(1.0 - samples[key].astype(bool).mean()) if key in samples else r["accuracy"]
                pts = curves[(threat, m)].setdefault(model, [(0.0, clean[model])])
                pts.append((e, acc))
    for per_model in curves.values():
        for pts in per_model.values():
            pts.sort()
    return dict(curves)


def modality_matrix(
    rows: list[dict[str, Any]], curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] | None = None
) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """Per model: (row labels = modalities, column labels = perturbations, accuracy matrix with NaN gaps).

    Columns: ``missing:<fill>``; ``corruption`` (mean over kinds at the strongest severity); one per
    attack threat at its largest ε. For ``each`` attacks the row ``each`` holds the per-sample worst
    case and, given ``curves`` (:func:`eps_curves`), each modality's row its own attack's accuracy.
    """
    out = {}
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model and r["condition"] != "clean"]
        cells: dict[tuple[str, str], list[float]] = defaultdict(list)
        strongest: dict[str, int] = {}
        for r in mine:
            if r["family"] == "corruption" and r.get("severity"):
                strongest[r["modalities"]] = max(strongest.get(r["modalities"], 0), int(float(r["severity"])))
        last_attack: dict[tuple[str, str], float] = {}
        for r in mine:
            fam, mods = r["family"], r["modalities"]
            if fam == "missing":
                cells[(mods, f"missing:{r.get('fill', '')}")].append(r["accuracy"])
            elif fam == "corruption" and int(float(r.get("severity") or 0)) == strongest.get(mods):
                cells[(mods, "corruption")].append(r["accuracy"])
            elif fam == "attack":
                last_attack[(mods, r["threat"])] = r["accuracy"]  # rows come in grid order: keep the last ε
        for (mods, threat), acc in last_attack.items():
            cells[(mods, threat)] = [acc]
        for (threat, m), per_model in (curves or {}).items():
            if model in per_model and (m, threat) not in cells:
                cells[(m, threat)] = [per_model[model][-1][1]]
        if not cells:
            continue
        row_labels = sorted({k[0] for k in cells}, key=lambda m: (MODALITY_ORDER.index(m)
                                                                   if m in MODALITY_ORDER else 90, m))
        col_labels = list(dict.fromkeys(k[1] for k in cells))
        mat = np.full((len(row_labels), len(col_labels)), np.nan)
        for (mods, col), accs in cells.items():
            mat[row_labels.index(mods), col_labels.index(col)] = float(np.mean(accs))
        out[model] = (row_labels, col_labels, mat)
    return out


def certified_curves(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[tuple[float, float]]]]:
    """``{(lipschitz kind, perturbed modalities): {model: [(radius, certified accuracy), ...]}}``."""
    curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(dict)
    for r in rows:
        if r["family"] == "certified" and r.get("eps", "") != "":
            key = (str(r.get("lipschitz", "")), str(r["modalities"]))
            curves[key].setdefault(r["model"], []).append((float(r["eps"]), r["accuracy"]))
    for per_model in curves.values():
        for pts in per_model.values():
            pts.sort()
    return dict(sorted(curves.items(), key=lambda kv: (kv[0][0] != "sound", -kv[0][1].count("+"), kv[0][1])))


def plot_certified(curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]]) -> bytes | None:
    """One panel per (Lipschitz kind, perturbed modalities), one line per model; ε on a symlog axis."""

    def title(key: tuple[str, str]) -> str:
        kind, mods = key
        return f"{mods} perturbed ({'joint ' if '+' in mods else ''}ℓ2) · {kind} Lipschitz"

    return _line_panels(curves, title=title, xlabel=lambda _k: "radius ε (ℓ2)", ylabel="certified accuracy (%)",
                        symlog=True)


def _line_panels(
    curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]],
    *,
    title: Any,
    xlabel: Any,
    ylabel: str,
    symlog: bool = False,
) -> bytes | None:
    """PNG of accuracy-curve panels: one per key of ``curves``, one line (and colour) per model.

    ``title`` and ``xlabel`` map a key to text; the legend is shared, below the panels.
    """
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(curves)
    models = list(dict.fromkeys(m for per_model in curves.values() for m in per_model))
    colour = _colours(models)
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for model, pts in curves[key].items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=model, color=colour[model])
        if symlog:
            grid = sorted({e for pts in curves[key].values() for e, _ in pts})
            ax.set_xscale("symlog", linthresh=min((e for e in grid if e > 0), default=1e-3))
            ax.set_xticks(grid, [f"{e:g}" for e in grid], rotation=45, fontsize=7)  # the measured radii
            ax.minorticks_off()
        ax.set_title(title(key), fontsize=9)
        ax.set_xlabel(xlabel(key))
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 7), fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def _colours(models: list[str]) -> dict[str, Any]:
    """A distinct colour per model (matplotlib's 10-colour cycle, tab20 beyond 10 models)."""
    if len(models) <= 10:
        return {m: f"C{i}" for i, m in enumerate(models)}
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {m: cmap(i % 20) for i, m in enumerate(models)}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_eps_curves(curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]]) -> bytes | None:
    """One panel per (attack threat, modality), one line per model."""
    return _line_panels(curves, title=lambda k: f"{k[0]} · {k[1]} attacked", xlabel=lambda k: f"ε ({k[1]} units)",
                        ylabel="accuracy (%)")


def plot_matrices(mats: dict[str, tuple[list[str], list[str], np.ndarray]]) -> bytes | None:
    """One accuracy heatmap per model (modality × perturbation)."""
    if not mats:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(mats)
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.6 * rows + 0.6), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        r, c, m = mats[name]
        ax.imshow(np.ma.masked_invalid(100 * m), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(c)), c, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(r)), r, fontsize=8)
        ax.set_title(name, fontsize=9)
        for i in range(len(r)):
            for j in range(len(c)):
                if not math.isnan(m[i, j]):
                    ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _table(rows: list[dict[str, Any]], columns: list[str], pct: set[str] = frozenset()) -> str:
    def cell(c: str, v: Any) -> str:
        if c in pct and isinstance(v, float):
            return "—" if math.isnan(v) else f"{100 * v:.1f}"
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(c, r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def defense_rows(rows: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The defence comparison: per defended base model, its undefended line then one line per defence.

    Same columns as the headline (every defence on the same threats), plus the defence's kind, the
    adaptive attack variants its attack rows took the per-sample worst case over, its cost in
    seconds and its reliability flags.
    """
    head_rows, cols = headline_rows(rows)
    by_model = {r["model"]: r for r in head_rows}
    models = summary.get("models", {})
    defended = [(k, m) for k, m in models.items() if m.get("defense", "none") != "none" and k in by_model]
    if not defended:
        return [], []
    flags: dict[str, list[str]] = defaultdict(list)
    for f in summary.get("flags", []):
        flags[str(f.get("model", ""))].append(str(f.get("name", "")))
    out: list[dict[str, Any]] = []
    for base in dict.fromkeys(m["base_model"] for _, m in defended):
        members = [(base, models.get(base, {}))] + [(k, m) for k, m in defended if m["base_model"] == base]
        for k, m in members:
            if k not in by_model:
                continue
            names = flags.get(k, [])
            out.append({
                **by_model[k],
                "defence": m.get("defense", "none"),
                "kind": m.get("defense_kind", "—"),
                "adaptive attack": m.get("adaptive", "—"),
                "cost (s)": m.get("defense_seconds") if m.get("defense", "none") != "none" else m.get("train_seconds"),
                "flags": ", ".join(f"{n} ×{names.count(n)}" for n in dict.fromkeys(names)) or "none",
            })
    return out, ["model", "defence", "kind", *cols[1:], "adaptive attack", "cost (s)", "flags"]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.flag{color:#a40}.ok{color:#070}.muted{color:#666;font-size:.85em}
details{margin:.6em 0}
"""


def build_html(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The report page (a string)."""
    name = summary.get("name", folder.name)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmrobust report: "
             f"{html.escape(str(name))}</title><style>{CSS}</style></head><body>",
             f"<h1>mmrobust report — {html.escape(str(name))}</h1>"]
    prov = summary.get("provenance", {})
    ds = summary.get("dataset", {})
    checksum = html.escape(str(ds.get("checksum", ""))[:12])
    git = html.escape(str(prov.get("git_sha") or "n/a")[:12])
    parts.append(
        f"<p class='muted'>seed {summary.get('seed')} · dataset checksum {checksum} · git {git}"
        f" · wall time {summary.get('wall_seconds', '?')} s"
        f" · {len({r['model'] for r in rows})} models · {len(rows)} result rows</p>")
    head_rows, cols = headline_rows(rows)
    parts.append("<h2>Headline</h2><p>Accuracy (%) on the test split: clean, with the worst missing modality, "
                 "under each attack threat at each ε of its grid (εj = j-th radius; see the full table for values; "
                 "<code>each</code> attacks count a sample as broken when any single-modality attack breaks it), "
                 "and under random corruptions.</p>")
    parts.append(_table(head_rows, cols, pct=set(cols) - {"model"}))
    drows, dcols = defense_rows(rows, summary)
    if drows:
        parts.append(
            "<h2>Defences</h2><p>Every defence on the same threats as its undefended model (accuracy, %). Attacks on "
            "a defended model are adaptive: per sample, the worst case over the attack variants that matter for the "
            "defence (<i>adaptive attack</i> column; e.g. transfer from the undefended model + BPDA + full white-box "
            "for JR, the CW loss for CRMT, detector evasion for odd-one-out). <i>cost</i>: seconds to train the model "
            "(undefended line) or to build the defence. A flagged line may overstate robustness (see the flags "
            "below).</p>")
        parts.append(_table(drows, dcols, pct=set(dcols) - {"model", "defence", "kind", "adaptive attack",
                                                           "cost (s)", "flags"}))
    for key, title, text in (
        ("accuracy_vs_eps", "Accuracy vs ε, one modality attacked",
         "Each panel: one attack threat and one attacked modality (the others clean); ε in that modality's units; "
         "the point at ε = 0 is clean accuracy."),
        ("modality_matrix", "Modality × perturbation",
         "Accuracy (%) per perturbed modality (rows) and perturbation (columns): missing-modality fills, corruptions "
         "at their strongest severity (mean over kinds), attacks at their largest ε."),
        ("certified_accuracy", "Certified accuracy",
         "Fraction of test samples classified correctly with a certified ℓ2 radius above ε (CRMT radius, "
         "docs/certify.md), for the late-fusion models: the joint panel perturbs every continuous modality in one ℓ2 "
         "ball (text held clean), the others one modality. <i>sound</i> constants make it a guarantee; "
         "<i>empirical</i> ones are the paper's estimate."),
    ):
        if key in plots:
            b64 = base64.b64encode(plots[key]).decode()
            parts.append(f"<h2>{title}</h2><p>{text}</p><img alt='{title}' src='data:image/png;base64,{b64}'>")
    flags = summary.get("flags", [])
    parts.append("<h2>Reliability flags</h2>")
    if flags:
        items = []
        for f in flags:
            what = FLAG_DOCS.get(f.get("name", ""), "")
            where = f"{f.get('model', '')} · {f.get('condition') or 'model'}"
            items.append(f"<li class='flag'><b>{html.escape(str(f.get('name')))}</b> — {html.escape(where)}: "
                         f"{html.escape(str(f.get('message', '')))} "
                         f"<span class='muted'>({html.escape(what)})</span></li>")
        parts.append("<p>These results may overstate robustness where flagged (docs/flags.md):</p><ul>"
                     + "".join(items) + "</ul>")
    else:
        parts.append("<p class='ok'>No reliability flag was raised: no sign of gradient masking, randomised models, "
                     "attacks beaten by noise, non-monotone curves or failing unbounded attacks.</p>")
    models = summary.get("models", {})
    if models:
        mrows = [{"model": k, **{c: v for c, v in m.items() if not isinstance(v, (list, dict)) and c != "defense_id"}}
                 for k, m in models.items()]
        mcols = list(dict.fromkeys(c for r in mrows for c in r))
        parts.append("<h2>Models</h2>" + _table(mrows, mcols, pct={"val_accuracy", "test_accuracy"}))
    full_cols = ["model", "defense", "threat", "label", "n", "accuracy", "attack_success_rate", "flags"]
    parts.append("<h2>All results</h2><details><summary>" + f"{len(rows)} rows (results.csv)</summary>"
                 + _table(rows, full_cols, pct={"accuracy", "attack_success_rate"}) + "</details>")
    versions = prov.get("versions", {})
    parts.append("<h2>Provenance</h2><p class='muted'>" + html.escape(
        ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; python {prov.get('python', '')}; "
        f"platform {prov.get('platform', '')}") + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: str | os.PathLike[str]) -> Path:
    """(Re)build ``report.html`` and the PNG plots of the run folder ``folder``; returns the report's path."""
    folder = Path(folder)
    rows = read_rows(folder)
    spath = folder / "summary.json"
    summary = json.loads(spath.read_text()) if spath.is_file() else {}
    plots = {}
    curves = eps_curves(folder, rows)
    curve_png = plot_eps_curves(curves)
    if curve_png:
        plots["accuracy_vs_eps"] = curve_png
    matrix_png = plot_matrices(modality_matrix(rows, curves))
    if matrix_png:
        plots["modality_matrix"] = matrix_png
    cert_png = plot_certified(certified_curves(rows))
    if cert_png:
        plots["certified_accuracy"] = cert_png
    for key, data in plots.items():
        with atomic_write(folder / f"{key}.png") as f:
            f.write(data)
    out = folder / "report.html"
    write_text(out, build_html(folder, rows, summary, plots))
    return out
