"""Layer kinds, attention sinks and layers without softmax heads, in the engine, the score files and selections."""

from __future__ import annotations

import json

import pytest
import torch

from headatlas import ModelSpec, capture_attention
from headatlas.attention import softmax_log_denominator, softmax_with_sinks
from headatlas.heads import Head, HeadScoreFileError, HeadScores
from headatlas.model_support import command_support
from headatlas.selection import HeadSelection
from tests.families.registry import make_family_model


def test_sink_helpers_count_the_sink_in_the_denominator():
    scores = torch.tensor([[[[1.0, 2.0, float("-inf")]]]])  # (B, H, R, Lk), one masked key
    sink = torch.tensor([0.5])
    expected = torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(0.5)))
    torch.testing.assert_close(softmax_log_denominator(scores, sink).flatten(), expected.reshape(1))
    probs = softmax_with_sinks(scores, sink)
    torch.testing.assert_close(probs.sum(), 1 - torch.exp(torch.tensor(0.5)) / torch.exp(expected))
    torch.testing.assert_close(softmax_with_sinks(scores), torch.softmax(scores, -1))


def test_sinks_take_mass_and_leave_top1_keys_alone():
    """GPT-OSS: a large sink shrinks every recorded mass (as eager's own weights do) but moves no top-1 key."""
    model = make_family_model("gpt_oss")
    spec = ModelSpec.from_model(model)
    ids = torch.randint(3, 290, (1, 12), generator=torch.Generator().manual_seed(3))
    runs = {}
    for name, value in (("no sink", -30.0), ("sink", 3.0)):
        with torch.no_grad():
            for m in spec.attention_modules:
                m.sinks.fill_(value)
            with capture_attention(model, keys_per_row=1, spec=spec) as rec:
                model(ids)
            runs[name] = rec.stacked()
            eager = model(ids, output_attentions=True).attentions  # the eager backend's weights, sink included
        got = runs[name].weights[0, :, 0, :, 0, 0]  # (L, H)
        torch.testing.assert_close(got, torch.stack([a[0, :, -1].max(-1).values for a in eager]))
    # layer 0 sees the same queries and keys in both runs (later layers see what the sinks changed):
    assert torch.equal(runs["sink"].indices[:, 0], runs["no sink"].indices[:, 0])  # copy events are unaffected
    assert (runs["sink"].weights[:, 0] < 0.9 * runs["no sink"].weights[:, 0]).all()  # masses: the sink-inclusive share


def test_scores_with_nan_layers_round_trip_and_are_never_selected(tmp_path):
    scores = torch.tensor([[float("nan")] * 4, [0.9, 0.1, 0.0, 0.3], [float("nan")] * 4, [0.5, 0.2, 0.8, 0.05]])
    path = HeadScores(scores, {"model": "hybrid"}).save(tmp_path / "s.json")
    assert json.loads(path.read_text())["scores"][0] == [None] * 4  # valid JSON: null, never NaN
    loaded = HeadScores.load(path)
    assert loaded.scores.isnan().equal(scores.isnan())
    assert all(h.layer in (1, 3) for h, _ in loaded.ranked()) and len(loaded.ranked()) == 8
    with pytest.raises(HeadScoreFileError, match="NaN"):
        HeadScores(torch.tensor([[float("nan"), 0.1], [0.2, 0.3]]))  # NaN only fills a whole layer
    assert HeadSelection(scores=loaded).resolve(4, 4) == [Head(1, 0)]  # 5 % of the 8 softmax heads: 1 (not of 16)
    for seed in range(20):
        drawn = HeadSelection(scores=loaded, top_k=3, random_seed=seed).resolve(4, 4)
        assert all(h.layer in (1, 3) for h in drawn)


def test_spec_and_capture_of_a_hybrid():
    model = make_family_model("qwen3_5")
    spec = ModelSpec.from_model(model)
    assert spec.layer_kinds == ["linear", "full", "linear", "full"] and spec.softmax_layers == [1, 3]
    assert spec.n_total_heads == 2 * spec.n_heads and spec.attention_modules[0] is None
    assert spec.describe()["recurrent_layers"] == [0, 2]
    with pytest.raises(ValueError, match="no softmax heads"), capture_attention(model, layers=[0], spec=spec):
        pass
    with torch.no_grad(), capture_attention(model, layers=[3], spec=spec) as rec:
        model(torch.randint(3, 290, (1, 8)))
    assert rec.stacked().indices.shape[1] == 1


