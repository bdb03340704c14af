"""Reading splits and prediction folders; views come from disk, never from Url fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvcli.data.annotations import (
    OUTSIDE_ROOT,
    AnnotationError,
    check_action_id,
    choose_views,
    discover_actions,
    find_views,
    is_inside,
    load_annotations,
    read_split,
)


def test_real_sample_reads_views_from_disk(sample_root):
    records, report = read_split(sample_root / "Test")
    assert [r.action_id for r in records] == ["0", "1", "2", "3", "4"]
    views = {r.action_id: [p.name for p in r.views] for r in records}
    assert views["4"] == ["clip_0.mp4", "clip_1.mp4", "clip_3.mp4"]  # clip_2 listed, absent
    assert views["3"] == ["clip_0.mp4", "clip_1.mp4"]
    assert report.skipped == 0
    assert records[3].labels.offence_severity == 3  # High leg, severity 5.0: red card


def test_view_choices_keep_views_in_file_order(sample_root):
    records, _ = read_split(sample_root / "Test")
    views = {r.action_id: r.views for r in records}
    four = views["4"]  # clip_0, clip_1, clip_3 (clip_2 listed, absent)

    def names(choice, action="4"):
        return [p.name for p in choose_views(views[action], choice)]

    assert choose_views(four, "all") == four
    assert names("live") == ["clip_0.mp4"]
    assert names("replays") == ["clip_1.mp4", "clip_3.mp4"]
    assert names(2) == ["clip_0.mp4", "clip_1.mp4"] and names(3) == names("all")
    assert names(10, "3") == ["clip_0.mp4", "clip_1.mp4"]  # fewer there: all of them
    assert choose_views(four[1:], "live") == ()  # no clip_0: nothing left
    for bad in ("first", 0, True):
        with pytest.raises(ValueError, match="expected one of all, live, replays"):
            choose_views(four, bad)


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


def _split_with(tmp_path, synthetic_root, extra: dict) -> tuple[Path, Path]:
    """A copy of Valid as ``<root>/Valid`` plus annotation entries; and a folder outside."""
    root = tmp_path / "root"
    split = root / "Valid"
    shutil.copytree(synthetic_root / "Valid", split)
    annotations = json.loads((split / "annotations.json").read_text())
    template = next(iter(annotations["Actions"].values()))
    for action_id in extra:
        annotations["Actions"][action_id] = {**template, **extra[action_id]}
    (split / "annotations.json").write_text(json.dumps(annotations))
    outside = tmp_path / "outside" / "secret_action"
    outside.mkdir(parents=True)
    first_view = next((split / "action_0").iterdir())
    shutil.copy(first_view, outside / "clip_0.mp4")
    return split, outside


@pytest.mark.parametrize(
    "action_id",
    ["0/../../../outside/secret", "../outside/secret_action", "..", "a\\b", "x..y", ""],
)
def test_action_ids_naming_other_folders_are_refused(action_id, synthetic_root, tmp_path):
    split, outside = _split_with(tmp_path, synthetic_root, {action_id: {}})
    records, report = read_split(split)
    assert action_id not in {r.action_id for r in records}
    assert any(r.startswith("invalid action id") for r in report.reasons)
    assert all(is_inside(v, split.parent) for r in records for v in r.views)
    # Prediction too (labels not required).
    records, _ = read_split(split, require_labels=False)
    assert action_id not in {r.action_id for r in records}


def test_the_reported_escape_id(synthetic_root, tmp_path):
    """The issue's id: 0/../../../../outside/secret_action resolved out of the dataset."""
    split, outside = _split_with(tmp_path, synthetic_root, {})
    action_id = "0/" + "../" * 3 + "outside/secret_action"
    assert (split / f"action_{action_id}").resolve() == outside.resolve()
    annotations = json.loads((split / "annotations.json").read_text())
    annotations["Actions"][action_id] = {}
    (split / "annotations.json").write_text(json.dumps(annotations))
    records, report = discover_actions(split)
    assert action_id not in {r.action_id for r in records}
    assert report.reasons["invalid action id (path separator in the id)"] == 1


def test_symlinked_action_folder_leaving_the_root(synthetic_root, tmp_path):
    split, outside = _split_with(tmp_path, synthetic_root, {"900": {}})
    (split / "action_900").symlink_to(outside, target_is_directory=True)
    records, report = read_split(split)
    assert next(r for r in records if r.action_id == "900").views == ()
    assert report.notes[OUTSIDE_ROOT] == 1 and report.examples[OUTSIDE_ROOT] == ["900"]
    # Allowed explicitly.
    records, _ = read_split(split, allow_outside_root=True)
    assert len(next(r for r in records if r.action_id == "900").views) == 1
    # Training has nothing to learn from it: skipped there.
    records, _ = read_split(split, require_views=True)
    assert "900" not in {r.action_id for r in records}


