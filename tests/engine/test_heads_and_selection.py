"""Head types, score files (ours and the reference's), selection and concentration."""

from __future__ import annotations

import json

import pytest
import torch

from headatlas import Head, HeadScoreFileError, HeadScores, ModelSpec, UnsupportedModelError
from headatlas.selection import (
    HeadSelection,
    concentration,
    gini,
    overlap,
    random_heads,
    share_of_heads,
)
from tests.conftest import make_tiny_model


def scores_4x4():
    s = torch.zeros(4, 4)
    s[3, 1], s[2, 2], s[3, 3], s[0, 0] = 0.9, 0.5, 0.2, 0.05
    return HeadScores(s, {"model": "toy", "seed": 0})


def test_roundtrip_json(tmp_path):
    s = scores_4x4()
    path = s.save(tmp_path / "head_scores.json")
    data = json.loads(path.read_text())
    assert data["format"] == "headatlas/head-scores" and len(data["scores"]) == 4
    back = HeadScores.load(path)
    assert torch.equal(back.scores, s.scores) and back.meta == s.meta


def test_reference_format_roundtrip(tmp_path):
    ref = {"3-1": [1.0, 0.8], "2-2": [0.5], "0-0": []}
    s = HeadScores.from_reference(ref, n_layers=4, n_heads=4)
    assert s[Head(3, 1)] == pytest.approx(0.9) and s[Head(0, 0)] == 0.0
    out = s.to_reference()
    assert out["3-1"] == [pytest.approx(0.9)] and len(out) == 16
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    assert HeadScores.load(tmp_path / "ref.json")[Head(2, 2)] == 0.5  # load() detects the format


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "corrupt"),
        ('{"format": "headatlas/head-scores", "scores": [[0.1, 0.2], [0.3]]}', "different head counts"),
        ('{"format": "headatlas/head-scores", "n_layers": 3, "scores": [[0.1], [0.2]]}', "header says"),
        ('{"format": "headatlas/head-scores", "scores": [["a"]]}', "non-numbers"),
        ('{"format": "something-else"}', "not a head-score file"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_corrupt_files_raise_clear_errors(tmp_path, payload, message):
    (tmp_path / "bad.json").write_text(payload)
    with pytest.raises(HeadScoreFileError, match=message):
        HeadScores.load(tmp_path / "bad.json")


def test_mismatched_model_raises():
    model = make_tiny_model("llama")
    spec = ModelSpec.from_model(model)
    with pytest.raises(HeadScoreFileError, match=r"4 layers x 4 heads \(made for toy\).*3 x 8"):
        scores_4x4().check_model(spec.n_layers, spec.n_heads)


def test_unsupported_architecture_raises():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1))
    with pytest.raises(UnsupportedModelError, match="Supported: Llama"):
        ModelSpec.from_model(model)


def test_spec_reads_config_not_names(family):
    model = make_tiny_model(family)
    spec = ModelSpec.from_model(model)
    assert spec.n_layers == 3 and spec.n_heads == 8
    assert len(spec.output_projections) == 3 and spec.max_positions


def test_selection():
    s = scores_4x4()
    assert s.top_k(2) == [Head(3, 1), Head(2, 2)]  # best first
    assert HeadSelection(scores=s, top_k=2).resolve(4, 4) == [Head(2, 2), Head(3, 1)]  # a set: sorted
    assert HeadSelection(scores=s, threshold=0.1).resolve(4, 4) == [Head(2, 2), Head(3, 1), Head(3, 3)]
    assert HeadSelection(scores=s).resolve(4, 4) == [Head(3, 1)]  # default K: 5 % of 16 heads, at least 1
    assert HeadSelection(heads=[(3, 1), Head(0, 2)]).resolve(4, 4) == [Head(0, 2), Head(3, 1)]
    assert HeadSelection(heads=()).resolve(4, 4) == []


