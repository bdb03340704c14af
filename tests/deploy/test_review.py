"""`mvcli review`: the static review page, opened in a real (headless) Chromium."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest

from mvcli.__main__ import run
from mvcli.cli import main
from mvcli.data.taxonomy import HEADS, submission_entry
from mvcli.deploy.review import format_size, write_review
from mvcli.deploy.scoring import score
from tests.browser import Browser, browser_or_skip


@pytest.fixture(scope="module")
def browser():
    with browser_or_skip() as started:
        yield started


def page_data(page: Path) -> dict:
    """The inline JSON blob of a page."""
    text = page.read_text()
    blob = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', text, re.S)
    return json.loads(blob.group(1))


def fake_predictions(annotations: Path, out: Path, seed: int = 0, drop: int = 1, fail: int = 1):
    """predictions.json as `mvcli predict` writes it (Actions, details, failed), random answers;
    the first ``drop`` labelled actions left out, the next ``fail`` listed as failed."""
    rng = random.Random(seed)
    ids = list(json.loads(annotations.read_text())["Actions"])
    actions, details, failed = {}, {}, {}
    for i, action_id in enumerate(ids):
        if i < drop:
            continue
        if i < drop + fail:
            failed[action_id] = [{"view": "clip_0.mp4", "reason": "decode_error", "detail": "x"}]
            continue
        detail, top = {}, {}
        for head, names in HEADS.items():
            p = np.array([rng.random() ** 3 for _ in names])
            p /= p.sum()
            order = np.argsort(-p)
            top[head] = int(order[0])
            detail[head] = {
                "probabilities": {n: round(float(v), 6) for n, v in zip(names, p, strict=True)},
                "top2": [
                    {"class": names[k], "confidence": round(float(p[k]), 6)} for k in order[:2]
                ],
            }
        actions[action_id] = submission_entry(top["offence_severity"], top["action"])
        skipped = (
            [{"view": "clip_1.mp4", "reason": "too_short", "detail": "3 frames"}]
            if i % 5 == 0
            else []
        )
        details[action_id] = {**detail, "views": ["clip_0.mp4"], "skipped_views": skipped}
    payload = {"Actions": actions, "checkpoint": None, "details": details, "failed": failed}
    out.write_text(json.dumps(payload, indent=2))
    return out


def show(browser: Browser, hash_: str) -> dict:
    """Go to ``#hash_`` and wait for the page to render it; the shown count and card ids."""
    target = json.dumps(hash_)
    browser.evaluate(
        f"new Promise(done => {{ if (location.hash.slice(1) === {target}) return done();"
        " addEventListener('hashchange', () => setTimeout(done, 0), {once: true});"
        f" location.hash = {target}; }})",
        await_promise=True,
    )
    return browser.evaluate(
        "({shown: Number(document.getElementById('count').dataset.shown),"
        " ids: [...document.querySelectorAll('#list article')].map(a => a.dataset.id)})"
    )


def wrong_per_head(summary: dict) -> dict[str, int]:
    """The wrong actions per head that `mvcli score`'s accuracy implies."""
    return {h: round(summary["counted"] * (1 - summary[f"accuracy_{h}"] / 100)) for h in HEADS}


def first_video(browser: Browser) -> dict:
    """Load the first clip of the list; what the browser says about it."""
    return browser.evaluate(
        """new Promise(done => {
          const v = document.querySelector('#list video');
          const said = () => ({preload: v.getAttribute('preload'), readyState: v.readyState,
            videoWidth: v.videoWidth, error: v.error && v.error.message, src: v.currentSrc,
            canPlay: v.canPlayType('video/mp4; codecs="avc1.64001E"')});
          if (v.readyState >= 2) return done(said());
          v.addEventListener('loadeddata', () => done(said()));
          v.addEventListener('error', () => done(said()));
          setTimeout(() => done(said()), 15000);
          v.preload = 'auto'; v.load();
        })""",
        await_promise=True,
    )


