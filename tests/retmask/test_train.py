"""RetMask DPO on CPU with a tiny model: the loss falls, the reference stays put, a LoRA result reloads exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from headatlas.retmask.train import (
    RUN_FILE,
    RetMaskTrainConfig,
    build_trainer,
    load_pairs,
    train_retmask,
)

pytest.importorskip("trl")
pytest.importorskip("peft")


def toy_pairs(n: int = 6) -> list[dict]:
    """Plain-text pairs: chosen continues with low word ids, rejected with high ones."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        prompt = " ".join(f"w{j}" for j in torch.randint(0, 80, (5 + i % 3,), generator=g).tolist())
        chosen = " " + " ".join(f"w{j}" for j in torch.randint(0, 20, (4,), generator=g).tolist())
        rejected = " " + " ".join(f"w{j}" for j in torch.randint(60, 80, (4,), generator=g).tolist())
        rows.append({"id": str(i), "prompt": prompt, "chosen": chosen, "rejected": rejected, "meta": {}})
    return rows


def fast_config(**kw) -> RetMaskTrainConfig:
    base = dict(learning_rate=2e-3, max_steps=12, per_device_train_batch_size=3, gradient_accumulation_steps=1,
                warmup_steps=0.0, lr_scheduler_type="constant", gradient_checkpointing=False, logging_steps=1)
    return RetMaskTrainConfig(**{**base, **kw})


def losses(log_history: list[dict]) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


def test_config_is_trls_dpo_config_with_the_papers_defaults():
    from trl import DPOConfig

    c = RetMaskTrainConfig()
    assert isinstance(c, DPOConfig)  # every TRL field, no copy of them
    assert (c.loss_type, c.beta, c.learning_rate, c.lr_scheduler_type, c.num_train_epochs, c.weight_decay) == (
        ["sigmoid"], 0.1, 5e-7, "cosine", 2.0, 0.1
    )
    assert c.beta == next(f.default for f in dataclasses.fields(DPOConfig) if f.name == "beta")  # TRL's default
    assert c.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert c.use_lora is False  # full fine-tuning, as in the paper
    assert RetMaskTrainConfig(save_strategy="epoch").save_strategy == "epoch"  # any other DPOConfig field
    # a training's identity: the tuned fields, plus any other field set away from its default
    assert "max_grad_norm" not in c.identity() and RetMaskTrainConfig(max_grad_norm=0.5).identity()["max_grad_norm"] == 0.5
    assert "save_steps" not in RetMaskTrainConfig(save_steps=7).identity()  # how it checkpoints is not what it trains
    assert c.identity()["lr_scheduler_type"] == "cosine"
    with pytest.raises(ValueError):
        RetMaskTrainConfig(beta=0)
    with pytest.raises(ValueError, match="mix chat"):
        load_pairs([{"prompt": "w1", "chosen": " w2", "rejected": " w3"},
                    {"prompt": [{"role": "user", "content": "w1"}], "chosen": [], "rejected": []}])


