"""report.html: the evaluation for people, one self-contained file (images as data: URIs, inline
CSS, no script, no request leaves it).

In the order a reviewer reads: the headline (INT8 test figures, size, latency, which student
shipped and why, the app path against an antialiased resize, MediaPipe's agreement); per class
the precision-recall curve with the shipped threshold's operating point and the validation and
test score histograms of positives and negatives with the threshold line; the worst test
errors per class as thumbnails of the original images; the training curves; the comparison table.

Built from saved arrays (scores, labels) and the stages' JSON files: no model runs here. Its
cost is the plots (two per class) and the gallery's thumbnails (up to ``2 * GALLERY_PER_KIND``
per class, each original decoded once, at reduced scale where the JPEG allows). Missing input
(no baseline student, no MediaPipe block, no validation scores, a class without test
positives, an unreadable original) is said in place; it never fails the build.

Plots: matplotlib (Agg, PNG quantised to a 64-colour palette): the plotting library of the
Python data stack, no browser or JavaScript needed to render, a few kB per plot.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GALLERY_PER_KIND = 4  # worst false positives and false negatives shown per class
THUMB_PX = 112  # longest side of a gallery thumbnail
THUMB_QUALITY = 70
HIST_BINS = np.linspace(0.0, 1.0, 65)  # 4 INT8 output steps (1/256) per bin: no aliasing
CURVE_POINTS = 300  # a PR curve is drawn through at most this many of its points
EDGE = 1 / 64  # "near the threshold": within one histogram bin of it
DPI = 80

History = dict[str, list[float]]
# a model's training: its phases in order, (name, Keras history); or why there is none
Training = list[tuple[str, History]] | str
ReadOriginal = Callable[[int], bytes]  # test row -> the original file's bytes


@dataclass
class ReportData:
    """What report.html shows. Scores and labels are [N, C] with rows in test-record order."""

    metrics: dict[str, Any]  # metrics.json
    classes: list[str]
    thresholds: dict[str, float]
    test_scores: np.ndarray
    test_labels: np.ndarray
    test_paths: list[str]
    val_scores: np.ndarray | None = None  # the INT8 model's, from optimize_thresholds
    val_labels: np.ndarray | None = None
    val_missing: str = ""  # why there are no validation scores
    training: dict[str, Training] = field(default_factory=dict)  # model title -> its training
    read_original: ReadOriginal | None = None
    originals_missing: str = ""  # why there are no originals to show


# === Small pieces ===


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _figure_png(fig: Any) -> str:
    """The figure as a data: URI of a palette PNG (a third of the RGBA file's size)."""
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI)
    raw.seek(0)
    image = Image.open(raw).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _img(uri: str, alt: str, kind: str, cls: str = "") -> str:
    extra = f' data-class="{_e(cls)}"' if cls else ""
    return f'<img class="{kind}" data-kind="{kind}"{extra} alt="{_e(alt)}" src="{uri}">'


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height))  # fixed margins: constrained layout costs 40% of a plot's time
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.16, top=0.91)
    return fig, fig.add_subplot()


# === 1. Headline ===


