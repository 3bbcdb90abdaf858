"""DeCoRe decoding: a = 0 and no heads reduce to greedy base decoding; the masked stream really is masked."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from headatlas.decore import DecoreSettings, contrast, decore_generate
from headatlas.heads import Head

RETRIEVALISH = [Head(1, 0), Head(1, 3), Head(0, 5)]


class _Tok:
    """A tokenizer stand-in: ids are characters 'a'+i; id 2 is EOS, id 10 a newline."""

    eos_token_id = 2

    def __len__(self) -> int:
        return 64

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1] + [3 + (ord(c) % 50) for c in text]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join("\n" if i == 10 else chr(ord("a") + i % 26) for i in ids)

    def batch_decode(self, seqs, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s) for s in seqs]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


PROMPTS = ["the key is blue; key?", "some other context here"]


def _greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=[2, 10], pad_token_id=0)
    toks = out[0, ids.shape[1]:].tolist()
    return toks[: next((i for i, t in enumerate(toks) if t in (2, 10)), len(toks))]


def test_alpha_zero_is_greedy_base_decoding(model):
    tok = _Tok()
    outs = decore_generate(model, tok, PROMPTS, RETRIEVALISH, alpha=0.0, max_new_tokens=12)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.tokens == _greedy(model, tok, prompt, 12)


@pytest.mark.parametrize(("alpha", "masked_prefill"), [(0.5, False), (2.0, False), (8.0, False), (2.0, True)])
def test_no_heads_masked_is_base_for_every_alpha(model, alpha, masked_prefill):
    tok = _Tok()
    outs = decore_generate(model, tok, PROMPTS, [], alpha=alpha, max_new_tokens=12, masked_prefill=masked_prefill)
    assert [o.tokens for o in outs] == [_greedy(model, tok, p, 12) for p in PROMPTS]


def test_masked_stream_uses_the_mask_and_changes_the_choice(model):
    tok = _Tok()
    out = decore_generate(model, tok, PROMPTS[:1], RETRIEVALISH, alpha=1.0, max_new_tokens=4, keep_logits=True)[0]
    base, masked = out.logits[0]
    assert not torch.allclose(base, masked)
    scores, _ = contrast(base, masked, DecoreSettings(alpha=1.0))
    expected = (2 * torch.log_softmax(base, -1) - torch.log_softmax(masked, -1))
    assert torch.allclose(scores, expected, atol=1e-6)
    assert out.tokens[0] == int(expected.argmax())


def test_dynamic_alpha_is_the_entropy_of_p_base_normalised_and_capped():
    base = torch.tensor([1.0, 0.0, -1.0, 0.5])
    p = torch.softmax(base, -1)
    entropy = float(-(p * p.log()).sum())
    _, a = contrast(base, base, DecoreSettings(dynamic=True))
    assert float(a) == pytest.approx(entropy)
    _, a = contrast(base, base, DecoreSettings(dynamic=True, normalise=True))
    assert float(a) == pytest.approx(entropy / torch.log(torch.tensor(4.0)).item())
    _, a = contrast(base, base, DecoreSettings(dynamic=True, cap=0.1))
    assert float(a) == pytest.approx(0.1)


def test_sampling_is_seeded(model):
    tok = _Tok()
    run = lambda s: [o.tokens for o in decore_generate(model, tok, PROMPTS, RETRIEVALISH, alpha=0.5, sample=True,  # noqa: E731
                                                       seed=s, max_new_tokens=8, stop_on_newline=False)]
    assert run(3) == run(3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha_or_cap_is_refused(bad, tmp_path):
    """NaN or infinite strengths wrote empty answers and NaN into decore.json: refused, in the API and the run config."""
    from headatlas.decore.experiment import DecoreRunConfig

    with pytest.raises(ValueError, match="alpha must be a finite number"):
        DecoreSettings(alpha=bad)
    with pytest.raises(ValueError, match="cap must be a finite number"):
        DecoreSettings(dynamic=True, cap=bad)
    with pytest.raises(ValueError, match="--alpha .*finite number"):
        DecoreRunConfig(model="m", heads="h", out=str(tmp_path / "o"), source="task:conflict", alphas=[1.0, bad])
    with pytest.raises(ValueError, match="--cap .*finite number"):
        DecoreRunConfig(model="m", heads="h", out=str(tmp_path / "o"), source="task:conflict", dynamic=True, cap=bad)
    assert not (tmp_path / "o").exists()


def test_prompts_past_the_window_are_refused_as_niah_eval_refuses_them(tiny_dir, tmp_path):
    """decore ran prompts longer than the model's window: refused by the one window check, nothing written."""
    from headatlas.decore.experiment import DecoreRunConfig, run_decore
    from headatlas.heads import HeadScores

    scores = torch.zeros(3, 8)
    scores[2, 1], scores[1, 0] = 0.9, 0.5
    heads = HeadScores(scores, {"model": str(tiny_dir)}).save(tmp_path / "rh.json")
    out = tmp_path / "out"
    config = DecoreRunConfig(model=str(tiny_dir), heads=str(heads), out=str(out), source="x", top_k=1, random_seeds=1)
    items = [{"id": "short", "prompt": "Answer:"}, {"id": "long", "prompt": "The answer is 42. " * 400}]
    with pytest.raises(ValueError, match=r"1 prompts \(up to \d+ tokens\) exceed the model's window of 1024 tokens"):
        run_decore(config, items, progress=False)
    with pytest.raises(ValueError, match="top_k=3: only 2 of the 24 heads score"):
        run_decore(DecoreRunConfig(model=str(tiny_dir), heads=str(heads), out=str(out), source="x", top_k=3), items[:1],
                   progress=False)
    other = HeadScores(scores, {"model": "some/other-model"}).save(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"made for model some/other-model, not for .*tiny"):
        run_decore(DecoreRunConfig(model=str(tiny_dir), heads=str(other), out=str(out), source="x"), items[:1],
                   progress=False)
    assert not out.exists()