def test_head_selection_is_validated_once_with_one_clear_line(tmp_path):
    bad = [
        (dict(), "say which heads"),
        (dict(scores="x.json", top_k=2, threshold=0.1), "not both"),
        (dict(scores="x.json", top_k=0), "top_k must be >= 1"),
        (dict(heads=(Head(0, 0),), top_k=2), "explicit head list"),
        (dict(scores="x.json", exclude=("y.json",)), "random control"),
        (dict(random_seed=0, threshold=0.1), "how many"),
        (dict(random_seed=0, layer_matched=True), "to match"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            HeadSelection(**kwargs)
    path = scores_4x4().save(tmp_path / "toy.json")
    with pytest.raises(HeadScoreFileError, match=r"toy\.json: head scores are 4 layers x 4 heads.*has 3 x 8") as err:
        HeadSelection(scores=path).resolve(3, 8)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not exist"):
        HeadSelection(heads=[Head(4, 0)]).resolve(4, 4)


def test_one_random_control_rule():
    """K heads drawn with the seed from all heads minus the selection of every named set, optionally layer-matched."""
    a, b = torch.zeros(4, 8), torch.zeros(4, 8)
    a[3, :3], b[1, 2], b[2, 6], b[0, 1] = 1.0, 0.9, 0.8, 0.7
    sa, sb = HeadScores(a), HeadScores(b)
    union = set(sa.top_k(3)) | set(sb.top_k(3))
    for seed in range(10):
        plain = HeadSelection(top_k=3, random_seed=seed, exclude=(sa, sb)).resolve(4, 8)
        assert plain == random_heads(4, 8, 3, seed, exclude=union)  # the independent call, same draw
        own = HeadSelection(scores=sa, top_k=3, random_seed=seed, exclude=(sb,)).resolve(4, 8)
        assert own == plain  # K is the size of sa's top-3; the excluded sets are the same union
        matched = HeadSelection(scores=sa, top_k=3, random_seed=seed, exclude=(sb,), layer_matched=True).resolve(4, 8)
        assert [h.layer for h in matched] == [3, 3, 3] and not set(matched) & union
    alone = HeadSelection(scores=sa, threshold=0.5, random_seed=1).resolve(4, 8)  # the RetMask control
    assert alone == random_heads(4, 8, 3, 1, exclude=sa.top_k(3))
    assert len(HeadSelection(random_seed=0).resolve(32, 32)) == share_of_heads(1024) == 51


def test_head_selection_from_strings(tmp_path):
    path = scores_4x4().save(tmp_path / "toy.json")
    assert HeadSelection.parse(f"heads={path},top_k=2") == HeadSelection(scores=str(path), top_k=2)
    assert HeadSelection.parse("heads=3.1;0.2").resolve(4, 4) == [Head(0, 2), Head(3, 1)]
    assert HeadSelection.parse("heads=3-1").heads == (Head(3, 1),)
    assert HeadSelection.parse("random_seed=1,top_k=2") == HeadSelection(random_seed=1, top_k=2)
    assert HeadSelection.parse("heads=random") == HeadSelection(random_seed=0)
    assert HeadSelection.parse("heads=none").resolve(4, 4) == []
    control = HeadSelection.parse(f"heads={path},top_k=2,random_seed=3,layer_matched=true")
    assert control.layer_matched and control.resolve(4, 4) == random_heads(
        4, 4, 2, 3, exclude=[Head(3, 1), Head(2, 2)], layer_matched_to=[Head(3, 1), Head(2, 2)])
    assert HeadSelection.from_args(str(path), exclude=f"{path};{path}", random_seed=0).exclude == (str(path),) * 2
    with pytest.raises(ValueError, match="KEY=VALUE"):
        HeadSelection.parse("heads=3.1,k=2")
    with pytest.raises(FileNotFoundError, match="neither a head-score file"):
        HeadSelection.parse(f"heads={tmp_path / 'missing.json'}")
    assert HeadSelection(scores=path, top_k=2).to_json()["scores"] == str(path)


def test_random_controls_exclude_and_are_seeded():
    banned = [Head(layer, h) for layer in range(4) for h in range(3)]
    for seed in range(20):
        picked = random_heads(4, 4, k=4, seed=seed, exclude=banned)
        assert not set(picked) & set(banned)
        assert picked == random_heads(4, 4, k=4, seed=seed, exclude=banned)
    with pytest.raises(ValueError, match="only 4 heads"):
        random_heads(4, 4, k=5, seed=0, exclude=banned)


def test_layer_matched_random_controls():
    target = [Head(3, 1), Head(3, 3), Head(2, 2)]
    picked = random_heads(4, 4, k=3, seed=1, exclude=target, layer_matched_to=target)
    assert sorted(h.layer for h in picked) == [2, 3, 3] and not set(picked) & set(target)


def test_concentration_statistics():
    s = scores_4x4()
    c = concentration(s, threshold=0.1, top=2)
    assert c["n_above_0.1"] == 3
    assert c["top_2_share"] == pytest.approx(1.4 / 1.65)
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 1]) == pytest.approx(0.75)
    assert overlap([Head(0, 0), Head(1, 1)], [Head(1, 1)])["jaccard"] == pytest.approx(0.5)


