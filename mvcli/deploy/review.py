"""A static review page of a predictions file (``mvcli review``): every action's views beside
the model's answer.

One HTML file written beside ``predictions.json`` (``predictions.html``): CSS, JavaScript and
the data (one inline JSON blob) are inside it, so it opens from disk, offline, in any current
browser, with no server. The clips are referenced by relative path from the page; a view whose
container or codec a browser cannot play (anything but H.264 / VP9 / AV1 in MP4, VP8 / VP9 /
AV1 in WebM, 8-bit 4:2:0) is transcoded once to H.264 MP4 into a folder beside the page, and
the page says which.

Per action: every view (``preload="none"``: a clip loads only when its card is on screen),
the top-2 classes of each head with their probabilities as bars, the ground truth and
right/wrong per head when annotations are given, and the views skipped and why. Right and
wrong are the official evaluator's (``mvcli.deploy.scoring.heads_correct``), and an action
counted by the evaluator but absent from the predictions is wrong, as ``mvcli score`` counts
it, so the page's counts agree with ``mvcli score`` on the same files. Filters (head, true
class, predicted class, right/wrong), sorting by confidence and the per-head confusion
matrices (each cell a link to its actions) live in the page's address (``#head=action&...``);
only one page of actions is in the document at a time, so 2,000 actions filter smoothly.
"""

# ruff: noqa: E501 - the page's CSS and JavaScript below keep their own line lengths
from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from mvcli.data.annotations import find_views, label_field_error, load_annotations
from mvcli.data.taxonomy import (
    ACTION_CLASSES,
    HEADS,
    OFFENCE_SEVERITY_FIELDS,
    SkipAction,
    has_labels,
    labels_from_annotation,
)
from mvcli.deploy.scoring import heads_correct, score
from mvcli.utils.errors import DataError, UsageError
from mvcli.utils.io import atomic_write_text

Transcode = Literal["auto", "never", "always"]
# (file extensions, codecs) a current browser plays; 8-bit 4:2:0 only (High 10 / 4:4:4 do not).
_PLAYABLE = (
    ({".mp4", ".m4v", ".mov"}, {"h264", "av1", "vp9"}),
    ({".webm"}, {"vp8", "vp9", "av1"}),
)
_PLAYABLE_PIXELS = {"yuv420p", "yuvj420p"}


def review_command(
    predictions: Path,
    annotations: Path | None = None,
    videos: Path | None = None,
    output: Path | None = None,
    transcode: Transcode = "auto",
    title: str | None = None,
) -> None:
    """Write a static review page of a predictions file (``mvcli review``) and print its path
    and size: every action's views beside the model's top-2 per head, ground truth and
    right/wrong, filters, confidence sorting and confusion matrices. Opens from disk, offline.

    Args:
        predictions: a predictions.json written by ``mvcli predict`` (or any submission).
        annotations: the split's annotations.json: ground truth, right/wrong and confusion
            matrices, counted as ``mvcli score`` counts them.
        videos: the folder of ``action_<id>/`` clip folders (default: the annotations'
            folder). Without one, the page lists the actions without clips.
        output: the page to write (default: the predictions file with ``.html``).
        transcode: ``auto``: views a browser cannot play (codec or container) are converted
            to H.264 MP4 beside the page; ``never``: referenced as they are; ``always``:
            every view converted (a page that travels with its clips).
        title: the page's title (default: the predictions file's path).
    """
    page = write_review(predictions, annotations, videos, output, transcode, title)
    print(f"review page: {page.path}")
    print(
        f"  {page.actions} actions, {page.views} views"
        + (
            f" ({page.transcoded} transcoded to H.264 MP4 in {page.clips_dir})"
            if page.transcoded
            else ""
        )
        + f"; {format_size(page.size)} on disk ({format_size(page.html_size)} page)"
    )
    if page.summary is not None:
        s = page.summary
        print(
            f"  scored like `mvcli score`: leaderboard {s['leaderboard_value']:.3f} over "
            f"{int(s['counted'])} actions ({int(s['missing'])} missing)"
        )