def test_the_page_lists_every_action_filters_as_score_counts_and_plays_views(
    synthetic_root, tmp_path, browser, capsys
):
    annotations = synthetic_root / "Test" / "annotations.json"
    predictions = fake_predictions(annotations, tmp_path / "predictions.json")
    run(["review", str(predictions), "--annotations", str(annotations)])  # the console command
    out = capsys.readouterr().out
    page = tmp_path / "predictions.html"
    assert f"review page: {page}" in out and format_size(page.stat().st_size) in out
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # nothing from the internet
    assert not list(tmp_path.glob("predictions_clips"))  # h264 mp4: referenced, not converted
    data = page_data(page)
    expected = set(json.loads(annotations.read_text())["Actions"])
    assert {a["id"] for a in data["actions"]} == expected

    seconds = browser.open(page.as_uri())
    listed = show(browser, "size=100")
    assert set(listed["ids"]) == expected and listed["shown"] == len(expected)
    summary = score(predictions, annotations)
    assert summary["missing"] == 2  # the dropped action and the failed one
    for head, wrong in wrong_per_head(summary).items():
        assert show(browser, f"head={head}&verdict=wrong&size=100")["shown"] == wrong, head
        right = show(browser, f"head={head}&verdict=right&size=100")["shown"]
        assert right + wrong == summary["counted"]
        assert browser.evaluate(f"document.getElementById('wrong-{head}').textContent") == str(
            wrong
        )
    # Each confusion-matrix cell links to its actions: the filter shows exactly that many.
    cells = browser.evaluate(
        "[...document.querySelectorAll('#cm-action a')]"
        ".map(a => [a.getAttribute('href'), Number(a.textContent)])"
    )
    assert sum(n for _, n in cells) == summary["counted"]
    for href, count in cells[:4]:
        assert show(browser, href[1:])["shown"] == count
    # Sorted by confidence, low first: the least sure action of the head comes first.
    ids = show(browser, "head=action&sort=conf-asc&size=100")["ids"]
    confidence = {a["id"]: a["top2"]["action"][0][1] for a in data["actions"] if "top2" in a}
    ordered = [i for i in ids if i in confidence]
    assert ordered == sorted(ordered, key=confidence.get)
    # The skipped views and why, on the card.
    show(browser, "")
    text = browser.evaluate("document.getElementById('list').innerText")
    assert "skipped views: clip_1.mp4: too_short (3 frames)" in text
    assert "failed: no readable view" in text
    # Clips load only when shown, and play.
    below = browser.evaluate(
        "[...document.querySelectorAll('video')]"
        ".filter(v => v.getBoundingClientRect().top > innerHeight + 300)"
        ".map(v => v.getAttribute('preload'))"
    )
    assert below and set(below) == {"none"}  # off screen: not even the metadata loaded

    video = first_video(browser)
    assert video["canPlay"] in ("probably", "maybe")
    assert video["error"] is None and video["readyState"] >= 2 and video["videoWidth"] > 0, video
    assert video["src"].startswith("file://") and (synthetic_root / "Test").as_uri() in video["src"]
    shot = browser.screenshot(tmp_path / "review.png")
    assert shot.stat().st_size > 10_000
    size = format_size(page.stat().st_size)
    print(f"\nreview page {size}, opened in {seconds:.2f} s; screenshot {shot}")


def test_a_real_predict_makes_a_page(trained, synthetic_root, tmp_path, browser, capsys):
    common, fit = trained
    predictions = tmp_path / "predictions.json"
    best = fit.trainer.checkpoint_callback.best_model_path
    main(["predict", *common, "--ckpt_path", best, "--data.predict_split", "Test",
          "--prediction_writer.output_path", str(predictions)])  # fmt: skip
    annotations = synthetic_root / "Test" / "annotations.json"
    page = write_review(predictions, annotations).path
    assert page == tmp_path / "predictions.html"
    summary = score(predictions, annotations)
    data = page_data(page)
    assert data["summary"] == summary
    predicted = json.loads(predictions.read_text())
    assert {a["id"] for a in data["actions"]} >= set(predicted["Actions"])
    browser.open(page.as_uri())
    for head, wrong in wrong_per_head(summary).items():
        assert show(browser, f"head={head}&verdict=wrong&size=100")["shown"] == wrong
    shown = show(browser, "size=100")
    assert set(shown["ids"]) == {a["id"] for a in data["actions"]}
    video = first_video(browser)
    assert video["readyState"] >= 2 and video["videoWidth"] > 0, video