def test_head_parse():
    assert Head.parse("12.5") == Head(12, 5) == Head.parse("12-5")
    with pytest.raises(ValueError):
        Head.parse("x")


def test_missing_builtin_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    import headatlas.organism as organism
    from headatlas.model_spec import resolve_model_path

    monkeypatch.setattr(organism, "ORGANISM_PATH", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="organism train"):
        resolve_model_path("organism")
    assert resolve_model_path("some/hub-id") == "some/hub-id"


# ---- only scored heads are ever "top" heads (issue 28) -------------------------------------------------
def test_null_level_is_recorded_and_old_files_read_as_zero(tmp_path):
    s = HeadScores(scores_4x4().scores, {"model": "toy"}, null_level=0.1)
    path = s.save(tmp_path / "h.json")
    data = json.loads(path.read_text())
    assert data["null_level"] == 0.1 and HeadScores.load(path).null_level == 0.1
    del data["null_level"]  # written before the field existed: event scores
    path.write_text(json.dumps(data))
    assert HeadScores.load(path).null_level == 0.0
    data["null_level"] = "high"
    path.write_text(json.dumps(data))
    with pytest.raises(HeadScoreFileError, match="null_level"):
        HeadScores.load(path)


def test_top_heads_are_only_scored_heads():
    s = scores_4x4()  # 4 heads above 0, 12 at 0
    assert s.n_scored == 4 and len(s.scored()) == 4 and all(v > 0 for _, v in s.scored())
    assert s.top_k(10) == [Head(3, 1), Head(2, 2), Head(3, 3), Head(0, 0)]  # never a zero-score head
    assert s.above(-1.0) == s.top_k(10)  # a threshold below the null level adds no unscored head
    high = HeadScores(s.scores, null_level=0.3)
    assert high.n_scored == 2 and high.top_k(10) == [Head(3, 1), Head(2, 2)] and high.above(0.0) == high.top_k(2)


def test_a_selection_asked_for_more_heads_than_score_says_so(tmp_path):
    from headatlas.selection import HeadSelectionError, HeadSelectionWarning

    path = scores_4x4().save(tmp_path / "toy.json")
    with pytest.raises(HeadSelectionError, match=r"top_k=5: only 4 of the 16 heads score above .* null level 0 "
                                                 r"\(.*toy\.json\); ask for at most 4"):
        HeadSelection(scores=path, top_k=5).resolve(4, 4)
    with pytest.raises(HeadSelectionError, match="top_k=17 is more than the model's 16 heads"):
        HeadSelection(scores=path, top_k=17).resolve(4, 4)
    with pytest.raises(HeadSelectionError, match="top_k=17 is more than the model's 16 heads"):
        HeadSelection(top_k=17, random_seed=0).resolve(4, 4)
    assert HeadSelection(scores=path, top_k=4).resolve(4, 4) == sorted(scores_4x4().top_k(4))
    big = torch.zeros(8, 16)  # default K: 5 % of 128 = 6, but only 2 heads score
    big[7, 1], big[6, 3] = 0.4, 0.2
    with pytest.warns(HeadSelectionWarning, match="default K is 6 heads .* only 2 score"):
        assert HeadSelection(scores=HeadScores(big)).resolve(8, 16) == [Head(6, 3), Head(7, 1)]
    with pytest.raises(HeadSelectionError, match="no head scores above the scorer's null level"):
        HeadSelection(scores=HeadScores(torch.zeros(4, 4))).resolve(4, 4)
    with pytest.raises(HeadSelectionError, match="threshold 0.95: no head scores above it"):
        HeadSelection(scores=path, threshold=0.95).resolve(4, 4)
    # a random control still draws from every head outside the set, scored or not
    drawn = HeadSelection(scores=HeadScores(big), top_k=2, random_seed=3).resolve(8, 16)
    assert drawn == random_heads(8, 16, 2, 3, exclude=[Head(7, 1), Head(6, 3)])