def _headline(data: ReportData) -> str:
    m = data.metrics
    test = m.get("test", {})
    latency = m.get("latency_ms", {})
    size = m.get("size_bytes")
    cards = [
        ("test macro mAP", "test.map_macro", test.get("map_macro")),
        ("test micro mAP", "test.map_micro", test.get("map_micro")),
        ("test macro F1", "test.f1_macro", test.get("f1_macro")),
        ("test micro F1", "test.f1_micro", test.get("f1_micro")),
        ("ms per image, 1 thread", "latency_ms.threads_1", latency.get("threads_1")),
        ("ms per image, 2 threads", "latency_ms.threads_2", latency.get("threads_2")),
    ]
    # the figures as metrics.json holds them (already rounded there)
    cells = "".join(
        f'<div class="card"><div class="value" data-key="{key}">{_e("n/a" if value is None else value)}</div>'
        f'<div class="label">{_e(label)}</div></div>'
        for label, key, value in cards
    )
    megabytes = f"{size / 1e6:.2f} MB" if isinstance(size, int | float) else "n/a"
    cells += (
        f'<div class="card"><div class="value">{megabytes}</div><div class="label">size '
        f'(<span data-key="size_bytes">{_e(size)}</span> bytes)</div></div>'
    )
    parts = [
        f"<h1>mobiletag evaluation: {_e(m.get('model', 'model'))}</h1>",
        f"<p>The INT8 model on {_e(test.get('num_images', '?'))} test images, with the per-class thresholds tuned "
        f"on validation (strategy {_e(m.get('thresholds_strategy', '?'))}); latency: LiteRT (XNNPACK) on the "
        "evaluating machine's CPU.</p>",
        f'<div class="cards">{cells}</div>',
    ]
    block = m.get("distillation")
    if block:
        parts.append(
            f'<p id="shipped"><b>Shipped student: <span data-key="distillation.shipped">{_e(block["shipped"])}'
            f"</span></b>: {_e(block['reason'])}.</p>"
        )
    else:
        parts.append(
            _note("Shipped student: the one student of this run (no distillation block: no selection between two).")
        )
    app = m.get("app_path")
    if app:
        parts.append(
            f'<p id="app-path">App input path ({_e(app.get("num_images"))} test images): macro mAP '
            f'<b data-key="app_path.documented">{_e(app.get("documented"))}</b> through the documented path (the '
            "app's pre-scale, then MediaPipe's resize), "
            f'<span data-key="app_path.antialiased">{_e(app.get("antialiased"))}</span> fed by an antialiased resize '
            f'straight to the input size: gap <b data-key="app_path.gap">{_e(app.get("gap"))}</b> '
            f"({_e(app.get('goal'))}).</p>"
        )
    mp = m.get("mediapipe")
    if mp:
        parts.append(
            f'<p id="mediapipe">MediaPipe Tasks ImageClassifier (the model\'s metadata, default options): label sets '
            f"equal to the thresholds' on a share of "
            f'<b data-key="mediapipe.label_set_agreement">{_e(mp.get("label_set_agreement"))}</b> of the '
            f"{_e(mp.get('num_images'))} test images; macro mAP {_e(mp.get('map_macro'))} (|difference| "
            f"{_e(mp.get('map_macro_difference'))}), micro F1 {_e(mp.get('f1_micro'))}.</p>"
        )
    else:
        parts.append(
            _note("MediaPipe: no MediaPipe block in metrics.json (the model evaluated has no MediaPipe results).")
        )
    return "\n".join(parts)


# === 2. Per class: PR curve and score histograms ===


def _downsample(*arrays: np.ndarray, points: int = CURVE_POINTS) -> list[np.ndarray]:
    n = len(arrays[0])
    if n <= points:
        return list(arrays)
    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return [a[keep] for a in arrays]


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float | None, float]:
    """(precision, recall) of one class at ``threshold`` (precision None when nothing is predicted)."""
    y = labels.astype(bool)
    predicted = scores >= threshold
    tp = int(np.sum(predicted & y))
    count = int(np.sum(predicted))
    positives = int(np.sum(y))
    return (tp / count if count else None), (tp / positives if positives else 0.0)