class ReviewPage:
    """What :func:`write_review` wrote: the page, counts and sizes in bytes."""

    def __init__(self, path: Path, payload: dict, clips_dir: Path, seconds: float) -> None:
        self.path = path
        self.actions = len(payload["actions"])
        self.views = sum(len(a["views"]) for a in payload["actions"])
        self.transcoded = sum(
            bool(v.get("transcoded")) for a in payload["actions"] for v in a["views"]
        )
        self.summary = payload["summary"]
        self.clips_dir = clips_dir
        self.html_size = path.stat().st_size
        clips = (
            sum(p.stat().st_size for p in clips_dir.rglob("*") if p.is_file())
            if clips_dir.is_dir()
            else 0
        )
        self.size = self.html_size + clips
        self.seconds = seconds


def write_review(
    predictions: Path,
    annotations: Path | None = None,
    videos: Path | None = None,
    output: Path | None = None,
    transcode: Transcode = "auto",
    title: str | None = None,
) -> ReviewPage:
    """Build the page (see :func:`review_command`); returns what was written."""
    start = time.perf_counter()
    predictions = Path(predictions)
    output = Path(output) if output is not None else predictions.with_suffix(".html")
    if output.resolve() == predictions.resolve() or output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--output {output}: the review page needs an .html name")
    if transcode not in ("auto", "never", "always"):
        raise UsageError(f"--transcode {transcode!r}: expected auto, never or always")
    submission = _read_predictions(predictions)
    truth = load_annotations(Path(annotations)) if annotations is not None else None
    if videos is None and annotations is not None:
        videos = Path(annotations).parent
    if videos is not None and not Path(videos).is_dir():
        raise DataError(f"--videos {videos}: not a folder of action_<id>/ clip folders")
    clips_dir = output.with_name(output.stem + "_clips")
    clips = _Clips(
        Path(videos) if videos is not None else None, output.parent, clips_dir, transcode
    )
    actions = _actions(submission, truth, clips)
    summary = score(predictions, Path(annotations)) if annotations is not None else None
    payload = {
        "title": title or str(predictions),
        "heads": {head: list(names) for head, names in HEADS.items()},
        "summary": summary,
        "files": {
            "predictions": str(predictions),
            "annotations": str(annotations) if annotations is not None else None,
            "videos": str(videos) if videos is not None else None,
            "checkpoint": submission.get("checkpoint"),
        },
        "actions": actions,
    }
    atomic_write_text(output, render(payload))
    return ReviewPage(output, payload, clips_dir, time.perf_counter() - start)


def render(payload: dict) -> str:
    """The page: the template with the data as one inline JSON blob."""
    blob = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=_no_nan)
    # Inside <script>, "</" could close the element: JSON lets us escape the slash.
    blob = blob.replace("</", "<\\/").replace("<!--", "<\\!--")
    return (
        _TEMPLATE.replace("%TITLE%", html.escape(payload["title"]))
        .replace("%CSS%", _CSS)
        .replace("%JS%", _JS)
        .replace("%DATA%", blob)
    )


def _no_nan(value):
    raise TypeError(f"{value!r} is not JSON")


def format_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


# -- the actions -------------------------------------------------------------------------------
def _read_predictions(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: predictions file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON predictions file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("Actions"), dict):
        raise DataError(f"{path}: expected an object with an 'Actions' mapping (the submission)")
    return data


def _actions(submission: dict, truth: dict | None, clips: _Clips) -> list[dict]:
    predicted = submission["Actions"]
    details = submission.get("details") or {}
    failed = submission.get("failed") or {}
    ids = dict.fromkeys([*predicted, *failed, *(truth or {})])
    rows = []
    for action_id in sorted(ids, key=lambda a: (0, int(a)) if a.isdigit() else (1, a)):
        guess = predicted.get(action_id)
        detail = details.get(action_id) or {}
        row: dict = {"id": action_id}
        if guess is not None:
            row["status"] = "predicted"
            row["pred"] = _predicted_classes(guess)
            row["top2"] = {
                head: [
                    [HEADS[head].index(t["class"]), t["confidence"]] for t in detail[head]["top2"]
                ]
                for head in HEADS
                if detail.get(head, {}).get("top2")
            }
        else:
            row["status"] = "failed" if action_id in failed else "missing"
        skipped = list(detail.get("skipped_views", [])) + list(failed.get(action_id, []))
        row["used"] = list(detail.get("views", []))
        row["skipped"] = [
            {
                "view": s.get("view", ""),
                "reason": s.get("reason", ""),
                "detail": s.get("detail", ""),
            }
            for s in skipped
        ]
        row["views"] = clips.views(action_id)
        if truth is not None and action_id in truth:
            row.update(_judged(truth[action_id], guess))
        rows.append(row)
    return rows