def test_a_score_file_of_another_model_is_refused_naming_both(tmp_path):
    from headatlas.heads import BASE_MODEL_RECORDS
    from headatlas.masking import ABLATION_FILE, LEGACY_ABLATION_FILE
    from headatlas.model_spec import resolve_model_path
    from headatlas.retmask.train import RUN_FILE

    assert set(BASE_MODEL_RECORDS) == {ABLATION_FILE, LEGACY_ABLATION_FILE, RUN_FILE}
    path = HeadScores(scores_4x4().scores, {"model": "organism"}).save(tmp_path / "rh.json")
    other = tmp_path / "other-model"
    other.mkdir()
    with pytest.raises(HeadScoreFileError, match=r"made for model organism, not for .*other-model.*--allow-other-model") as err:
        HeadSelection(scores=path, top_k=2).resolve(4, 4, str(other))
    assert "\n" not in str(err.value)
    assert HeadSelection(scores=path, top_k=2, allow_other_model=True).resolve(4, 4, str(other)) == [Head(2, 2), Head(3, 1)]
    for model in ("organism", resolve_model_path("organism")):  # by name or by its shipped directory
        assert HeadSelection(scores=path, top_k=2).resolve(4, 4, model) == [Head(2, 2), Head(3, 1)]
    assert HeadSelection(scores=path, top_k=2).resolve(4, 4) == [Head(2, 2), Head(3, 1)]  # no model named: shape only
    # a checkpoint made from the score file's model (RetMask, an ablation) records it: allowed
    (other / "retmask_run.json").write_text(json.dumps({"base_model": "organism"}))
    assert HeadSelection(scores=path, top_k=2).resolve(4, 4, str(other)) == [Head(2, 2), Head(3, 1)]
    merged = other / "merged"
    merged.mkdir()
    assert HeadSelection(scores=path, top_k=2).resolve(4, 4, str(merged)) == [Head(2, 2), Head(3, 1)]
    ablated = tmp_path / "ablated"
    ablated.mkdir()
    (ablated / ABLATION_FILE).write_text(json.dumps({"base_model": resolve_model_path("organism")}))
    assert HeadSelection(scores=path, top_k=2).resolve(4, 4, str(ablated)) == [Head(2, 2), Head(3, 1)]
    assert HeadSelection.parse(f"heads={path},top_k=2,allow_other_model=true").allow_other_model


def test_the_readme_python_example_masks_no_zero_score_head(tmp_path):
    """The README's HeadSelection line, run on the scores of its first steps' shape (8 of 128 heads scored,
    as `detect --lengths 128,256 --depths 3 --per-cell 1` gives on the built-in model)."""
    import re
    from pathlib import Path
    from types import SimpleNamespace

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("heads = HeadSelection("))
    raw = torch.zeros(4, 32)
    raw[3, [31, 28, 25, 27, 29, 30, 19]], raw[1, 24] = torch.tensor([0.67, 0.58, 0.5, 0.5, 0.5, 0.5, 0.25]), 0.17
    path = HeadScores(raw, {"model": "organism"}).save(tmp_path / "head_scores.json")
    code = re.sub(r'"runs/llama-rh/head_scores.json"', repr(str(path)), line)
    namespace = {"HeadSelection": HeadSelection, "spec": SimpleNamespace(n_layers=4, n_heads=32), "name": "organism"}
    exec(code, namespace)  # noqa: S102 - the README's own line
    heads = namespace["heads"]
    assert len(heads) == share_of_heads(128) == 6 and all(raw[h.layer, h.head] > 0 for h in heads)