def test_symlinked_view_leaving_the_root(synthetic_root, tmp_path):
    split, outside = _split_with(tmp_path, synthetic_root, {})
    action = split / "action_1"
    before = len(list(action.iterdir()))
    (action / "clip_9.mp4").symlink_to(outside / "clip_0.mp4")
    records, report = read_split(split)
    views = next(r for r in records if r.action_id == "1").views
    assert len(views) == before and all(is_inside(v, split.parent) for v in views)
    assert report.examples[OUTSIDE_ROOT] == ["1"]
    # The same from prediction folders without annotations, and from one action's folder.
    (split / "annotations.json").unlink()
    records, report = discover_actions(split)
    assert len(next(r for r in records if r.action_id == "1").views) == before
    assert report.notes[OUTSIDE_ROOT] == 1
    single, report = discover_actions(action)
    assert len(single[0].views) == before and report.notes[OUTSIDE_ROOT] == 1


def test_symlink_inside_the_root_is_fine(synthetic_root, tmp_path):
    split, _ = _split_with(tmp_path, synthetic_root, {"901": {}})
    (split / "action_901").symlink_to(split / "action_0", target_is_directory=True)
    records, report = read_split(split)
    assert next(r for r in records if r.action_id == "901").views
    assert OUTSIDE_ROOT not in report.notes


def test_urls_are_never_followed(synthetic_root, tmp_path):
    split, outside = _split_with(tmp_path, synthetic_root, {})
    annotations = json.loads((split / "annotations.json").read_text())
    entry = annotations["Actions"]["0"]
    entry["Clips"] = [{"Url": str(outside / "clip_0"), "Camera type": "Main camera center"}]
    entry["UrlLocal"] = str(outside / "clip_0.mp4")
    (split / "annotations.json").write_text(json.dumps(annotations))
    records, _ = read_split(split)
    views = next(r for r in records if r.action_id == "0").views
    assert views and all(v.parent == split / "action_0" for v in views)


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [("Severity", 3, "int"), ("Offence", None, "null"), ("Action class", ["Dive"], "list"),
     ("Severity", 1.0, "float"), ("Action class", {"a": 1}, "dict")],
)  # fmt: skip
def test_label_fields_of_the_wrong_type_are_reported(field, value, kind, synthetic_root, tmp_path):
    split, _ = _split_with(tmp_path, synthetic_root, {"950": {field: value}})
    records, report = read_split(split)
    assert "950" not in {r.action_id for r in records}
    reason = f"label field {field!r} is {kind}, expected a string"
    assert report.reasons[reason] == 1 and report.examples[reason] == ["950"]
    assert "950" in report.summary() and field in report.summary()
    # Prediction keeps the action (its labels are not needed), still reported.
    records, report = read_split(split, require_labels=False)
    assert next(r for r in records if r.action_id == "950").labels is None
    assert report.notes[reason] == 1 and reason not in report.reasons


# -- property tests: no annotations file makes the reader crash -------------------------------
# Small and bounded, so they run in seconds; tmp_path is reused across examples on purpose.
PROPERTY_SETTINGS = {
    "max_examples": 50,
    "deadline": 2000,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
_entry = st.dictionaries(
    st.sampled_from(["Action class", "Offence", "Severity", "Clips", "UrlLocal"]),
    _json | st.sampled_from(["Dive", "Offence", "No offence", "1.0", "5.0", "Tackling", ""]),
)
_actions = st.dictionaries(
    st.text(alphabet="0123456789./\\ab_", max_size=6), _entry | _json, max_size=5
)


@settings(**PROPERTY_SETTINGS)
@given(document=st.one_of(_json, st.fixed_dictionaries({"Actions": _actions})))
def test_any_annotations_document_is_read_or_refused_clearly(document, tmp_path):
    split = tmp_path / "root" / "Split"
    split.mkdir(parents=True, exist_ok=True)
    (split / "annotations.json").write_text(json.dumps(document))
    for require_labels in (True, False):
        try:
            records, report = read_split(split, require_labels=require_labels)
        except AnnotationError as err:
            assert "annotations.json" in str(err)
            continue
        assert len(records) + report.skipped == report.total
        for record in records:
            assert check_action_id(record.action_id) is None
            assert all(is_inside(v, split.parent) for v in record.views)


@settings(**PROPERTY_SETTINGS)
@given(raw=st.binary(max_size=64))
def test_any_bytes_as_annotations_are_refused_clearly(raw, tmp_path):
    path = tmp_path / "annotations.json"
    path.write_bytes(raw)
    try:
        load_annotations(path)
    except AnnotationError as err:
        assert str(path) in str(err)