def _predicted_classes(guess: dict) -> dict[str, int | None]:
    fields = (guess.get("Offence"), guess.get("Severity"))
    return {
        "offence_severity": OFFENCE_SEVERITY_FIELDS.index(fields)
        if fields in OFFENCE_SEVERITY_FIELDS
        else None,
        "action": ACTION_CLASSES.index(guess["Action class"])
        if guess.get("Action class") in ACTION_CLASSES
        else None,
    }


def _judged(entry: dict, guess: dict | None) -> dict:
    """Ground truth and right/wrong per head, exactly as ``mvcli score`` counts the action."""
    raw = {k: entry[k] for k in ("Offence", "Severity", "Action class") if k in entry}
    if (malformed := label_field_error(entry)) is not None:
        return {"raw": raw, "unscored": malformed}
    if not has_labels(entry):
        return {"raw": raw, "unscored": "no label fields"}
    try:
        labels = labels_from_annotation(entry)
    except SkipAction as skip:
        return {"raw": raw, "unscored": f"not counted by the evaluator: {skip.reason}"}
    truth = {head: getattr(labels, head) for head in HEADS}
    if guess is None:  # counted, not predicted: wrong on both heads, as score counts it
        return {"raw": raw, "truth": truth, "ok": {head: False for head in HEADS}}
    return {"raw": raw, "truth": truth, "ok": heads_correct(entry, labels, guess)}


# -- the clips ---------------------------------------------------------------------------------
class _Clips:
    """Each action's views on disk: a relative URL from the page, transcoded where needed."""

    def __init__(self, root: Path | None, page_dir: Path, out: Path, transcode: Transcode) -> None:
        self.root, self.page_dir, self.out, self.transcode = root, page_dir, out, transcode
        self._probed: dict[tuple, tuple[bool, str]] = {}

    def views(self, action_id: str) -> list[dict]:
        if self.root is None:
            return []
        if any(sep in action_id for sep in ("/", "\\", "\0")) or ".." in action_id:
            return []  # not a folder under the split: nothing read (as annotations.py)
        result = []
        for path in find_views(self.root / f"action_{action_id}", self.root):
            view = {"name": path.name}
            playable, why = self._playable(path)
            if self.transcode == "always" or (self.transcode == "auto" and not playable):
                target = self.out / f"action_{action_id}" / (path.stem + ".mp4")
                try:
                    _transcode(path, target)
                    view["src"] = self._url(target)
                    view["transcoded"] = f"from {why}" if why else "always"
                except Exception as err:  # noqa: BLE001 - a damaged view: said on the page
                    view["src"] = self._url(path)
                    view["note"] = f"cannot be converted ({type(err).__name__}: {err})"[:300]
            else:
                view["src"] = self._url(path)
                if not playable:
                    view["note"] = (
                        f"{why}: may not play in a browser (--transcode auto converts it)"
                    )
            result.append(view)
        return result

    def _url(self, path: Path) -> str:
        return quote(Path(os.path.relpath(path.resolve(), self.page_dir.resolve())).as_posix())

    def _playable(self, path: Path) -> tuple[bool, str]:
        """Whether a browser plays the file, and its container/codec/pixels for the page."""
        real = path.resolve()  # a clip shared by several actions (links) is probed once
        stat = real.stat()
        key = (str(real), stat.st_size, stat.st_mtime_ns)
        if key not in self._probed:
            self._probed[key] = _probe(path)
        return self._probed[key]


def _probe(path: Path) -> tuple[bool, str]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False, f"{path.suffix} without a video stream"
            context = container.streams.video[0].codec_context
            codec, pixels = context.name, context.format.name if context.format else "?"
    except Exception as err:  # noqa: BLE001 - unreadable: the browser will not do better
        return False, f"unreadable ({type(err).__name__})"
    suffix = path.suffix.lower()
    ok = any(suffix in exts and codec in codecs for exts, codecs in _PLAYABLE)
    return ok and pixels in _PLAYABLE_PIXELS, f"{codec} {pixels} in {suffix}"


