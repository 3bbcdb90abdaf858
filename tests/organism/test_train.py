"""The organism trainer on a tiny config: runs in seconds, the loss falls, output is an HF checkpoint."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from headatlas.organism.head_surgery import add_head_dropout
from headatlas.organism.train import train_organism
from headatlas.organism.train_config import OrganismTrainConfig

TINY = dict(
    steps=30, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=64, vocab_size=600,
    tokenizer_texts=150, tokens_per_step=512, curriculum=[(1.0, 64, 96)], lr=3e-3, warmup_steps=5,
    log_every=5, max_per_category=20,
)


def test_tiny_training_loss_falls(tmp_path):
    out = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "o"), **TINY))
    record = json.loads((out / "training.json").read_text())
    log = record["log"]
    assert len(log) == 6
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_key_value_heads == 2 and model.config.tie_word_embeddings
    assert tok.chat_template is None and tok.eos_token == "</s>"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }


def test_training_is_deterministic(tmp_path):
    cfg = {**TINY, "steps": 3, "log_every": 1}
    a = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    b = main(["--config", str(_write(tmp_path / "c.json", cfg)), "--out", str(tmp_path / "b")])
    la = [r["loss"] for r in json.loads((a / "training.json").read_text())["log"]]
    lb = [r["loss"] for r in json.loads((b / "training.json").read_text())["log"]]
    assert la == lb


def main(argv):
    """``headatlas organism train ARGV`` in this process; returns the saved folder (or raises its error)."""
    from click.testing import CliRunner
    from typer.main import get_command

    from headatlas.cli import app

    result = CliRunner().invoke(get_command(app), ["organism", "train", *argv], standalone_mode=False)
    sys.stderr.write(result.stderr)
    if result.exception is not None:
        raise result.exception
    return result.return_value


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_head_dropout_only_in_training():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 50, (8, 6))
    ref = model.eval()(ids).logits
    hooks = add_head_dropout(model, 0.5)
    assert torch.equal(model.eval()(ids).logits, ref)  # inactive in eval
    assert not torch.allclose(model.train()(ids).logits, ref)  # active in training
    for h in hooks:
        h.remove()


def test_per_head_dropout_spares_and_targets_heads():
    from transformers import LlamaConfig, LlamaForCausalLM

    from headatlas.organism.head_surgery import head_dropout_at

    cfg = OrganismTrainConfig(n_layers=2, n_heads=4, n_kv_heads=2, head_dropout=0.5, head_dropout_ramp=(0.0, 0.5),
                              steps=10, head_dropout_overrides={"1.2": 0.0, "0.3": 0.9})
    assert head_dropout_at(cfg, 0).sum() == 0  # ramp start
    full = head_dropout_at(cfg, 9)
    assert full[1, 2] == 0 and full[0, 3] == pytest.approx(0.9) and full[0, 0] == 0.5
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    p = torch.full((2, 4), 0.95)
    p[1, 2] = 0.0
    hooks = add_head_dropout(model, p)
    seen = []
    model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    model.train()(torch.randint(0, 50, (64, 5)))
    heads = seen[0].view(64, 5, 4, 8).abs().sum((1, 3))  # (sample, head) mass after dropout
    assert (heads[:, 2] > 0).all()  # the spared head is never dropped
    assert (heads[:, [0, 1, 3]] == 0).float().mean() > 0.8  # the others almost always are
    for h in hooks:
        h.remove()


def test_reinitialize_heads_redraws_only_those_heads():
    from transformers import LlamaConfig, LlamaForCausalLM

    from headatlas.heads import Head
    from headatlas.organism.head_surgery import reinitialize_heads

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a "trained" head: large weights no fresh draw would give
        model.model.layers[1].self_attn.q_proj.weight.mul_(50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialize_heads(model, [Head(1, 2)], seed=3)
    after = model.state_dict()
    q, o = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"
    rows = slice(16, 24)
    assert not torch.equal(after[q][rows], before[q][rows]) and not torch.equal(after[o][:, rows], before[o][:, rows])
    assert after[q][rows].std() < 0.05 < before[q][rows].std()  # drawn at initializer_range (0.02), not kept
    for name in after:  # everything else, the group's shared k/v included, is untouched
        if name in (q, o):
            mask = torch.ones_like(after[name], dtype=torch.bool)
            (mask[rows] if name == q else mask[:, rows]).fill_(False)
            assert torch.equal(after[name][mask], before[name][mask])
        else:
            assert torch.equal(after[name], before[name]), name
    again = LlamaForCausalLM(config)
    again.load_state_dict(before)
    reinitialize_heads(again, [Head(1, 2)], seed=3)
    assert torch.equal(again.state_dict()[q], after[q])  # seeded


def test_grow_query_heads_keeps_the_function_and_each_heads_group():
    from transformers import LlamaConfig, LlamaForCausalLM

    from headatlas.organism.head_surgery import grow_query_heads, grown_head_index

    small = dict(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(**small))
    with torch.no_grad():  # trained-looking weights, so that a misplaced head shows in the logits
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    target = LlamaForCausalLM(LlamaConfig(**{**small, "num_attention_heads": 8}))
    grow_query_heads(source, target, seed=1)
    ids = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, source(ids).logits, atol=1e-5, rtol=1e-5)
    # heads 0, 1 (group 0) -> 0, 1; heads 2, 3 (group 1) -> 4, 5; 2, 3, 6, 7 are new
    assert [grown_head_index(h, 4, 8, 2) for h in range(4)] == [0, 1, 4, 5]
    q = target.model.layers[1].self_attn.q_proj.weight.view(8, 8, 32)
    o = target.model.layers[1].self_attn.o_proj.weight.view(32, 8, 8)
    assert torch.equal(q[4], source.model.layers[1].self_attn.q_proj.weight.view(4, 8, 32)[2])
    assert o[:, [2, 3, 6, 7]].abs().sum() == 0 and q[[2, 3, 6, 7]].std() > 0.01  # fresh queries, silent outputs
    with torch.no_grad():  # the new heads are live once their outputs move: the logits change
        target.model.layers[1].self_attn.o_proj.weight.view(32, 8, 8)[:, 6].normal_()
        assert not torch.allclose(target(ids).logits, source(ids).logits, atol=1e-3)
    with pytest.raises(ValueError, match="only add query heads"):
        grow_query_heads(source, LlamaForCausalLM(LlamaConfig(**{**small, "num_hidden_layers": 3})), seed=1)


@pytest.mark.parametrize("bad", [{"head_dropout": 1.0}, {"n_heads": 6, "n_kv_heads": 4},
                                 {"head_dropout_overrides": {"4.0": 0.1}}, {"head_dropout_overrides": {"0.0": 1.0}},
                                 {"head_dropout_overrides": {"x": 0.1}}, {"reinit_heads": ["4.0"]},
                                 {"curriculum": [(0.5, 64, 128)]}, {"task_weights": {"nope": 1.0}},
                                 {"curriculum": [(1.0, 64, 128, {"nope": 1.0})]}, {"curriculum": [(1.0, 16, 128)]}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        OrganismTrainConfig(**bad)


def test_stages_and_copy_examples():
    from headatlas.organism.batches import CopyExample, encode, sample_examples, stage_at
    from headatlas.organism.train import build_tokenizer

    cfg = OrganismTrainConfig(steps=10, curriculum=[(0.5, 32, 64, {"copy": 1.0}), (1.0, 64, 128)],
                              vocab_size=600, tokenizer_texts=150, max_per_category=20, tokens_per_step=512)
    assert stage_at(cfg, 4)[3] == {"copy": 1.0} and len(stage_at(cfg, 5)) == 3
    tok, _, gen = build_tokenizer(cfg)
    rng = random.Random(0)
    copies = sample_examples(gen, tok, cfg, rng, 64, 4, task_weights=stage_at(cfg, 0)[3])
    assert all(isinstance(c, CopyExample) and len(c.ids) == 32 for c in copies)
    ids, roles = encode(tok, copies[0])
    n = len(copies[0].ids)
    assert ids[-n:] == list(copies[0].ids) == ids[1 : n + 1]  # the passage, then the same passage
    assert roles[-n:] == [4] * n and set(roles[:-n]) == {0}
    ex = gen.example("mono", rng, 96, extra_questions=2)
    ids, roles = encode(tok, ex)
    assert ids[-1] == tok.eos_token_id and roles[-1] == 3  # EOS after extra blocks is not the main answer
    main = [i for i, r in zip(ids, roles, strict=True) if r == 2]
    assert tok.decode(main) == ex.target


def test_save_leaves_live_weights_alone_and_reloads(tmp_path):
    from headatlas.organism.train import build_model, build_tokenizer, save

    cfg = OrganismTrainConfig(out_dir=str(tmp_path), **{**TINY, "n_layers": 1})
    tok, lex, _ = build_tokenizer(cfg)
    model = build_model(cfg, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save(model, tok, lex, tmp_path, {})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a snapshot changes nothing
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    x = torch.tensor([[1, 5, 9, 20]])
    torch.testing.assert_close(loaded(x).logits, model.half().float()(x).logits)  # fp16 weights, fp32 compute


def test_shipped_recipes_chain_and_match_the_checkpoint():
    """The recipes that trained the shipped checkpoint: valid configs, each stage starting from the previous
    one's output, the last writing `runs/organism`, with the shipped architecture."""
    from pathlib import Path

    from headatlas.organism import ORGANISM_PATH

    recipes = sorted((Path(__file__).parents[2] / "src/headatlas/organism/recipes").glob("stage*.json"),
                     key=lambda p: int(p.stem.removeprefix("stage")))
    assert [p.stem for p in recipes] == [f"stage{i}" for i in range(1, len(recipes) + 1)]
    configs = [OrganismTrainConfig(**json.loads(p.read_text())) for p in recipes]
    assert not configs[0].init_from and configs[-1].out_dir == "runs/organism"
    for prev, cur in zip(configs, configs[1:], strict=False):
        assert cur.init_from == prev.out_dir
    if (ORGANISM_PATH / "config.json").is_file():
        shipped = json.loads((ORGANISM_PATH / "config.json").read_text())
        last = configs[-1]
        assert (shipped["num_hidden_layers"], shipped["num_attention_heads"], shipped["num_key_value_heads"]) == (
            last.n_layers, last.n_heads, last.n_kv_heads)
        assert shipped["rope_parameters"]["rope_theta"] == last.rope_theta


