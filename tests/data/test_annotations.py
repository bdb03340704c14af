"""Reading splits and prediction folders; views come from disk, never from Url fields."""

from __future__ import annotations

import json
import shutil

import pytest

from mvcli.data.annotations import AnnotationError, discover_actions, find_views, read_split


def test_real_sample_reads_views_from_disk(sample_root):
    records, report = read_split(sample_root / "Test")
    assert [r.action_id for r in records] == ["0", "1", "2", "3", "4"]
    views = {r.action_id: [p.name for p in r.views] for r in records}
    assert views["4"] == ["clip_0.mp4", "clip_1.mp4", "clip_3.mp4"]  # clip_2 listed, absent
    assert views["3"] == ["clip_0.mp4", "clip_1.mp4"]
    assert report.skipped == 0
    assert records[3].labels.offence_severity == 3  # High leg, severity 5.0: red card


def test_skip_reasons_are_counted(synthetic_root):
    records, report = read_split(synthetic_root / "Train")
    assert report.skipped == 5  # the quirks: 2 unknown actions, between, severity 2.0 / 4.0
    assert report.reasons["severity unsure ('', '2.0' or '4.0')"] == 2
    assert "skipped 5" in report.summary()
    assert len(records) == report.total - 5


def test_chall_is_unlabeled(synthetic_root):
    records, _ = read_split(synthetic_root / "Chall", require_labels=False)
    assert records and all(r.labels is None for r in records)
    kept, report = read_split(synthetic_root / "Chall")
    assert kept == [] and report.reasons["no label fields"] == report.total == len(records)


def test_bad_annotation_files_name_the_file(tmp_path):
    split = tmp_path / "Train"
    split.mkdir()
    with pytest.raises(AnnotationError, match="annotations.json.*not found"):
        read_split(split)
    (split / "annotations.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_split(split)
    (split / "annotations.json").write_text(json.dumps({"Set": "train"}))
    with pytest.raises(AnnotationError, match="'Actions'"):
        read_split(split)


def test_discover_any_prediction_layout(sample_root, tmp_path):
    # A split without annotations.json, a folder of action folders, one action's folder.
    folder = tmp_path / "new"
    shutil.copytree(sample_root / "Test", folder)
    (folder / "annotations.json").unlink()
    records, _ = discover_actions(folder)
    assert [r.action_id for r in records] == ["0", "1", "2", "3", "4"]
    single, _ = discover_actions(folder / "action_4")
    assert len(single) == 1 and len(single[0].views) == 3
    (folder / "action_9").mkdir()  # kept for prediction, to be reported as failed
    records, _ = discover_actions(folder)
    assert records[-1].action_id == "9" and records[-1].views == ()
    assert find_views(folder / "missing") == ()
