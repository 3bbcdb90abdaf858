"""`headatlas demo` over a folder left by another model: a clear refusal, and nothing lost."""

import json

from typer.testing import CliRunner

from headatlas.cli import app


def test_demo_refuses_a_folder_made_with_another_model(tmp_path):
    out = tmp_path / "demo"
    run = out / "languages" / "rh-en" / "run.json"
    run.parent.mkdir(parents=True)
    stale = {"fingerprint": {"model": "organism", "weights": "an-older-checkpoint"}, "prompt_ids": []}
    run.write_text(json.dumps(stale))
    (run.parent / "samples.jsonl").write_text('{"prompt_id": "x"}\n')

    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--no-retmask"])

    assert result.exit_code == 2, result.output
    assert "its run.json is not from this version of headatlas, not headatlas/detect-run" in result.output
    assert "Use --out NEW, or delete" in result.output and "Traceback" not in result.output
    assert json.loads(run.read_text()) == stale  # the old run is left as it was
    assert (run.parent / "samples.jsonl").read_text() == '{"prompt_id": "x"}\n'
