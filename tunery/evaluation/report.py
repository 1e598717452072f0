"""The comparison report, written twice from one outline: ``report.html`` (one self-contained file,
plots inline as base64 PNG) and ``report.md`` (plots beside it in ``plots/``).

A wrong answer to an example with media is shown with a thumbnail of its first image (a PDF: its first page),
at most ``THUMBNAIL`` pixels a side: inline as a ``data:image/jpeg`` URI in the HTML, a file in ``thumbnails/``
for the Markdown. The media is read again from the evaluation file (its ``fileData`` paths against its folder).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunery.data.media import Media, load_image, normalize_mime, open_media
from tunery.errors import TuneryError
from tunery.evaluation.compare import QUALITY_COLUMNS, Comparison, save_comparison, slug
from tunery.evaluation.evaluate import Evaluation, agreement
from tunery.evaluation.plots import all_plots

CAPTIONS = {
    "overview": "Quality, prompt tokens and latency per request",
    "loss-curves": "Training and validation loss of the tuned model(s)",
    "f1-bars": "F1 per class or field, per candidate",
    "confusion-matrices": "Confusion matrices (rows: expected label, columns: predicted)",
    "calibration": "Calibration (confidence against accuracy) and accuracy at coverage (most confident first)",
}
CLIP = 160  # characters of an input or output shown in a table cell
THUMBNAIL = 96  # pixels, the longer side of a wrong answer's media thumbnail
MAX_THUMBNAILS = 24  # wrong answers with media shown per candidate
MEDIA_HEADERS = ["line", "media", "input", "expected", "output"]


@dataclass(frozen=True)
class Thumbnail:
    """A table cell holding a small image (JPEG bytes) of an example's media."""

    name: str  # file stem in thumbnails/ (the Markdown's copy)
    jpeg: bytes
    alt: str

    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str | Thumbnail]] | list[list[str]]


@dataclass(frozen=True)
class Image:
    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Image | list[str]] = field(default_factory=list)  # text, table, image, bullets


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    summary: Path
    plots: list[Path]


def write_report(
    comparison: Comparison, output: str | Path, title: str = "tunery evaluation", single: bool = False
) -> ReportFiles:
    """Write the report, each candidate's predictions and ``comparison.json`` under ``output``
    (``single``: the one candidate's ``evaluation.json`` and ``predictions.jsonl`` at the top)."""
    output = Path(output)
    summary = save_comparison(comparison, output, single)
    plots = all_plots(comparison.evaluations)
    plot_dir = output / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in plots.items():
        (plot_dir / f"{name}.png").write_bytes(png)
        paths.append(plot_dir / f"{name}.png")
    sections = outline(comparison, plots)
    thumbnails = [c for s in sections for b in s.blocks if isinstance(b, Table) for r in b.rows for c in r]
    for cell in thumbnails:
        if isinstance(cell, Thumbnail):
            (output / "thumbnails").mkdir(exist_ok=True)
            (output / "thumbnails" / f"{cell.name}.jpg").write_bytes(cell.jpeg)
    html_path, md_path = output / "report.html", output / "report.md"
    html_path.write_text(to_html(title, sections), encoding="utf-8")
    md_path.write_text(to_markdown(title, sections), encoding="utf-8")
    return ReportFiles(html_path, md_path, summary, paths)