def test_dpo_loss_falls_and_reference_is_untouched(tiny_checkpoint, tmp_path):
    path, _, tokenizer = tiny_checkpoint
    original = load_file(path / "model.safetensors")
    trainer = build_trainer(str(path), toy_pairs(), tmp_path / "full", fast_config(), tokenizer=tokenizer)
    assert trainer.ref_model is not None  # full fine-tuning: a frozen copy
    trainer.train()
    curve = losses(trainer.state.log_history)
    assert curve[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step
    assert sum(curve[-3:]) / 3 < curve[0] - 0.1
    ref = {k: v for k, v in trainer.ref_model.state_dict().items()}
    for name, weight in original.items():  # the reference is bit-identical to the checkpoint
        assert torch.equal(ref[name], weight), name
    policy = trainer.model.state_dict()
    assert any(not torch.equal(policy[n], w) for n, w in original.items())  # while the policy moved


def test_lora_saves_reloads_and_merges_with_the_same_logits(tiny_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from headatlas.retmask.evaluate import load_for_eval

    path, _, _ = tiny_checkpoint
    out = tmp_path / "lora"
    config = fast_config(use_lora=True, lora_r=4, lora_alpha=8, learning_rate=1e-2, max_steps=6, merge_lora=True)
    original = load_file(path / "model.safetensors")
    result = train_retmask(str(path), toy_pairs(), out, config)
    curve = losses(result.log_history)
    assert curve[-1] < curve[0]

    model = result.trainer.model.eval()
    base_weights = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                    for k, v in model.state_dict().items() if "lora_" not in k}
    for name, weight in original.items():  # with LoRA the reference is the adapter-disabled base: untouched
        assert torch.equal(base_weights[name], weight), name

    ids = torch.randint(4, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
        assert not torch.allclose(before, base_logits)  # the adapter learned something

        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), out).eval()
        assert torch.equal(reloaded(input_ids=ids).logits, before)
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)
        evaluated, _ = load_for_eval(str(out), device="cpu")
        torch.testing.assert_close(evaluated(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)

    run = json.loads((out / RUN_FILE).read_text())
    assert run["config"]["use_lora"] is True and run["n_pairs"] == 6 and run["merged_dir"]
    assert len(losses(run["log_history"])) == len(curve)


def test_two_process_run_through_the_module_entry_point(tiny_checkpoint, tmp_path):
    """`torchrun`/`accelerate launch` of `headatlas retmask train`: DDP on 2 CPU processes (gloo) trains and saves once."""
    import os
    import subprocess
    import sys

    path, _, _ = tiny_checkpoint
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs(4)))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "headatlas.cli",
           "retmask", "train", "--model", str(path), "--pairs", str(pairs), "--out", str(out), "--learning-rate", "1e-3",
           "--max-steps", "2", "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1",
           "--no-gradient-checkpointing", "--use-lora"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / RUN_FILE).read_text())
    assert run["world_size"] == 2 and (out / "adapter_model.safetensors").exists()


def copy_rule_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen repeats the prompt's last word twice; rejected is a fixed word: a rule held-out pairs share."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        words = [f"w{j}" for j in torch.randint(10, 80, (6,), generator=g).tolist()]
        rows.append({"id": f"c{i}", "prompt": " ".join(words), "chosen": f" {words[-1]} {words[-1]}",
                     "rejected": " w3 w3"})
    return rows