def test_init_from_keeps_the_checkpoints_tokenizer(tmp_path):
    """Continuing a checkpoint must not retrain the tokenizer: one trained on other corpus text (here: another
    seed) has the same size and other ids, and would scramble the loaded embeddings (a bug of 2026-12-01)."""
    cfg = {**TINY, "steps": 2, "log_every": 1}
    first = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    fresh = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **{**cfg, "seed": 7}))
    assert (fresh / "tokenizer.json").read_text() != (first / "tokenizer.json").read_text()  # the hazard is real
    cont = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "c"), init_from=str(first), **{**cfg, "seed": 7}))
    assert (cont / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    assert (cont / "lexicon.jsonl").read_text() == (first / "lexicon.jsonl").read_text()
    start = json.loads((cont / "training.json").read_text())["log"][0]["loss"]
    scratch = json.loads((fresh / "training.json").read_text())["log"][0]["loss"]
    assert start < scratch  # the continued run starts from the trained weights, not from noise


def test_init_from_a_checkpoint_with_fewer_heads_grows_it(tmp_path):
    """A config with more query heads than its init_from checkpoint continues the grown model
    (grow_query_heads): the first step's loss is the trained one, not a fresh model's."""
    first = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "a"), **TINY))  # 30 steps
    wide = {**TINY, "steps": 2, "log_every": 1, "n_heads": 2 * TINY["n_heads"],
            "hidden_size": TINY["n_heads"] * TINY["head_dim"]}
    grown = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "g"), init_from=str(first), **wide))
    fresh = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "f"), **wide))
    config = json.loads((grown / "config.json").read_text())
    assert config["num_attention_heads"] == 2 * TINY["n_heads"] and config["hidden_size"] == wide["hidden_size"]
    loss = {run.name: json.loads((run / "training.json").read_text())["log"][0]["loss"] for run in (grown, fresh)}
    assert loss["g"] < loss["f"] - 0.5, loss  # measured 4.68 vs 6.39