def _transcode(source: Path, target: Path) -> None:
    """``source`` as H.264 (yuv420p, even size) MP4 at ``target``; kept while up to date."""
    import av

    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part.mp4")
    with av.open(str(source)) as src, av.open(str(partial), "w", format="mp4") as dst:
        stream_in = src.streams.video[0]
        rate = stream_in.average_rate or 25
        stream = dst.add_stream("libx264", rate=rate)
        stream.width = stream_in.codec_context.width // 2 * 2
        stream.height = stream_in.codec_context.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "movflags": "+faststart"}
        for frame in src.decode(stream_in):
            frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    shutil.move(partial, target)


# -- the page ----------------------------------------------------------------------------------
_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mvcli review: %TITLE%</title>
<style>%CSS%</style>
</head>
<body>
<header>
  <h1>mvcli review</h1>
  <div id="files"></div>
  <div id="summary"></div>
</header>
<section id="matrices"></section>
<nav id="controls">
  <label>head <select id="f-head"></select></label>
  <label>true <select id="f-truth"></select></label>
  <label>predicted <select id="f-pred"></select></label>
  <label>verdict <select id="f-verdict">
    <option value="">any</option><option value="right">right</option>
    <option value="wrong">wrong</option><option value="unscored">not scored</option>
  </select></label>
  <label>sort <select id="f-sort">
    <option value="id">action id</option>
    <option value="conf-desc">confidence, high first</option>
    <option value="conf-asc">confidence, low first</option>
  </select></label>
  <label>per page <select id="f-size">
    <option>10</option><option selected>20</option><option>50</option><option>100</option>
  </select></label>
  <a href="#" id="f-reset">reset</a>
  <span id="count" data-shown="0"></span>
  <span class="pager"><button id="prev">&lsaquo; prev</button>
  <span id="pageinfo"></span><button id="next">next &rsaquo;</button></span>
</nav>
<main id="list"></main>
<script type="application/json" id="review-data">%DATA%</script>
<script>%JS%</script>
</body>
</html>
"""

_CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--mute:#6e7781;--bar:#0969da;--bg2:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328}
header{padding:12px 20px;background:var(--bg2);border-bottom:1px solid #d0d7de}
h1{font-size:18px;margin:0 0 4px}
#files{color:var(--mute);font-size:12px;word-break:break-all}
#summary{margin-top:6px}
#summary table{border-collapse:collapse}
#summary td,#summary th{padding:1px 10px 1px 0;text-align:left}
#matrices{display:flex;flex-wrap:wrap;gap:24px;padding:12px 20px}
.cm{border-collapse:collapse;font-size:12px}
.cm caption{font-weight:600;text-align:left;padding-bottom:4px}
.cm td,.cm th{border:1px solid #d0d7de;padding:2px 5px;text-align:center;min-width:28px}
.cm th.r{text-align:right;white-space:nowrap;max-width:170px;overflow:hidden;text-overflow:ellipsis}
.cm th.c{writing-mode:vertical-rl;transform:rotate(180deg);height:150px;white-space:nowrap;vertical-align:bottom}
.cm caption{caption-side:top;margin-bottom:4px}
.cm a{display:block;color:inherit;text-decoration:none}
.cm td.d{font-weight:600}
.cm td.sel{outline:2px solid #bf8700}
#controls{position:sticky;top:0;z-index:2;background:#fff;padding:8px 20px;border-bottom:1px solid #d0d7de;
 display:flex;flex-wrap:wrap;gap:10px;align-items:center}
#count{font-weight:600}
.pager{margin-left:auto}
main{padding:8px 20px}
.act{border:1px solid #d0d7de;border-radius:6px;margin:10px 0;padding:8px 12px}
.act h2{font-size:15px;margin:0 0 6px;display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.tag{font-size:12px;font-weight:500;padding:1px 6px;border-radius:10px;background:var(--bg2)}
.tag.ok{background:#dafbe1;color:var(--ok)}.tag.bad{background:#ffebe9;color:var(--bad)}
.views{display:flex;flex-wrap:wrap;gap:8px}
.view{font-size:12px;color:var(--mute)}
.view video{display:block;width:320px;max-width:100%;aspect-ratio:16/9;background:#000}
.heads{display:flex;flex-wrap:wrap;gap:24px;margin-top:6px}
.head{min-width:300px}
.head b{display:block}
.bar{display:flex;align-items:center;gap:6px;font-size:12px}
.bar span.n{width:150px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bar span.t{height:10px;background:var(--bar);border-radius:2px}
.bar span.p{color:var(--mute)}
.truth{font-size:12px}.truth.ok{color:var(--ok)}.truth.bad{color:var(--bad)}
.skipped{font-size:12px;color:var(--bad);margin-top:4px}
.note{color:#9a6700}
button{font:inherit}
"""