def _pr_curve(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float, ap: Any) -> str:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels.astype(int), scores)
    precision, recall = _downsample(precision, recall)
    p, r = operating_point(labels, scores, threshold)
    fig, ax = _figure(3.4, 2.6)
    ax.plot(recall, precision, color="#1f5fa8", lw=1.5, drawstyle="steps-post")
    if p is not None:
        ax.plot([r], [p], "o", color="#d62728", ms=7, label=f"threshold {threshold:.3f}: P {p:.2f}, R {r:.2f}")
        ax.legend(loc="lower left", fontsize=7)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(f"{name}: precision-recall (test), AP {_fmt(ap)}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.label.set_size(8)
    ax.yaxis.label.set_size(8)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _histogram(
    name: str,
    threshold: float,
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
) -> str:
    fig, ax = _figure(3.4, 2.6)
    splits = [("test", test, "-")] + ([("val", val, "--")] if val is not None else [])
    for split, (labels, scores), style in splits:
        y = labels.astype(bool)
        for positive, color in ((True, "#2ca02c"), (False, "#7f7f7f")):
            chosen = scores[y == positive]
            if not len(chosen):
                continue
            counts, _ = np.histogram(chosen, bins=HIST_BINS)
            share = counts / len(chosen)
            ax.stairs(share, HIST_BINS, color=color, ls=style, lw=1.3, label=f"{split} {'pos' if positive else 'neg'}")
    ax.axvline(threshold, color="#d62728", lw=1.5, label=f"threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), xlabel="score", ylabel="share of the group")
    ax.set_title(f"{name}: scores, threshold {threshold:.3f}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.label.set_size(8)
    ax.yaxis.label.set_size(8)
    return _figure_png(fig)


def _per_class(data: ReportData) -> str:
    per_class = data.metrics.get("test", {}).get("per_class", {})
    parts = [
        "<h2>Per class: precision-recall and scores around the threshold</h2>",
        "<p>Left: the test precision-recall curve, the dot is the shipped threshold. Right: the share of "
        "positives (green) and negatives (grey) per score bin, test solid, validation dashed, the threshold red: "
        "a threshold next to a cluster of scores moves many decisions with a small change.</p>",
    ]
    if data.val_scores is None:
        parts.append(_note(f"Validation scores: {data.val_missing or 'not available'}; the histograms show test only."))
    sections = []
    for c, name in enumerate(data.classes):
        t = float(data.thresholds[name])
        y, s = data.test_labels[:, c], data.test_scores[:, c]
        m = per_class.get(name, {})
        figures = (
            f"AP {_fmt(m.get('ap'))}, precision {_fmt(m.get('precision'))}, recall {_fmt(m.get('recall'))}, "
            f"F1 {_fmt(m.get('f1'))}, threshold {_fmt(t)}, test positives {int(y.sum())} of {len(y)}"
        )
        near = ""
        if data.val_scores is not None:
            vs = data.val_scores[:, c]
            close = int(np.sum(np.abs(vs - t) <= EDGE))
            near = f"; validation images within ±{EDGE:.3f} of the threshold: {close} of {len(vs)}"
        if y.sum() > 0:
            pr = _img(_pr_curve(name, y, s, t, m.get("ap")), f"{name} precision-recall curve", "pr-curve", name)
        else:
            pr = f'<p class="note missing" data-kind="pr-missing" data-class="{_e(name)}">No positive test image of '
            pr += f"{_e(name)}: no precision-recall curve (every score above the threshold is a false positive).</p>"
        val = None if data.val_scores is None else (data.val_labels[:, c], data.val_scores[:, c])  # type: ignore[index]
        hist = _img(_histogram(name, t, (y, s), val), f"{name} score histogram", "histogram", name)
        sections.append(
            f'<section class="class" data-class="{_e(name)}"><h3>{_e(name)}</h3>'
            f'<p class="figures">{_e(figures + near)}</p><div class="pair">{pr}{hist}</div></section>'
        )
    return "\n".join(parts) + '\n<div class="classes">' + "\n".join(sections) + "</div>"


# === 3. Gallery of test errors ===


def thumbnail(data: bytes, size: int = THUMB_PX) -> str:
    """A downscaled JPEG of an original image file (EXIF orientation applied) as a data: URI.

    JPEGs are decoded at reduced scale (``draft``): a 12 MP photo costs a fraction of its full decode.
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size * 2, size * 2))
        upright = ImageOps.exif_transpose(image)
        rgb = upright.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def worst_errors(
    labels: np.ndarray, scores: np.ndarray, threshold: float, count: int = GALLERY_PER_KIND
) -> tuple[list[int], list[int]]:
    """Rows of the ``count`` highest-scored false positives and lowest-scored false negatives of one
    class (ties: the earlier row first)."""
    y = labels.astype(bool)
    predicted = scores >= threshold
    fp = np.flatnonzero(predicted & ~y)
    fn = np.flatnonzero(~predicted & y)
    fp = fp[np.argsort(-scores[fp], kind="stable")][:count]
    fn = fn[np.argsort(scores[fn], kind="stable")][:count]
    return [int(i) for i in fp], [int(i) for i in fn]


def _gallery(data: ReportData) -> str:
    parts = [
        "<h2>Test errors</h2>",
        f"<p>Per class, the worst false positives (FP: negatives with the highest scores) and false negatives "
        f"(FN: positives with the lowest scores), up to {GALLERY_PER_KIND} each, as thumbnails of the original "
        "images; true and predicted labels are the image's whole label sets.</p>",
    ]
    if data.read_original is None:
        parts.append(_note(f"No thumbnails: {data.originals_missing or 'the original images are not available'}."))
    thresholds = np.array([float(data.thresholds[c]) for c in data.classes])
    predicted = data.test_scores >= thresholds[None, :]
    thumbs: dict[int, str] = {}

    def entry(row: int, c: int, kind: str) -> str:
        true = [n for k, n in enumerate(data.classes) if data.test_labels[row, k]]
        pred = [n for k, n in enumerate(data.classes) if predicted[row, k]]
        path = data.test_paths[row] if row < len(data.test_paths) else f"row {row}"
        picture = ""
        if data.read_original is not None:
            if row not in thumbs:
                try:
                    thumbs[row] = thumbnail(data.read_original(row))
                except Exception as exc:  # an unreadable original is shown as such, never fails the report
                    log.warning("report: no thumbnail for %s: %s", path, exc)
                    thumbs[row] = ""
            if thumbs[row]:
                picture = _img(thumbs[row], path, "thumb")
            else:
                picture = '<div class="nothumb">original not readable</div>'
        caption = (
            f"<b>{_e(kind.upper())}</b> {_e(data.classes[c])} score {data.test_scores[row, c]:.3f}"
            f"<br>true: {_e(', '.join(true) or '(none)')}<br>predicted: {_e(', '.join(pred) or '(none)')}"
            f'<br><span class="path">{_e(path)}</span>'
        )
        return (
            f'<figure class="error" data-kind="{kind}" data-class="{_e(data.classes[c])}" data-row="{row}">'
            f"{picture}<figcaption>{caption}</figcaption></figure>"
        )

    for c, name in enumerate(data.classes):
        fp, fn = worst_errors(data.test_labels[:, c], data.test_scores[:, c], float(thresholds[c]))
        if not fp and not fn:
            none = "no false positive, no false negative on the test split"
            parts.append(f'<section class="gallery" data-class="{_e(name)}"><h3>{_e(name)}</h3>{_note(none)}</section>')
            continue
        rows = []
        for kind, chosen, none in (
            ("fp", fp, "no false positive"),
            ("fn", fn, "no false negative" if data.test_labels[:, c].any() else "no positive test image"),
        ):
            cells = "".join(entry(i, c, kind) for i in chosen) or f'<p class="note">{_e(none)}</p>'
            rows.append(f'<div class="row"><div class="kind">{kind.upper()}</div>{cells}</div>')
        parts.append(f'<section class="gallery" data-class="{_e(name)}"><h3>{_e(name)}</h3>{"".join(rows)}</section>')
    return "\n".join(parts)


# === 4. Training curves ===


def best_epoch(phases: Sequence[tuple[str, History]]) -> int | None:
    """The 0-based epoch (over all phases) with the highest validation mAP, the first of ties."""
    values = [v for _, h in phases for v in h.get("val_map", [])]
    return int(np.argmax(values)) if values else None


def _training_plot(title: str, phases: Sequence[tuple[str, History]]) -> str:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8.4, 2.6)[0]
    fig.clear()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.9, wspace=0.22)
    loss_ax, map_ax = fig.subplots(1, 2)
    start = 0
    for i, (phase, history) in enumerate(phases):
        n = max((len(v) for v in history.values()), default=0)
        epochs = np.arange(start + 1, start + n + 1)
        for key, style in (("loss", "-"), ("val_loss", "--")):
            if history.get(key):
                loss_ax.plot(epochs, history[key], style, marker=".", label=f"{phase} {key}", color=f"C{i}")
        if history.get("val_map"):
            map_ax.plot(epochs, history["val_map"], "-", marker=".", label=phase, color=f"C{i}")
        if i:
            for ax in (loss_ax, map_ax):
                ax.axvline(start + 0.5, color="#999999", ls=":", lw=1)
        start += n
    best = best_epoch(phases)
    if best is not None:
        values = [v for _, h in phases for v in h.get("val_map", [])]
        map_ax.plot([best + 1], [values[best]], "*", color="#d62728", ms=12, label=f"best: epoch {best + 1}")
    loss_ax.set_title(f"{title}: training loss", fontsize=8)
    map_ax.set_title(f"{title}: validation mAP", fontsize=8)
    for ax in (loss_ax, map_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return _figure_png(fig)


def _training(data: ReportData) -> str:
    parts = [
        "<h2>Training</h2>",
        "<p>Loss and validation mAP per epoch, phases in order (dotted line between phases); the star marks "
        "the epoch with the best validation mAP.</p>",
    ]
    if not data.training:
        parts.append(_note("No training histories were given to the report."))
    for title, training in data.training.items():
        if isinstance(training, str):
            parts.append(f"<h3>{_e(title)}</h3>" + _note(training))
            continue
        if not any(h for _, h in training):
            parts.append(f"<h3>{_e(title)}</h3>" + _note("its metrics file records no epoch"))
            continue
        best = best_epoch(training)
        note = "" if best is None else f" (best validation mAP at epoch {best + 1})"
        parts.append(
            f"<h3>{_e(title)}{_e(note)}</h3>" + _img(_training_plot(title, training), f"{title} training", "training")
        )
    return "\n".join(parts)


# === 5. Comparison ===


def _sample_note(m: dict[str, Any]) -> str:
    """How many images the comparison and the distillation block cover (metrics.json's comparison_images)."""
    images = m.get("comparison_images")
    if not images:
        return ""
    val = "" if images.get("val") is None else f", {images['val']:,} of {images['val_split']:,} validation images"
    how = "every image" if images.get("sample") == "every image" else f"a {images.get('sample')}"
    return (
        f': <span id="comparison-images">{images["test"]:,} of {images["test_split"]:,} test images{val}</span> '
        f"({_e(how)}; {_e(images.get('key'))}); the headline's INT8 figures cover every test image"
    )


def _comparison(data: ReportData) -> str:
    m = data.metrics
    compare = m.get("compare", {})
    names = {"teacher": "teacher (float)", "student": "student (float, shipped)", "student_int8": "student INT8"}
    rows = "".join(
        f"<tr><td>{_e(names.get(k, k))}</td><td>{_e(_fmt(v.get('map_macro')))}</td>"
        f"<td>{_e(_fmt(v.get('map_micro')))}</td></tr>"
        for k, v in compare.items()
    )
    parts = [
        "<h2>Comparison</h2>",
        f"<p>The same test images through each model (macro and micro mAP){_sample_note(m)}.</p>",
        f'<table id="compare"><tr><th>model</th><th>macro mAP</th><th>micro mAP</th></tr>{rows}</table>'
        if rows
        else _note("No comparison in metrics.json."),
    ]
    block = m.get("distillation")
    if not block:
        parts.append(_note("Distilled vs baseline: no distillation block (this run had no student selection)."))
        return "\n".join(parts)
    head = "".join(
        f"<th>{s} {k}</th>" for s in ("val", "test") for k in ("macro mAP", "micro mAP", "macro F1", "micro F1")
    )
    body = ""
    for name, figures in block.get("students", {}).items():
        if figures is None:
            body += f'<tr><td>{_e(name)}</td><td colspan="8">not trained in this run</td></tr>'
            continue
        cells = "".join(
            f"<td>{_e(_fmt(figures[s].get(k)))}</td>"
            for s in ("val", "test")
            for k in ("map_macro", "map_micro", "f1_macro", "f1_micro")
        )
        shipped = " (shipped)" if name == block.get("shipped") else ""
        body += f"<tr><td>{_e(name + shipped)}</td>{cells}</tr>"
    parts.append(
        "<h3>Distilled vs baseline (the same student without the teacher)</h3>"
        f'<table id="distillation"><tr><th>student</th>{head}</tr>{body}</table>'
    )
    diff = block.get("test_difference")
    if diff is None:
        parts.append(_note("No baseline student in this run (pipeline parameter baseline_student: false)."))
    else:
        low, high = diff["ci"]
        parts.append(
            f'<p id="difference">Test macro mAP, {_e(diff["definition"])}: <b>{_e(_fmt(diff["value"]))}</b> '
            f"({round(diff['confidence'] * 100)}% interval {_e(_fmt(low))} to {_e(_fmt(high))}): "
            f"{_e(diff['verdict'])}."
            + (f" The interval covers {_e(diff['covers'])}." if "covers" in diff else "")
            + "</p>"
        )
    return "\n".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:14px;margin:14px 0 4px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;
min-width:120px}.card .value{font-size:20px;font-weight:600}.card .label{font-size:12px;color:#666}
.note{color:#8a5a00;background:#fff6e0;padding:4px 8px;border-radius:4px;font-size:13px}
.classes{display:flex;flex-wrap:wrap;gap:4px 24px}section.class{width:560px}
.pair{display:flex;gap:8px;align-items:flex-start}.pair .note{width:272px}.figures{font-size:12px;color:#444;margin:2px 0}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:4px 0}.row .note{margin:0}
.kind{width:28px;font-weight:600}
figure.error{margin:0;width:170px;font-size:11px}figure.error img{display:block;max-width:112px;max-height:112px}
.path{color:#777;word-break:break-all}.nothumb{width:112px;height:60px;background:#eee;font-size:11px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
"""


def build_report(data: ReportData) -> str:
    """report.html's text: headline, per-class curves and histograms, error gallery, training, comparison."""
    body = "\n".join(
        section(data) for section in (_headline, _per_class, _gallery, _training, _comparison)
    )  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>mobiletag report: {_e(data.metrics.get('model', ''))}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(data: ReportData, path: str | Path) -> Path:
    """Write report.html to ``path`` (a file) and return it."""
    target = Path(path)
    target.write_text(build_report(data), encoding="utf-8")
    return target


def read_training(folder: str | Path | None, file_name: str, phases: dict[str, str], what: str) -> Training:
    """A model's training from its stage's metrics file: ``phases`` maps a phase title to the key
    of its history in the file ("history", "warmup_history", "history.phase_a"); else why not."""
    import json

    if folder is None:
        return f"{what}: not given to the evaluate step"
    path = Path(folder) / file_name
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{what}: no {file_name} in its folder (not trained in this run)"
    except (OSError, ValueError) as exc:
        return f"{what}: {file_name} cannot be read ({exc})"
    out: list[tuple[str, History]] = []
    for title, key in phases.items():
        value: Any = saved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict) and value:
            out.append((title, {k: [float(x) for x in v] for k, v in value.items() if isinstance(v, list)}))
    return out if out else f"{what}: {file_name} records no epoch"