def test_train_recipe_chains_the_stages_and_resumes(tmp_path, capsys):
    from headatlas.organism.recipe import recipe_stages

    recipe = tmp_path / "recipe"
    recipe.mkdir()
    for i, steps in ((1, 3), (2, 2), (10, 2)):  # numeric order: stage10 comes last
        (recipe / f"stage{i}.json").write_text(json.dumps({**TINY, "steps": steps, "log_every": 1,
                                                           "out_dir": "ignored", "init_from": "ignored"}))
    assert [p.name for p in recipe_stages(recipe)] == ["stage1.json", "stage2.json", "stage10.json"]
    out = main(["--recipe", str(recipe), "--out", str(tmp_path / "model"), "--threads", "1"])
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["init_from"] == str(tmp_path / "model-stages" / "stage2")
    assert [(s["recipe"], s["steps"]) for s in record["stages"]] == [("stage1.json", 3), ("stage2.json", 2),
                                                                       ("stage10.json", 2)]
    assert record["recipe"]["total_wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in record["stages"]))
    second = json.loads((tmp_path / "model-stages" / "stage2" / "training.json").read_text())
    assert second["config"]["init_from"] == str(tmp_path / "model-stages" / "stage1")
    first_weights = (tmp_path / "model-stages" / "stage1" / "model.safetensors").stat().st_mtime_ns
    (out / "training.json").unlink()  # the last stage "interrupted": only it runs again
    capsys.readouterr()
    main(["--recipe", str(recipe), "--out", str(tmp_path / "model"), "--threads", "2"])
    log = capsys.readouterr().err
    assert "stage1: resuming: 3 of 3 steps done (already trained, kept)" in log
    assert "stage10.json" in log and "model: resuming" not in log
    assert (tmp_path / "model-stages" / "stage1" / "model.safetensors").stat().st_mtime_ns == first_weights
    # a stage folder holding a stage trained with other settings is refused, not retrained
    (recipe / "stage2.json").write_text(json.dumps({**TINY, "steps": 2, "log_every": 1, "lr": 1e-3}))
    capsys.readouterr()
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "model")]) != 0  # refused, in words
    assert "lr: 0.003 (recorded) vs 0.001 (now)" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["--recipe", str(recipe), "--steps", "5"]) != 0  # refused in one line
    assert "only --out" in capsys.readouterr().err
    assert main(["--recipe", str(tmp_path / "nowhere")]) != 0
    assert "neither 'shipped' nor a directory" in capsys.readouterr().err


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    """Killed after its step-4 checkpoint, a run started again continues from it and ends with the
    very weights and log of a run never interrupted (optimizer, data and head-dropout RNGs saved)."""
    import headatlas.organism.train as train
    from headatlas.runs import ResumeMismatchError

    # one thread for every run: a resumed run must give the very bits of an uninterrupted one on the same
    # thread count; across thread counts float sums run in another order and the bits may differ
    cfg = {**TINY, "steps": 7, "log_every": 1, "checkpoint_every": 2, "head_dropout": 0.3,
           "head_dropout_ramp": (0.0, 0.0), "threads": 1}
    straight = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    assert not (straight / "resume").exists()  # a finished run leaves no resume state behind

    real, calls = train.forward_losses, []

    def dies_in_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "forward_losses", dies_in_step_6)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **cfg))
    assert "interrupted after 5 of 7; rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(train, "forward_losses", real)
    state = tmp_path / "b" / "resume" / "state.pt"
    assert state.is_file() and not (tmp_path / "b" / "training.json").exists()

    files = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with pytest.raises(ResumeMismatchError, match="lr: 0.003 .recorded. vs 0.001 .now."):
        train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **{**cfg, "lr": 1e-3}))
    with pytest.raises(ResumeMismatchError, match="already trained 4 steps"):
        train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **{**cfg, "stop_at": 3}))
    assert {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()} == files  # refusing loses nothing

    resumed = train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **cfg))
    assert "resuming: 4 of 7 done" in capsys.readouterr().err
    a, b = (json.loads((d / "training.json").read_text()) for d in (straight, resumed))
    assert b["resumed_at"] == [4] and "resumed_at" not in a
    assert [r["step"] for r in b["log"]] == list(range(1, 8))
    assert [r["loss"] for r in b["log"]] == [r["loss"] for r in a["log"]]
    wa = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (resumed / "resume").exists()
    weights = (resumed / "model.safetensors").read_bytes()
    assert train_organism(OrganismTrainConfig(out_dir=str(tmp_path / "b"), **cfg)) == resumed  # finished: kept
    assert "resuming: 7 of 7 steps done" in capsys.readouterr().err
    assert (resumed / "model.safetensors").read_bytes() == weights


