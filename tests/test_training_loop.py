"""train.py end to end on a tiny model with the real SmolLM2 tokenizer and Shakespeare text: the loss
falls; kill -9 then re-run reproduces the uninterrupted run step for step; SIGTERM leaves a checkpoint;
a damaged latest checkpoint falls back to the previous complete one (never to step 0); bad configs fail
before compute; export gives transformers the same logits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from yarn_jax.training import cli as train_cli
from tests.conftest import HeldLock, random_params, snapshot, tiny_hf_dict
from yarn_jax.checkpoint import load_checkpoint, save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError
from yarn_jax.model import model_from_params
from yarn_jax.training.config import TrainConfig
from yarn_jax.convert import convert
from yarn_jax.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
ROPE = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, assets):
    from yarn_jax import assets as a

    work = tmp_path_factory.mktemp("train")
    d = tiny_hf_dict(None, max_pos=32, vocab=49152, hidden=32, heads=4, kv_heads=2)
    d["bos_token_id"], d["eos_token_id"] = 1, 2
    cfg = LlamaConfig.from_hf_dict(d)
    save_hf_checkpoint(work / "model", cfg, random_params(cfg, seed=3, std=0.05),
                       tokenizer_dir=str(assets["smollm2"]))
    text = a.play_text("hamlet")
    docs = [{"id": f"part{i}", "text": text[i * 2500:(i + 1) * 2500]} for i in range(5)]
    (work / "docs.jsonl").write_text("\n".join(json.dumps(x) for x in docs))
    config = {"model": str(work / "model"), "rope": ROPE, "data": str(work / "docs.jsonl"), "eval_docs": 1,
              "seq_len": 64, "batch_size": 2, "steps": 8, "learning_rate": 3e-3, "warmup_steps": 2,
              "save_every": 2, "keep": 3, "remat": "full", "async_checkpoint": True}
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    return work, config


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _cmd(work, out, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(work / "tiny.yaml"), "--out", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    """The uninterrupted run (in-process), 40 steps."""
    work, config = setup
    out = tmp_path_factory.mktemp("ref") / "run"
    train(TrainConfig(**{**config, "steps": 40, "save_every": 5, "eval_every": 20, "out": str(out)}))
    return out


def test_loss_falls_and_logs_are_written(reference_run):
    m = _metrics(reference_run)
    assert [r["step"] for r in m] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in m[:5]]), np.mean([r["loss"] for r in m[-5:]])
    assert last < first - 1.0, (first, last)  # from ~ln(49152) = 10.8 towards the text's statistics
    # two warmup steps: the first update already runs at half the peak rate, the second at the peak
    assert m[0]["learning_rate"] == pytest.approx(1.5e-3) and m[1]["learning_rate"] == pytest.approx(3e-3)
    assert "eval_ppl" in m[19] and m[39]["eval_ppl"] < m[19]["eval_ppl"] * 1.5
    assert list((reference_run / "tb").glob("events.out.tfevents.*"))
    assert list((reference_run / "tb" / "hparams").glob("events.out.tfevents.*"))  # TensorBoard's hparams tab
    (run,) = json.loads((reference_run / "provenance.json").read_text())["invocations"]
    assert run["status"] == "finished" and run["inputs"]["rope"]["rope_type"] == "yarn"
    assert run["inputs"]["original_context"] == 32 and run["packages"]["jax"]
    assert sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit()) == [30, 35, 40]


def test_kill_9_then_rerun_reproduces_the_uninterrupted_run(setup, reference_run, tmp_path):
    work, _ = setup
    out = tmp_path / "run"
    args = ("--steps", "40", "--save-every", "5", "--eval-every", "20")
    proc = subprocess.Popen(_cmd(work, out, *args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = _metrics(out) if (out / "metrics.jsonl").exists() else []
            if done and done[-1]["step"] >= 12 and (out / "checkpoints" / "10").exists():
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no handler, no final save
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _metrics(out)[-1]["step"]
    assert killed_at < 40
    rerun = subprocess.run(_cmd(work, out, *args), env=_env(), check=True, timeout=300, capture_output=True, text=True)
    # stderr is a pipe, not a terminal: plain progress lines, counting from the resumed step to the end
    progress = [x for x in rerun.stderr.splitlines() if x.startswith("train: ")]
    first = int(progress[0].split()[1].split("/")[0])  # the step after the last complete checkpoint
    assert 1 < first <= killed_at + 1 and "loss=" in progress[0]
    assert progress[-1].startswith("train: 40/40 steps (100%)") and "\r" not in rerun.stderr
    resumed, ref = _metrics(out), _metrics(reference_run)
    assert [r["step"] for r in resumed] == list(range(1, 41))  # each step logged once
    for a, b in zip(resumed, ref):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-6 * b["grad_norm"]
    final = load_checkpoint(out / "checkpoints")[1]
    ref_final = load_checkpoint(reference_run / "checkpoints")[1]
    for k, v in ref_final.items():
        np.testing.assert_allclose(final[k], v, rtol=1e-6, atol=1e-7)


def _stopped_at(work, out, *extra, step: int, stop, stderr=subprocess.DEVNULL):
    """Start train.py, wait until `step` is logged, then `stop(proc)`; returns the finished process and its
    stderr (when piped)."""
    proc = subprocess.Popen(_cmd(work, out, *extra), env=_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").exists() and _metrics(out) and _metrics(out)[-1]["step"] >= step:
                break
            time.sleep(0.05)
        stop(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_saves_at_the_step_boundary_and_stops_in_one_line(setup, tmp_path, sig):
    """SIGTERM (preemption) or a first Ctrl-C: a line saying what will happen, the step in progress saved,
    then one `error:` line and exit 128 + signal (the run did not finish) — no traceback."""
    work, _ = setup
    out = tmp_path / "run"
    proc, err = _stopped_at(work, out, "--steps", "100000", "--save-every", "1000", step=3,
                            stop=lambda p: p.send_signal(sig), stderr=subprocess.PIPE)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err[-2000:]
    last = _metrics(out)[-1]["step"]
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [last] and "Traceback" not in err
    assert f"{name}: saving a checkpoint when the step in progress ends" in err
    assert err.strip().splitlines()[-1] == (f"error: {name}: saved step {last} of 100000 to {out}/checkpoints; "
                                            "stopped (re-run the same command to resume)")


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(setup, reference_run, tmp_path):
    import shutil

    work, config = setup
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    ckpts = out / "checkpoints"
    for f in (ckpts / "40" / "params").rglob("*"):  # step 40 damaged after it was finalized
        if f.is_file() and f.name != "_METADATA":
            f.write_bytes(b"")
    (ckpts / "41.orbax-checkpoint-tmp-1234").mkdir()  # and an unfinished save after it
    record = train(TrainConfig(**{**config, "steps": 40, "save_every": 5, "eval_every": 20, "out": str(out)}))
    assert record["step"] == 40  # steps 36..40 re-run from step 35
    assert list(ckpts.glob("40.damaged-*")) and (ckpts / "40").exists()  # set aside, then saved anew
    resumed, ref = _metrics(out), _metrics(reference_run)
    assert [r["step"] for r in resumed] == list(range(1, 41))
    assert [r["loss"] for r in resumed[35:]] == pytest.approx([r["loss"] for r in ref[35:]], rel=1e-6)
    # nothing restorable at all: an error, never a silent restart from step 0
    for step in ckpts.iterdir():
        if step.name.isdigit():
            for f in (step / "params").rglob("*"):
                if f.is_file() and f.name != "_METADATA":
                    f.write_bytes(b"")
    with pytest.raises(CheckpointError, match="refusing to restart from step 0"):
        train(TrainConfig(**{**config, "steps": 45, "save_every": 5, "eval_every": 20, "out": str(out)}))


@pytest.mark.parametrize("args, message", [
    (["--accum", "3"], "accum=3 must divide batch_size=2"),
    (["--seq-len", "0"], "seq_len"),
    (["--packing", "zip"], "packing"),
    (["--rope", "{rope_type: warp}"], "warp"),
    (["--learning-rate", "-1"], "learning_rate"),
    (["--eval-docs", "9"], "eval_docs"),
    (["--lr-decay", "cosine", "--steps", "3", "--warmup-steps", "3"], "lr_decay=cosine needs steps (3) > warmup_steps (3)"),
    (["--learning-rate", "inf"], "learning_rate"),
    (["--b1", "nan"], "b1"),
    (["--b2", "1.5"], "b2 (from --b2): Input should be less than 1"),
    (["--eps=-1e-8"], "eps (from --eps): Input should be greater than 0"),
    (["--clip-norm", "-1"], "clip_norm"),
    (["--weight-decay", "-0.1"], "weight_decay"),
    (["--rope", "{rope_type: yarn, factor: .nan, original_max_position_embeddings: 32}"], "['factor'] must be finite"),
    (["--model", "/nonexistent"], "model"),
    (["--data", "/nonexistent.jsonl"], "data"),
])
def test_bad_config_fails_before_compute_naming_the_field(setup, tmp_path, capsys, args, message):
    work, _ = setup
    assert train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()  # not even train_config.json: the corrected command is not poisoned


def test_train_without_a_config_keeps_the_checkpoints_rope(setup, assets, tmp_path):
    """No --config: no recipe is applied — a linear-scaled checkpoint is fine-tuned and saved with its own
    rope (before, the SmolLM2 YaRN recipe was applied silently)."""
    work, _ = setup
    d = tiny_hf_dict({"rope_type": "linear", "factor": 3.0}, max_pos=32, vocab=49152, hidden=32, heads=4,
                     kv_heads=2)
    cfg = LlamaConfig.from_hf_dict(d)
    save_hf_checkpoint(tmp_path / "linear", cfg, random_params(cfg, seed=4, std=0.05),
                       tokenizer_dir=str(assets["smollm2"]))
    out = tmp_path / "run"
    assert train_cli.main(["--model", str(tmp_path / "linear"), "--data", str(work / "docs.jsonl"), "--seq-len", "64",
                           "--batch-size", "2", "--steps", "1", "--warmup-steps", "1", "--out", str(out)]) == 0
    saved, _ = load_checkpoint(out / "checkpoints")
    assert saved.rope == cfg.rope and saved.rope.rope_type == "linear"
    assert json.loads((out / "train_config.json").read_text())["rope"] is None


def test_run_directory_refuses_another_trajectory(setup, reference_run, tmp_path, capsys):
    import shutil

    work, _ = setup
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    assert train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(out), "--seed", "7"]) == 2
    assert "seed (0 there, 7 now)" in capsys.readouterr().err
    # the same data path with other content: refused too (before a step runs)
    edited = tmp_path / "docs.jsonl"
    lines = (work / "docs.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    edited.write_text("\n".join([json.dumps({**first, "text": first["text"] + " x"}), *lines[1:]]))
    record = json.loads((out / "train_config.json").read_text())
    (out / "train_config.json").write_text(json.dumps({**record, "data": str(edited)}))
    before = snapshot(out)
    assert train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(out), "--data", str(edited)]) == 2
    assert "data_identity (the documents' text or tokenizer changed)" in capsys.readouterr().err
    assert snapshot(out) == before


def test_another_model_is_refused_and_no_checkpoint_is_touched(setup, reference_run, tmp_path, capsys):
    """The reported loss: pointing a run directory at another model renamed every healthy checkpoint aside as
    damaged, and the original command then restarted from step 0."""
    import shutil

    work, config = setup
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    cfg = LlamaConfig.from_json_file(work / "model" / "config.json")
    save_hf_checkpoint(tmp_path / "same_shape", cfg, random_params(cfg, seed=4, std=0.05),
                       tokenizer_dir=str(work / "model"))
    d = {**json.loads((work / "model" / "config.json").read_text()), "hidden_size": 48, "head_dim": 16}
    other = LlamaConfig.from_hf_dict(d)
    save_hf_checkpoint(tmp_path / "other_shape", other, random_params(other, seed=4, std=0.05),
                       tokenizer_dir=str(work / "model"))
    before = snapshot(out)
    base = ["--config", str(work / "tiny.yaml"), "--out", str(out), "--steps", "40", "--save-every", "5",
            "--eval-every", "20"]
    assert train_cli.main([*base, "--model", str(tmp_path / "same_shape")]) == 2
    assert "model_identity (the initial weights differ: changed: model.safetensors)" in capsys.readouterr().err
    assert snapshot(out) == before
    # without the run record (an older run directory), the checkpoints themselves tell another model apart
    (out / "train_config.json").unlink()
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=r"40 holds another model or optimizer \(params embed_tokens: saved "
                                              r"\(49152, 32\), this run has \(49152, 48\)\)"):
        train(TrainConfig(**{**config, "steps": 40, "save_every": 5, "eval_every": 20, "out": str(out),
                             "model": str(tmp_path / "other_shape")}))
    assert snapshot(out) == before and not list((out / "checkpoints").glob("*damaged*"))
    # the original command still resumes where it was (no step re-run, metrics intact)
    train(TrainConfig(**{**config, "steps": 41, "save_every": 5, "eval_every": 20, "out": str(out),
                         "lr_decay": "constant"}))
    assert [r["step"] for r in _metrics(out)] == list(range(1, 42))


def test_divergence_stops_before_saving_a_non_finite_step(setup, tmp_path, capsys):
    work, _ = setup
    out = tmp_path / "run"
    code = train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(out), "--learning-rate", "1e30",
                           "--warmup-steps", "0", "--clip-norm", "null", "--save-every", "1", "--steps", "6"])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged; this step was not saved" in err, err
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    cfg, params = load_checkpoint(out / "checkpoints")  # whatever was saved is finite (the loader checks)
    assert steps and steps[-1] < 6


def test_second_train_on_the_same_run_directory_is_refused(setup, tmp_path, capsys):
    work, _ = setup
    out = tmp_path / "run"
    with HeldLock(out) as holder:
        assert train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(out)]) == 2
        assert f"run directory {out} is in use by another yarn_jax command (pid {holder.pid}" in capsys.readouterr().err
    assert not out.exists()


def test_disk_too_small_for_the_checkpoints_fails_before_training(setup, small_disk):
    work, _ = setup
    out = small_disk("5m") / "run"
    proc = subprocess.run(_cmd(work, out, "--steps", "4", "--save-every", "2"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/checkpoints: ") and "MiB free, but keeping 3 checkpoint(s)" in last
    assert not (out / "metrics.jsonl").exists()


def test_disk_filling_up_during_training_is_one_line_and_keeps_the_last_checkpoint(setup, small_disk):
    """Another process fills the disk while checkpoints are written asynchronously: one error line (orbax's
    per-thread tracebacks collapsed), exit 2, and the last complete checkpoint still loads."""
    work, _ = setup
    disk = small_disk("120m")
    out = disk / "run"
    proc = subprocess.Popen(_cmd(work, out, "--steps", "400", "--save-every", "5", "--keep", "2", "--log-every",
                                 "1000"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "5").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        with open(disk / "filler", "wb") as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 2**20)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("train:")]
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    # the config file's settings, the run's start, then one error line
    assert len(lines) == 3 and " sets " in lines[0] and lines[-1].startswith(f"error: {out}/"), lines
    (disk / "filler").unlink()
    cfg, params = load_checkpoint(out / "checkpoints")  # complete steps only; the loader checks values
    assert cfg.num_hidden_layers == 2 and ("layers", "q_proj") in params


def test_export_gives_transformers_the_same_logits(reference_run, tmp_path):
    hf_dir = tmp_path / "hf"
    convert(reference_run / "checkpoints", hf_dir, to="hf", verify_logits=False, progress=False)
    cfg, params = load_checkpoint(reference_run / "checkpoints")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert hf_config["rope_parameters"]["rope_type"] == "yarn" and hf_config["rope_parameters"]["factor"] == 2.0
    assert (hf_dir / "tokenizer.json").exists()
    from transformers import LlamaForCausalLM

    theirs = LlamaForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 80))  # beyond L0 = 32: YaRN active
    with torch.no_grad():
        ref = theirs(torch.as_tensor(ids)).logits.numpy()
    ours = np.asarray(model_from_params(cfg, params)(ids))
    assert np.max(np.abs(ours - ref)) <= 1e-4


def test_sharded_run_follows_the_single_device_run(setup, reference_run, tmp_path):
    """train.py on 8 virtual devices (fsdp 4 x sequence 2): same losses as one device, and a checkpoint
    written from the mesh resumes on it."""
    work, config = setup
    out = tmp_path / "run"
    base = {**config, "steps": 6, "save_every": 3, "eval_every": 0, "out": str(out), "mesh": "fsdp_sequence"}
    train(TrainConfig(**{**base, "steps": 3}))
    train(TrainConfig(**base))  # resumes from step 3 on the mesh
    ref = _metrics(reference_run)[:6]
    got = _metrics(out)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)


def test_a_sequence_past_the_ropes_designed_context_is_warned_in_one_line(setup, tmp_path):
    """The documented rule: seq_len above L0 x factor (the model's max_position_embeddings for an unscaled
    rope) trains, with one warning line naming the ratio and the --rope that would extend it; at the
    designed context (64 = 32 x 2 here) no warning."""
    work, _ = setup
    runs = {}
    for name, extra in {"at": ("--seq-len", "64"), "past": ("--seq-len", "128"),
                        "unscaled": ("--seq-len", "64", "--rope", "default")}.items():
        proc = subprocess.run(_cmd(work, tmp_path / name, "--steps", "1", *extra), env=_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = [x for x in proc.stderr.splitlines() if x.startswith("warning: seq_len")]
    assert runs["at"] == []
    assert runs["past"] == ["warning: seq_len 128 is 2.0x the 64 positions rope 'yarn' is configured for: positions "
                            "past 64 are unseen by it — pass --rope (e.g. yarn:factor=4,original_max_position_"
                            "embeddings=32) to extend it; continuing"]
    assert len(runs["unscaled"]) == 1 and "the 32 positions rope 'default'" in runs["unscaled"][0]


def test_a_run_killed_before_its_first_checkpoint_leaves_no_checkpoints_directory(setup, tmp_path):
    """The checkpoints directory (and the tokenizer files beside the steps) appear with the first saved
    step: kill -9 before it leaves nothing that looks like a checkpoint root."""
    work, _ = setup
    out = tmp_path / "run"
    _stopped_at(work, out, "--steps", "100000", "--save-every", "1000", step=2, stop=lambda p: p.kill())
    assert _metrics(out)[-1]["step"] >= 2 and (out / "train_config.json").exists()
    assert not (out / "checkpoints").exists()


def test_weights_only_checkpoints_are_smaller_read_as_models_and_refuse_to_resume(setup, tmp_path, capsys):
    """--no-save-optimizer: each step holds the weights (+ config, data position) but no AdamW moments; the
    checkpoint loads as a model; re-running the command to resume it is
    refused in one line naming the way forward, and nothing in the run directory is renamed or removed."""
    work, _ = setup

    def size(run):
        return sum(f.stat().st_size for f in (run / "checkpoints" / "2").rglob("*") if f.is_file())

    runs = {}
    for name, extra in (("full", ()), ("weights", ("--no-save-optimizer",))):
        runs[name] = tmp_path / name
        assert train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(runs[name]), "--steps", "2",
                               "--save-every", "2", *extra]) == 0
    assert not (runs["weights"] / "checkpoints" / "2" / "opt_state").exists()
    assert size(runs["weights"]) / size(runs["full"]) < 0.6  # (the moments of unseen embedding rows compress)
    cfg, params = load_checkpoint(runs["weights"] / "checkpoints")
    ref = load_checkpoint(runs["full"] / "checkpoints")[1]
    for k in ref:
        np.testing.assert_array_equal(params[k], ref[k])
    before = snapshot(runs["weights"])
    capsys.readouterr()
    code = train_cli.main(["--config", str(work / "tiny.yaml"), "--out", str(runs["weights"]), "--steps", "4",
                           "--save-every", "2", "--no-save-optimizer"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "holds no optimizer state" in err[-1]
    assert f"--model {runs['weights'] / 'checkpoints'} --out NEW_DIR" in err[-1]
    assert snapshot(runs["weights"]) == before