def test_training_raises_heldout_reward_accuracy_and_records_curves(tiny_checkpoint, tmp_path):
    """A pipeline that does not train fails here: held-out reward accuracy must go from chance to >= 0.8."""
    from headatlas.retmask.curves import CURVES_FILE, CURVES_PLOT, FORMAT_NAME

    path, _, _ = tiny_checkpoint
    out = tmp_path / "curves"
    config = fast_config(learning_rate=3e-3, max_steps=16, per_device_train_batch_size=8, heldout_fraction=0.25)
    result = train_retmask(str(path), copy_rule_pairs(64), out, config)
    curves = json.loads((out / CURVES_FILE).read_text())
    assert curves["format"] == FORMAT_NAME and curves["format_version"] == 1
    meta = curves["meta"]
    assert (meta["n_pairs"], meta["n_heldout"], meta["seed"]) == (48, 16, 42) and "versions" in meta
    assert len(set(meta["heldout_ids"])) == 16 and len(result.trainer.train_dataset) == 48
    before, after = curves["heldout"]["before"], curves["heldout"]["after"]
    assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0  # policy == reference: all ties
    assert after["reward_accuracy"] >= 0.8 and after["reward_margin"] > 0
    assert after["logp_chosen"] - after["logp_rejected"] > before["logp_chosen"] - before["logp_rejected"]
    train = curves["train"]
    assert [r["step"] for r in train] == list(range(1, 17))
    assert {"loss", "reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and train[-1]["reward_accuracy"] >= 0.8
    assert (out / CURVES_PLOT).stat().st_size > 0


def test_heldout_metrics_match_an_independent_computation(tiny_checkpoint):
    """The held-out reward of one pair equals beta * (log pi - log pi_ref), computed here from raw logits."""
    from transformers import AutoModelForCausalLM

    from headatlas.retmask.curves import heldout_metrics

    path, _, tokenizer = tiny_checkpoint
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)
    ex = {"prompt_ids": [1, 20, 30, 40], "chosen_ids": [50, 51], "rejected_ids": [60]}
    metrics, ref_logps = heldout_metrics(policy, ref, [ex], beta=0.1)

    def logp(model, completion):
        ids = torch.tensor([ex["prompt_ids"] + completion])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        return sum(float(lp[len(ex["prompt_ids"]) - 1 + k, t]) for k, t in enumerate(completion))

    chosen = 0.1 * (logp(policy, [50, 51]) - logp(ref, [50, 51]))
    rejected = 0.1 * (logp(policy, [60]) - logp(ref, [60]))
    assert metrics["reward_chosen"] == pytest.approx(chosen, abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(chosen - rejected, abs=1e-5)
    assert metrics["reward_accuracy"] == (1.0 if chosen > rejected else 0.0)
    assert float(ref_logps[0, 1]) == pytest.approx(logp(ref, [60]), abs=1e-5)


def test_report_reads_and_plots_the_curves_file(tmp_path):
    from headatlas.report import collect_runs, render_report
    from headatlas.retmask.curves import CURVES_FILE, curves_record, train_curves
    from headatlas.runs import atomic_write_json

    history = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s, "rewards/margins": 0.2 * s,
                "logps/chosen": -10.0, "logps/rejected": -10.0 - s} for s in (1, 2, 3)] + [{"train_loss": 0.5}]
    before = {"n": 8, "reward_accuracy": 0.5, "reward_margin": 0.0, "logp_chosen": -10.0, "logp_rejected": -10.0}
    after = {"n": 8, "reward_accuracy": 0.875, "reward_margin": 0.6, "logp_chosen": -9.0, "logp_rejected": -13.0}
    atomic_write_json(tmp_path / "model_retmask" / CURVES_FILE,
                      curves_record(train_curves(history), before, after, {"model": "tiny", "seed": 3}))
    atomic_write_json(tmp_path / "broken" / CURVES_FILE, curves_record([], None, None, {}))
    report = collect_runs([tmp_path])
    assert len(report.dpo_curves) == 1 and [r["step"] for r in report.dpo_curves[0][1]["train"]] == [1, 2, 3]
    assert any("no step and no held-out" in w for w in report.warnings)
    html = render_report(report)
    assert "DPO curves" in html and 'alt="DPO reward accuracy"' in html and "0.8750" in html


def test_an_interrupted_training_goes_on_from_its_last_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """save_strategy="steps": a training stopped after step 3 resumes at its step-2 checkpoint and runs 2 more steps."""
    from transformers import TrainerCallback

    import headatlas.retmask.train as train_module

    path, _, _ = tiny_checkpoint
    out = tmp_path / "resumable"
    config = fast_config(max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1, heldout_fraction=0.0)
    steps: list[int] = []

    class Watch(TrainerCallback):
        def __init__(self, stop_at: int | None) -> None:
            self.stop_at = stop_at

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            steps.append(state.global_step)
            if state.global_step == self.stop_at:
                raise KeyboardInterrupt  # killed between checkpoints

    real = train_module.build_trainer

    def watched(stop_at):
        def build(*a, **kw):
            trainer = real(*a, **kw)
            trainer.add_callback(Watch(stop_at))
            return trainer
        return build

    monkeypatch.setattr(train_module, "build_trainer", watched(3))
    with pytest.raises(KeyboardInterrupt):
        train_retmask(str(path), toy_pairs(6), out, config)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and not (out / RUN_FILE).exists()
    steps.clear()
    monkeypatch.setattr(train_module, "build_trainer", watched(None))
    result = train_retmask(str(path), toy_pairs(6), out, config)
    assert steps == [3, 4]  # from the checkpoint on, not from the start
    assert len(losses(result.log_history)) == 4 and not list(out.glob("checkpoint-*"))  # spent checkpoints removed