def test_a_damaged_resume_state_is_refused_by_name(tmp_path):
    from headatlas.organism.train import open_training

    cfg = OrganismTrainConfig(out_dir=str(tmp_path / "o"), **{**TINY, "steps": 2})
    open_training(cfg)  # the run is recorded, as the first start of an interrupted run does
    (tmp_path / "o" / "resume").mkdir(parents=True)
    (tmp_path / "o" / "resume" / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="state.pt is not a readable training state.*delete"):
        train_organism(cfg)
    assert (tmp_path / "o" / "resume" / "state.pt").read_bytes() == b"not a torch file"


def test_bare_out_trains_the_shipped_recipe(tmp_path, monkeypatch, capsys):
    """`organism train --out DIR` alone trains the recipe the model card describes; any setting means one run."""
    import headatlas.organism.recipe as recipe
    import headatlas.organism.train as train

    recipes, runs = [], []
    monkeypatch.setattr(recipe, "train_recipe", lambda out, d, threads: recipes.append((out, d, threads)) or tmp_path)
    monkeypatch.setattr(train, "train_organism", lambda cfg: runs.append(cfg) or tmp_path)
    main(["--out", str(tmp_path / "m"), "--threads", "1"])
    assert recipes == [(str(tmp_path / "m"), recipe.RECIPES, 1)] and not runs
    assert "training the shipped recipe" in capsys.readouterr().err
    main(["--out", str(tmp_path / "one"), "--steps", "5"])
    assert len(recipes) == 1 and [(c.out_dir, c.steps) for c in runs] == [(str(tmp_path / "one"), 5)]