def outline(comparison: Comparison, plots: dict[str, bytes]) -> list[Section]:
    """Every section of the report, in order."""
    headers, rows = comparison.table()
    p = comparison.pricing
    intro = (
        f"{len(comparison.evaluations[0].predictions) if comparison.evaluations else 0} examples from "
        f"{comparison.data}; task: {comparison.task.kind}"
        + (f" ({len(comparison.task.labels)} labels)" if comparison.task.labels else "")
        + f". Cost assumes ${p.input_per_million:g} per million prompt tokens and ${p.output_per_million:g} per "
        f"million output tokens. Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )
    sections = [Section("Summary", [intro + " " + _weights_note(comparison.evaluations), Table(headers, rows)])]
    weights = _weights(comparison)
    if weights is not None:
        sections.append(weights)
    sections.append(Section("Plots", [Image(n, png, CAPTIONS.get(n, n)) for n, png in plots.items()]))
    confidence = _confidence(comparison.evaluations)
    if confidence is not None:
        sections.append(confidence)
    if comparison.perturbations:
        sections.append(_robustness(comparison.evaluations))
    sections += [_errors(e) for e in comparison.evaluations]
    if comparison.advice:
        sections.append(_advice(comparison.advice))
    return sections


def _weights_note(evaluations: Sequence[Evaluation]) -> str:
    forms = sorted({e.weights for e in evaluations})
    note = f"Weights measured: {', '.join(forms)}"
    if any(e.reference is not None for e in evaluations):
        note += ", each beside fp32 (the reference)"
    return note + " (the model server's form on this machine, unless the evaluation was told another)."


def _weights(comparison: Comparison) -> Section | None:
    """Every quality metric with the weights measured beside fp32's, and the answers the two forms agree on."""
    found = [e for e in comparison.evaluations if e.reference is not None]
    if not found:
        return None
    quality = QUALITY_COLUMNS[comparison.task.kind]
    headers = ["candidate", "weights", *(title for _, title, _ in quality), "answers as fp32"]
    rows = []
    for e in found:
        assert e.reference is not None
        same, total = agreement(e.predictions, e.reference.predictions)
        for each in (e, e.reference):
            values = [f"{each.summary[key]:.3f}" for key, _, _ in quality]
            rows.append([e.candidate.name, each.weights, *values, f"{same}/{total}" if each is e else "-"])
    text = (
        "The model server computes with another weights form than fp32 on this machine; both were measured on the "
        "same examples, and the report's other sections show the served form's answers."
    )
    return Section("Served weights beside fp32", [text, Table(headers, rows)])


def _clip(value: Any) -> str:
    if value is None:
        return "—"
    if value == "":
        return "(empty)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def _confidence(evaluations: Sequence[Evaluation]) -> Section | None:
    """Accuracy at coverage per candidate: answer only when the label's probability is at least the threshold."""
    found = [e for e in evaluations if "calibration" in e.summary]
    if not found:
        return None
    coverages = [c["coverage"] for c in found[0].summary["calibration"]["coverage"]]
    headers = ["candidate", "ECE", *(f"accuracy at {c:.0%} (threshold)" for c in coverages)]
    rows = []
    for e in found:
        cal = e.summary["calibration"]
        cells = [f"{c['accuracy']:.1%} (≥ {c['threshold']:.2f})" for c in cal["coverage"]]
        rows.append([e.candidate.name, f"{cal['ece']:.3f}", *cells])
    text = (
        "Confidence is the probability the model gave its answer (the label's tokens' probabilities multiplied). "
        "Answering only when it is at least the threshold covers that share of the examples, at that accuracy; "
        "ECE is the mean gap between confidence and accuracy (0: calibrated)."
    )
    return Section("Confidence", [text, Table(headers, rows)])


def _robustness(evaluations: Sequence[Evaluation]) -> Section:
    rows = [
        [
            e.candidate.name,
            name,
            r["metric"],
            f"{r['clean']:.3f}",
            f"{r['perturbed']:.3f}",
            f"{r['drop']:+.3f}",
            str(r["broken"]),
        ]  # fmt: skip
        for e in evaluations
        for name, r in e.robustness.items()
    ]
    headers = ["candidate", "perturbation", "metric", "clean", "perturbed", "drop", "answers broken"]
    note = "Each perturbation rewrites the user's text (seeded, the same on every run); drop = clean − perturbed."
    return Section("Robustness", [note, Table(headers, rows)])


def _errors(e: Evaluation) -> Section:
    a = e.errors
    section = Section(f"Error analysis: {e.candidate.name}", [f"{a['errors']} of {a['examples']} answers not right."])
    wrong = [p for p in e.predictions if p.score < 1.0 and p.media]
    if wrong:
        shown = wrong[:MAX_THUMBNAILS]
        thumbs = thumbnails(e.data, [p.line for p in shown], slug(e.candidate.name))
        rows: list[list[str | Thumbnail]] = [
            [str(p.line), thumbs.get(p.line) or ", ".join(p.media), _clip(p.input), _clip(p.target), _clip(p.output)]
            for p in shown
        ]
        more = f" (the first {len(shown)} of {len(wrong)})" if len(wrong) > len(shown) else ""
        section.blocks += [f"Wrong answers to examples with media{more}:", Table(MEDIA_HEADERS, rows)]
    if "worst_classes" in a:
        rows = [[c["label"], f"{c['errors']} / {c['support']}"] for c in a["worst_classes"]]
        section.blocks += ["Classes it gets wrong most:", Table(["expected label", "wrong / examples"], rows)]
        rows = [
            [
                c["target"],
                c["predicted"],
                str(c["count"]),
                _clip(c["examples"][0]["input"]),
                _clip(c["examples"][0]["output"]),
            ]  # fmt: skip
            for c in a["confusions"]
        ]
        headers = ["expected", "answered", "times", "example input", "its output"]
        section.blocks += ["Most frequent confusions:", Table(headers, rows)]
    if "worst_fields" in a:
        section.blocks.append(f"Outputs that are not a JSON object: {a['invalid_json']}.")
        rows = [
            [
                f["field"],
                str(f["errors"]),
                str(f["missing"]),
                str(f["wrong"]),
                str(f["spurious"]),
                _clip(f["examples"][0]["expected"]),
                _clip(f["examples"][0]["got"]),
            ]  # fmt: skip
            for f in a["worst_fields"]
        ]
        headers = ["field", "errors", "missing", "wrong", "spurious", "example expected", "example got"]
        section.blocks += ["Fields it gets wrong most:", Table(headers, rows)]
    if "lowest_scores" in a:
        rows = [[str(x["line"]), f"{x['rougeL']:.3f}", _clip(x["target"]), _clip(x["output"])]
                for x in a["lowest_scores"]]  # fmt: skip
        section.blocks += ["Lowest-scoring answers:", Table(["line", "ROUGE-L", "expected", "output"], rows)]
    return section


def thumbnails(data: str, lines: Sequence[int], prefix: str) -> dict[int, Thumbnail]:
    """A thumbnail of the first image (or PDF page) of each example on ``lines`` of the evaluation file ``data``;
    an example whose media cannot be read again (the file moved, say) has none."""
    from tunery.data.validation import read_examples
    from tunery.evaluation.evaluate import data_source
    from tunery.evaluation.tasks import ALL_MODALITIES

    try:
        examples = read_examples(data, modalities=ALL_MODALITIES, require_model_turn=False).examples
    except (OSError, ValueError, TuneryError):
        return {}
    wanted, source, out = set(lines), data_source(data), {}
    for example in examples:
        if example.line not in wanted:
            continue
        part = next((p for t in example.prompt().turns for p in t.parts if p.modality in ("image", "pdf")), None)
        if part is None:
            continue
        try:
            jpeg = _thumbnail(open_media(part, source))
        except (OSError, ValueError, TuneryError):  # MediaError is a ValueError
            continue
        out[example.line] = Thumbnail(f"{prefix}-line-{example.line}", jpeg, f"line {example.line}: {part.mime_type}")
    return out


def _thumbnail(media: Media) -> bytes:
    """JPEG bytes of the image (a PDF's first page, rendered small) at most ``THUMBNAIL`` pixels a side."""
    import io

    if normalize_mime(media.mime_type) == "application/pdf":
        import pypdfium2 as pdfium

        doc = pdfium.PdfDocument(media.read())
        try:
            page = doc[0]
            scale = THUMBNAIL / max(page.get_size())
            image = page.render(scale=scale).to_pil().convert("RGB")
        finally:
            doc.close()
    else:
        image = load_image(media)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _advice(advice: dict[str, Any]) -> Section:
    section = Section(f"Data advice: {advice['train']} ({advice['examples']} examples)", [advice["advice"]])
    if advice["exact_duplicates"]:
        rows = [[_lines(d["lines"]), _clip(d["input"])] for d in advice["exact_duplicates"]]
        section.blocks += ["Exact duplicates:", Table(["lines", "input"], rows)]
    if advice["near_duplicates"]["top"]:
        rows = [
            [_lines(d["lines"]), f"{d['similarity']:.3f}", _clip(d["inputs"][0]), _clip(d["inputs"][1])]
            for d in advice["near_duplicates"]["top"]
        ]
        section.blocks += ["Near duplicates:", Table(["lines", "similarity", "first", "second"], rows)]
    if advice["conflicting_labels"]:
        rows = [[_clip(c["input"]), _answers(c["answers"])] for c in advice["conflicting_labels"]]
        section.blocks += ["Conflicting answers for the same input:", Table(["input", "answers"], rows)]
    balance = advice["class_balance"]
    if balance:
        rows = [[label, str(n)] for label, n in balance["counts"].items()]
        section.blocks += [
            f"Class balance (largest / smallest: {balance['ratio']}):",
            Table(["label", "examples"], rows),
        ]
    if advice["truncated"] is not None:
        lines = advice["truncated"]["lines"]
        section.blocks.append(
            f"Examples truncated at {advice['truncated']['max_length']} tokens: "
            + (", ".join(f"line {n}" for n in lines) if lines else "none")
            + "."
        )
    coverage = advice["coverage"]
    if coverage:
        baseline = coverage["train_median"]
        section.blocks.append(
            f"Distance of the {coverage['prompts']} evaluation prompts from the nearest training prompt "
            f"(cosine distance, {coverage['model']}): median {coverage['distance_median']:.3f}, "
            f"p95 {coverage['distance_p95']:.3f}, max {coverage['distance_max']:.3f}"
            + (f"; training prompts sit {baseline:.3f} from each other (median)." if baseline is not None else ".")
        )
        rows = [[str(x["line"]), f"{x['distance']:.3f}", _clip(x["input"]), f"{x['nearest_train_line']}: "
                 + _clip(x["nearest_train_input"])] for x in coverage["least_covered"]]  # fmt: skip
        section.blocks += [
            "Least-covered evaluation prompts:",
            Table(["line", "distance", "prompt", "nearest training"], rows),
        ]
    return section


def _answers(answers: dict[str, list[int]]) -> str:
    return "; ".join(f"{answer} (lines {_lines(lines)})" for answer, lines in answers.items())


def _lines(lines: Sequence[int]) -> str:
    return ", ".join(map(str, lines))


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1f2328;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{font-size:.85rem;color:#57606a}
"""


def to_html(title: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _html_block(block: str | Table | Image | list[str]) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
        rows = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, list):
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block) + "</ul>"
    return f"<p>{html.escape(block)}</p>"


def _html_cell(cell: str | Thumbnail) -> str:
    if isinstance(cell, Thumbnail):
        return f'<img alt="{html.escape(cell.alt)}" src="{cell.data_uri()}">'
    return html.escape(cell)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            out += [_markdown_block(block), ""]
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str | Thumbnail]]) -> str:
    def cell(text: str | Thumbnail) -> str:
        if isinstance(text, Thumbnail):
            return f"![{text.alt}](thumbnails/{text.name}.jpg)"
        return text.replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_block(block: str | Table | Image | list[str]) -> str:
    if isinstance(block, Table):
        return markdown_table(block.headers, block.rows)
    if isinstance(block, Image):
        return f"![{block.caption}](plots/{block.name}.png)"
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    return block