def _encode(path: Path, codec: str, pix_fmt: str, frames: int = 10) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for i in range(frames):
            image = np.full((48, 64, 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_views_a_browser_cannot_play_are_transcoded_and_said(tmp_path, browser):
    videos = tmp_path / "clips"
    (videos / "action_7").mkdir(parents=True)
    _encode(videos / "action_7" / "clip_0.avi", "mpeg4", "yuv420p")
    _encode(videos / "action_7" / "clip_1.mp4", "libx264", "yuv420p")
    predictions = tmp_path / "out" / "predictions.json"
    predictions.parent.mkdir()
    predictions.write_text(json.dumps({"Actions": {"7": submission_entry(1, 2)}}))
    review = write_review(predictions, videos=videos)
    (action,) = page_data(review.path)["actions"]
    avi, mp4 = action["views"]
    assert avi["src"] == "predictions_clips/action_7/clip_0.mp4"
    assert "mpeg4" in avi["transcoded"] and ".avi" in avi["transcoded"]
    assert mp4["src"] == "../clips/action_7/clip_1.mp4" and "transcoded" not in mp4
    assert review.transcoded == 1 and review.size > review.html_size
    assert "ok" not in action and "truth" not in action  # no annotations: nothing judged
    browser.open(review.path.as_uri())
    assert show(browser, "")["shown"] == 1
    assert "transcoded to H.264 MP4 from mpeg4" in browser.evaluate("document.body.innerText")
    video = first_video(browser)
    assert video["readyState"] >= 2 and video["videoWidth"] == 64, video
    # never: referenced as they are, with a note
    never = write_review(
        predictions, videos=videos, output=tmp_path / "never.html", transcode="never"
    )
    avi = page_data(never.path)["actions"][0]["views"][0]
    assert avi["src"] == "clips/action_7/clip_0.avi" and "may not play" in avi["note"]


def test_two_thousand_actions_open_and_filter_quickly(synthetic_root, tmp_path, browser):
    """2,000 actions sharing three real clips (links): size on disk, open and filter times."""
    n = 2000
    videos = tmp_path / "Test"
    shared = videos / "shared"  # inside the split: links leaving it are refused, as in training
    shared.mkdir(parents=True)
    clips = []
    for k, clip in enumerate(sorted((synthetic_root / "Test").glob("action_*/clip_0.mp4"))[:3]):
        clips.append(shared / f"{k}.mp4")
        shutil.copy(clip, clips[-1])
    rng = random.Random(0)
    truth = {}
    for i in range(n):
        folder = videos / f"action_{i}"
        folder.mkdir(parents=True)
        for k, clip in enumerate(clips):
            os.symlink(clip, folder / f"clip_{k}.mp4")
        truth[str(i)] = submission_entry(rng.randrange(4), rng.randrange(8))
    annotations = videos / "annotations.json"
    annotations.write_text(json.dumps({"Actions": truth}))
    predictions = fake_predictions(annotations, tmp_path / "predictions.json", drop=3, fail=2)
    review = write_review(predictions, annotations, videos=videos)
    data = page_data(review.path)
    assert len(data["actions"]) == n and review.views == 3 * n
    assert review.html_size < 3_000_000, review.html_size

    start = time.perf_counter()
    seconds = browser.open(review.path.as_uri())
    assert seconds < 10, seconds
    shown = show(browser, "")
    assert shown["shown"] == n and len(shown["ids"]) == 20  # one page in the document
    assert browser.evaluate("document.querySelectorAll('video').length") <= 20 * 3
    summary = score(predictions, annotations)
    filter_ms = browser.evaluate(
        "new Promise(done => { const t = performance.now();"
        " addEventListener('hashchange',"
        " () => setTimeout(() => done(performance.now() - t), 0), {once: true});"
        " location.hash = 'head=action&verdict=wrong&sort=conf-asc'; })",
        await_promise=True,
    )
    wrong = wrong_per_head(summary)["action"]
    assert browser.evaluate("Number(document.getElementById('count').dataset.shown)") == wrong
    assert filter_ms < 2000, filter_ms
    print(
        f"\n2,000 actions: page {format_size(review.html_size)}, "
        f"written in {review.seconds:.1f} s, "
        f"opened in {seconds:.2f} s, a filter + sort rendered in {filter_ms:.0f} ms "
        f"(total {time.perf_counter() - start:.1f} s)"
    )


def test_review_errors_are_one_paragraph(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["review", str(tmp_path / "absent.json")])
    assert exit_.value.code == 1 and "predictions file not found" in capsys.readouterr().err
    (tmp_path / "p.json").write_text(json.dumps({"Actions": {}}))
    with pytest.raises(SystemExit) as exit_:
        run(["review", str(tmp_path / "p.json"), "--output", str(tmp_path / "p.txt")])
    assert exit_.value.code == 2 and "needs an .html name" in capsys.readouterr().err


def test_review_is_a_listed_subcommand_with_plain_help(capsys):
    with pytest.raises(SystemExit):
        run(["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("review "))
    assert "web page" in line
    with pytest.raises(SystemExit) as exit_:
        run(["review", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: mvcli review")
    assert "--annotations" in out and "--transcode" in out and "``" not in out