def test_spec_of_mla_sliding_chunked_and_sinks():
    mla = ModelSpec.from_model(make_family_model("deepseek_v3"))
    assert (mla.head_dim, mla.qk_head_dim, mla.layer_kinds[0]) == (12, 16, "latent")  # v_head_dim, nope + rope
    gemma = ModelSpec.from_model(make_family_model("gemma3"))
    assert gemma.layer_kinds == ["sliding", "full", "sliding", "full"] and gemma.windows == [5, None, 5, None]
    llama4 = ModelSpec.from_model(make_family_model("llama4_text"))
    assert llama4.layer_kinds == ["chunked", "chunked", "chunked", "full"] and llama4.windows[0] == 6
    oss = ModelSpec.from_model(make_family_model("gpt_oss"))
    assert oss.sinks and oss.describe()["attention_sinks"] is True


def test_command_support_says_what_each_command_does():
    support = command_support(ModelSpec.from_model(make_family_model("jamba")))
    assert "layers 0, 2 have no softmax heads" in support["detect / capture"]
    assert support["kv-compress"].startswith("yes: compresses the full-length layers 1, 3")
    mla = command_support(ModelSpec.from_model(make_family_model("deepseek_v3")))
    assert mla["kv-compress"].startswith("refused: ") and "latent" in mla["kv-compress"]
    gemma = command_support(ModelSpec.from_model(make_family_model("gemma3")))
    assert "sliding/chunked layers 0, 2 are kept whole" in gemma["kv-compress"]


def test_info_command_prints_layer_kinds_and_support(tmp_path):
    from typer.testing import CliRunner

    from headatlas.cli import app
    from tests.families.registry import niah_tokenizer

    model = make_family_model("lfm2")
    model.save_pretrained(tmp_path)
    niah_tokenizer().save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["info", "--model", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "linear" in result.output and "kv-compress" in result.output and "no softmax heads" in result.output


def test_report_greys_layers_without_softmax_heads(tmp_path):
    from headatlas.report.collect import collect_runs
    from headatlas.report.render import render_report

    scores = torch.tensor([[float("nan")] * 4, [0.9, 0.1, 0.0, 0.3], [float("nan")] * 4, [0.5, 0.2, 0.8, 0.05]])
    HeadScores(scores, {"model": "hybrid", "method": "retrieval-score"}).save(tmp_path / "run" / "head_scores.json")
    page = render_report(collect_runs([tmp_path / "run"]))
    assert "layers [0, 2] (grey) have no softmax heads" in page and "the 1 best outlined" in page  # 5 % of 8 heads
    assert "NaN," not in page and "NaN]" not in page  # the embedded data holds null (valid JSON), never NaN


@pytest.mark.parametrize("full", [[], [0], [1]])
def test_split_kv_attention_gives_each_head_group_its_own_sinks(full):
    """GPT-OSS through the head-split cache with a window longer than the prompt (nothing evicted): the logits are
    the model's own, which holds only if every group of query heads gets its own sink logits."""
    from headatlas.kvcache import HeadSplitCache, compressed_attention

    model = make_family_model("gpt_oss")
    spec = ModelSpec.from_model(model)
    with torch.no_grad():
        for m in spec.attention_modules:
            m.sinks.copy_(torch.tensor([3.0, -2.0, 0.5, 1.5]))  # distinct per head: a wrong slice shows
        ids = torch.randint(3, 290, (1, 12), generator=torch.Generator().manual_seed(4))
        plain = model(ids).logits
        cache = HeadSplitCache([full] * spec.n_layers, spec.n_kv_heads, sink=1, window=64)
        with compressed_attention(model):
            split = model(ids, past_key_values=cache).logits
    torch.testing.assert_close(split, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["mistral", "gemma3", "llama4_text", "gpt_oss", "qwen3_5"])
def test_decode_steps_record_absolute_positions_in_windowed_layers(family):
    """A sliding-window or chunked layer's cache keeps only its last keys at decode time: the recorded keys
    and row positions are still absolute, equal to eager attention over the whole sequence at every step."""
    model = make_family_model(family)
    spec = ModelSpec.from_model(model)
    ids = torch.randint(3, 290, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture_attention(model, spec=spec) as rec:
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    got = rec.stacked()
    assert got.positions.flatten().tolist() == list(range(15, 15 + got.indices.shape[0]))
    base = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(out[:, :-1], output_attentions=True).attentions
    model.set_attn_implementation(base)
    for step in range(got.indices.shape[0]):
        for layer, att in zip(spec.softmax_layers, eager, strict=True):
            assert torch.equal(got.indices[step, layer, 0, :, 0, 0], att[0, :, 15 + step].argmax(-1)), (step, layer)