_JS = r"""
"use strict";
const D = JSON.parse(document.getElementById("review-data").textContent);
const HEADS = Object.keys(D.heads);
const NICE = {offence_severity: "offence-severity", action: "action"};
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const labelled = D.actions.some(a => a.truth || a.unscored);
const DEFAULT = {head: HEADS[0], truth: "", pred: "", verdict: "", sort: "id", size: "20", page: "1"};
let state = {...DEFAULT};

function verdict(a, head) {
  if (!a.ok) return "unscored";
  return a.ok[head] ? "right" : "wrong";
}
function confidence(a, head) {
  const t = a.top2 && a.top2[head];
  return t && t.length ? t[0][1] : null;
}
function predClass(a, head) {
  return a.pred && a.pred[head] !== null && a.pred[head] !== undefined ? a.pred[head] : -1;
}
function matches(a, s) {
  const h = s.head;
  if (s.truth !== "" && !(a.truth && String(a.truth[h]) === s.truth)) return false;
  if (s.pred !== "" && String(predClass(a, h)) !== s.pred) return false;
  if (s.verdict && verdict(a, h) !== s.verdict) return false;
  return true;
}
function selected(s) {
  const rows = D.actions.filter(a => matches(a, s));
  if (s.sort !== "id") {
    const sign = s.sort === "conf-asc" ? 1 : -1;
    rows.sort((x, y) => {
      const cx = confidence(x, s.head), cy = confidence(y, s.head);
      if (cx === null || cy === null) return (cx === null) - (cy === null);
      return sign * (cx - cy);
    });
  }
  return rows;
}

// -- address <-> state --------------------------------------------------------------------
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state = {...DEFAULT};
  for (const k of Object.keys(DEFAULT)) if (p.has(k)) state[k] = p.get(k);
  if (!HEADS.includes(state.head)) state.head = HEADS[0];
}
function go(changes, keepPage) {
  const next = {...state, ...changes};
  if (!keepPage) next.page = "1";
  const p = new URLSearchParams();
  for (const k of Object.keys(DEFAULT)) if (next[k] !== DEFAULT[k]) p.set(k, next[k]);
  const hash = p.toString();
  if (location.hash.slice(1) === hash) { readHash(); render(); }
  else location.hash = hash;
}

// -- header, matrices ---------------------------------------------------------------------
function header() {
  const f = D.files;
  $("files").innerHTML = ["predictions", "annotations", "videos", "checkpoint"]
    .filter(k => f[k]).map(k => `${k}: ${esc(f[k])}`).join(" &middot; ");
  const views = D.actions.reduce((n, a) => n + a.views.length, 0);
  let text = `<div>${D.actions.length} actions, ${views} views` +
    (D.actions.some(a => a.status !== "predicted") ?
      `, ${D.actions.filter(a => a.status === "failed").length} failed (no readable view),
       ${D.actions.filter(a => a.status === "missing").length} not predicted` : "") + `</div>`;
  if (D.summary) {
    const s = D.summary;
    text += `<table><tr><th>head</th><th>counted</th><th>right</th><th>wrong</th><th>accuracy</th><th>balanced</th></tr>`;
    for (const h of HEADS) {
      const n = D.actions.filter(a => a.ok).length;
      const right = D.actions.filter(a => a.ok && a.ok[h]).length;
      text += `<tr><td>${NICE[h]}</td><td>${n}</td>
        <td><a href="#head=${h}&verdict=right">${right}</a></td>
        <td><a href="#head=${h}&verdict=wrong" id="wrong-${h}">${n - right}</a></td>
        <td>${s["accuracy_" + h].toFixed(2)}%</td><td>${s["balanced_accuracy_" + h].toFixed(2)}%</td></tr>`;
    }
    text += `</table><div>leaderboard (as <code>mvcli score</code>): <b>${s.leaderboard_value.toFixed(3)}</b>,
      ${s.counted} counted, ${s.missing} missing</div>`;
  }
  $("summary").innerHTML = text;
}
function matrices() {
  if (!labelled) { $("matrices").hidden = true; return; }
  let out = "";
  for (const h of HEADS) {
    const names = D.heads[h], n = names.length;
    const cells = names.map(() => new Array(n + 1).fill(0));
    for (const a of D.actions) if (a.truth) {
      const p = predClass(a, h);
      cells[a.truth[h]][p < 0 ? n : p] += 1;
    }
    const none = cells.some(r => r[n] > 0);
    out += `<table class="cm" id="cm-${h}"><caption>${NICE[h]}: true (rows) &times; predicted (columns)</caption><tr><th></th>`;
    out += names.map(c => `<th class="c" title="${esc(c)}">${esc(c)}</th>`).join("");
    out += (none ? `<th class="c">no prediction</th>` : "") + `<th class="c">recall</th></tr>`;
    const max = Math.max(1, ...cells.flat());
    cells.forEach((row, t) => {
      out += `<tr><th class="r" title="${esc(names[t])}">${esc(names[t])}</th>`;
      row.forEach((count, p) => {
        if (p === n && !none) return;
        const pred = p === n ? -1 : p;
        const alpha = count ? 0.12 + 0.6 * count / max : 0;
        const colour = p === t ? `rgba(26,127,55,${alpha})` : `rgba(207,34,46,${alpha})`;
        const sel = state.head === h && state.truth === String(t) && state.pred === String(pred) ? " sel" : "";
        out += `<td class="${p === t ? "d" : ""}${sel}" style="background:${colour}">` +
          (count ? `<a href="#head=${h}&truth=${t}&pred=${pred}" title="${esc(names[t])} predicted as ${esc(p === n ? "nothing" : names[p])}">${count}</a>` : "") + `</td>`;
      });
      const total = row.reduce((x, y) => x + y, 0);
      out += `<td>${total ? Math.round(100 * row[t] / total) + "%" : "&ndash;"}</td></tr>`;
    });
    out += `</table>`;
  }
  $("matrices").innerHTML = out;
}

// -- controls and the list ----------------------------------------------------------------
function options(select, items, value) {
  select.innerHTML = items.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join("");
  select.value = value;
}
function controls() {
  const names = D.heads[state.head];
  options($("f-head"), HEADS.map(h => [h, NICE[h]]), state.head);
  options($("f-truth"), [["", "any"], ...names.map((c, i) => [String(i), c])], state.truth);
  options($("f-pred"), [["", "any"], ...names.map((c, i) => [String(i), c]), ["-1", "no prediction"]], state.pred);
  $("f-verdict").value = state.verdict;
  $("f-sort").value = state.sort;
  $("f-size").value = state.size;
  $("f-truth").disabled = $("f-verdict").disabled = !labelled;
}
function bars(a, h) {
  const names = D.heads[h];
  const top = a.top2 && a.top2[h];
  if (top && top.length) return top.map(([c, p]) =>
    `<div class="bar"><span class="n" title="${esc(names[c])}">${esc(names[c])}</span>` +
    `<span class="t" style="width:${Math.max(1, Math.round(120 * p))}px"></span>` +
    `<span class="p">${(100 * p).toFixed(1)}%</span></div>`).join("");
  const p = predClass(a, h);
  return p >= 0 ? `<div class="bar"><span class="n">${esc(names[p])}</span><span class="p">(no probabilities)</span></div>`
    : `<div class="bar"><span class="p">no prediction</span></div>`;
}
function card(a) {
  let tags = "";
  if (a.status !== "predicted") tags += `<span class="tag bad">${a.status === "failed" ? "failed: no readable view" : "not predicted"}</span>`;
  if (a.ok) for (const h of HEADS) tags += `<span class="tag ${a.ok[h] ? "ok" : "bad"}">${NICE[h]} ${a.ok[h] ? "right" : "wrong"}</span>`;
  else if (a.unscored) tags += `<span class="tag">not scored</span>`;
  const views = a.views.length ? a.views.map(v =>
    `<div class="view"><video controls muted loop playsinline preload="none" data-src="${esc(v.src)}" src="${esc(v.src)}"></video>` +
    `${esc(v.name)}${a.used.length && !a.used.includes(v.name) && !a.skipped.some(s => s.view === v.name) ? " (not used)" : ""}` +
    `${v.transcoded ? ` <span class="note">(transcoded to H.264 MP4 ${esc(v.transcoded)})</span>` : ""}` +
    `${v.note ? ` <span class="note">${esc(v.note)}</span>` : ""}</div>`).join("")
    : `<div class="view">no clip files${D.files.videos ? " on disk" : " (pass --videos)"}</div>`;
  const heads = HEADS.map(h => {
    let truth = "";
    if (a.truth) {
      const ok = a.ok && a.ok[h];
      truth = `<div class="truth ${ok ? "ok" : "bad"}">truth: ${esc(D.heads[h][a.truth[h]])} ${ok ? "&check;" : "&cross;"}</div>`;
    }
    return `<div class="head"><b>${NICE[h]}</b>${bars(a, h)}${truth}</div>`;
  }).join("");
  const raw = a.raw ? `<div class="truth">annotation: ${esc(Object.entries(a.raw).map(([k, v]) => `${k} "${v}"`).join(", "))}` +
    `${a.unscored ? ` &mdash; ${esc(a.unscored)}` : ""}</div>` : "";
  const skipped = a.skipped.length ? `<div class="skipped">skipped views: ` +
    a.skipped.map(s => `${esc(s.view || "(none)")}: ${esc(s.reason)}${s.detail ? ` (${esc(s.detail)})` : ""}`).join("; ") + `</div>` : "";
  return `<article class="act" data-id="${esc(a.id)}"><h2>action ${esc(a.id)} ${tags}
    <button class="playall">play all views</button></h2><div class="views">${views}</div>
    <div class="heads">${heads}</div>${raw}${skipped}</article>`;
}

let observer = null;
function render() {
  controls();
  matrices();
  const rows = selected(state);
  const size = Number(state.size) || 20;
  const pages = Math.max(1, Math.ceil(rows.length / size));
  const page = Math.min(pages, Math.max(1, Number(state.page) || 1));
  $("count").textContent = `${rows.length} of ${D.actions.length} actions shown`;
  $("count").dataset.shown = rows.length;
  $("pageinfo").textContent = ` page ${page} of ${pages} `;
  $("prev").disabled = page <= 1;
  $("next").disabled = page >= pages;
  // Only the visible page is in the document; each clip loads its first frame when on screen.
  $("list").innerHTML = rows.slice((page - 1) * size, page * size).map(card).join("");
  if (observer) observer.disconnect();
  if ("IntersectionObserver" in window) {
    observer = new IntersectionObserver(entries => {
      for (const e of entries) if (e.isIntersecting) {
        e.target.preload = "metadata";
        observer.unobserve(e.target);
      }
    }, {rootMargin: "200px"});
    document.querySelectorAll("#list video").forEach(v => observer.observe(v));
  }
}

function wire() {
  $("f-head").onchange = e => go({head: e.target.value, truth: "", pred: ""});
  $("f-truth").onchange = e => go({truth: e.target.value});
  $("f-pred").onchange = e => go({pred: e.target.value});
  $("f-verdict").onchange = e => go({verdict: e.target.value});
  $("f-sort").onchange = e => go({sort: e.target.value});
  $("f-size").onchange = e => go({size: e.target.value});
  $("f-reset").onclick = e => { e.preventDefault(); go({...DEFAULT}); };
  $("prev").onclick = () => go({page: String(Number(state.page) - 1)}, true);
  $("next").onclick = () => go({page: String(Number(state.page) + 1)}, true);
  $("list").addEventListener("click", e => {
    if (!e.target.classList.contains("playall")) return;
    for (const v of e.target.closest(".act").querySelectorAll("video")) { v.currentTime = 0; v.play(); }
  });
  window.addEventListener("hashchange", () => { readHash(); render(); });
}

header();
wire();
readHash();
render();
"""
