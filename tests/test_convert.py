"""The conversion command: HF <-> yarn_jax (orbax) <-> GGUF round trips keep weights and logits identical
(SmolLM2 and tiny random models, tied and untied, GQA), checked against transformers as the independent
reader/runner; the logit check can fail; bad inputs give errors that name the file or tensor and leave
nothing behind; an interrupted conversion leaves nothing that looks valid; peak host memory stays within a
small multiple of the largest parameter."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_params, snapshot, tiny_hf_dict
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from yarn_jax.checkpoint import load_checkpoint, save_orbax_checkpoint
from yarn_jax.checkpoint.layout import params_to_hf
from yarn_jax.config import LlamaConfig
from yarn_jax.convert import convert
from yarn_jax.convert.__main__ import main as convert_main
from yarn_jax.errors import YarnJaxError

ROOT = Path(__file__).resolve().parents[1]
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}


def hf_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF directory, read by the safetensors library (single file or sharded)."""
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def nothing_left(parent: Path, name: str) -> bool:
    return not [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def transformers_saved(tmp_path: Path, *, tie: bool, seed: int = 0) -> tuple[Path, LlamaForCausalLM]:
    """A random tiny GQA LlamaForCausalLM written by transformers itself."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(HFLlamaConfig(**tiny_hf_dict(None, tie=tie, max_pos=128))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    path = tmp_path / f"hf_{'tied' if tie else 'untied'}"
    model.save_pretrained(path)
    return path, model


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()


# --- round trips -------------------------------------------------------------------------------------------

def test_smollm2_hf_to_orbax_to_hf_is_exact(assets, tmp_path):
    report = convert(assets["smollm2"], tmp_path / "orbax", progress=False)
    v = report["verify"]
    assert v["passed"] and v["tokens"] == 1024
    assert v["max_abs_logit_diff"] == 0.0 and v["mean_kl"] == 0.0  # same weights, same program
    assert json.loads((tmp_path / "orbax" / "conversion.json").read_text())["verify"]["passed"]
    convert(tmp_path / "orbax", tmp_path / "hf", verify_logits=False, progress=False)
    original, back = hf_tensors(assets["smollm2"]), hf_tensors(tmp_path / "hf")
    assert original.keys() == back.keys()
    for name in original:
        assert np.array_equal(original[name], back[name]), name
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (assets["smollm2"] / "tokenizer.json").read_bytes()


def test_smollm2_gguf_to_hf_to_orbax_matches_transformers_gguf_reader(assets, tmp_path):
    """transformers dequantizes and un-permutes the GGUF file itself: the independent reference."""
    gguf = assets["smollm2_gguf"]
    convert(gguf, tmp_path / "hf", to="hf", verify_logits=False, progress=False)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).state_dict()
    ours = hf_tensors(tmp_path / "hf")
    for name, value in ours.items():
        np.testing.assert_array_equal(value, reference[name].float().numpy(), err_msg=name)
    # HF -> orbax, checked against transformers running the HF directory, under a YaRN rope written in
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
    report = convert(tmp_path / "hf", tmp_path / "orbax", rope=rope, reference="transformers", progress=False)
    assert report["verify"]["passed"] and report["verify"]["reference"].startswith("transformers")
    cfg, params = load_checkpoint(tmp_path / "orbax")
    assert cfg.rope.rope_type == "yarn" and cfg.rope.method.factor == 4.0
    assert all(np.array_equal(a, ours[k]) for k, a in params_to_hf(cfg, params).items())


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_tiny_round_trip_through_orbax_keeps_transformers_logits(tmp_path, tie):
    src, original = transformers_saved(tmp_path, tie=tie)
    report = convert(src, tmp_path / "orbax", reference="transformers", verify_tokens=100, progress=False)
    assert report["verify"]["passed"]
    # back to HF, sharded into several safetensors files with an index
    convert(tmp_path / "orbax", tmp_path / "back", max_shard_bytes=20_000, verify_tokens=100, progress=False)
    assert len(list((tmp_path / "back").glob("model-*-of-*.safetensors"))) > 1
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(hf_tensors(tmp_path / "back"))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    for (name, a), (_, b) in zip(original.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 100))
    np.testing.assert_array_equal(torch_logits(original, ids), torch_logits(reloaded, ids))


def test_bfloat16_result_is_the_rounded_source(tmp_path):
    src, original = transformers_saved(tmp_path, tie=False)
    report = convert(src, tmp_path / "bf16", to="hf", dtype="bfloat16", reference="transformers",
                     verify_tokens=100, progress=False)
    assert report["verify"]["passed"]
    assert report["verify"]["rounding_vs_float32_source"]["mean_kl"] > 0  # the rounding is reported, not hidden
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(original.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_orbax_source_step_selection(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(YARN, max_pos=64))
    p1, p2 = random_params(cfg, seed=1), random_params(cfg, seed=2)
    save_orbax_checkpoint(tmp_path / "ckpt", 1, cfg, p1)
    save_orbax_checkpoint(tmp_path / "ckpt", 2, cfg, p2)
    for args, want in [({}, p2), ({"step": 1}, p1)]:
        out = tmp_path / f"hf{len(args)}"
        convert(tmp_path / "ckpt", out, verify_tokens=64, progress=False, **args)
        got = hf_tensors(out)
        assert all(np.array_equal(got[k], v) for k, v in params_to_hf(cfg, want).items())
    convert(tmp_path / "ckpt" / "1", tmp_path / "hf_step_dir", verify_logits=False, progress=False)
    assert all(np.array_equal(hf_tensors(tmp_path / "hf_step_dir")[k], v)
               for k, v in params_to_hf(cfg, p1).items())


def test_failed_logit_check_is_loud_and_keeps_the_result_aside(tmp_path, capsys):
    """transformers and yarn_jax differ by float32 rounding (~1e-6): a threshold below it must fail."""
    src, _ = transformers_saved(tmp_path, tie=True)
    argv = [str(src), str(tmp_path / "out"), "--reference", "transformers", "--max-abs-logit", "1e-9",
            "--verify-tokens", "64"]
    assert convert_main(argv) == 3
    err = capsys.readouterr().err
    assert "logits differ past the thresholds" in err and "out.rejected" in err
    assert not (tmp_path / "out").exists()
    report = json.loads((tmp_path / "out.rejected" / "conversion.json").read_text())
    assert not report["verify"]["passed"] and report["verify"]["max_abs_logit_diff"] > 1e-9


# --- bad input ---------------------------------------------------------------------------------------------

def _corrupt_header(d: Path):
    (d / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")


def _truncate(d: Path):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


def _reshape(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))


def _pickle(d: Path):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")


def _architecture(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))


@pytest.mark.parametrize("damage, message", [
    (_corrupt_header, r"model\.safetensors: cannot read safetensors header"),
    (_truncate, r"model\.safetensors: cannot read safetensors header"),
    (_reshape, r"hf_untied: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(80, 48\), expected \(96, 48\)"),
    (_pickle, r"pytorch_model\.bin.*never unpickles"),
    (_architecture, r"unsupported architecture \['GPT2LMHeadModel'\]"),
], ids=["corrupt", "truncated", "shape", "pickle", "architecture"])
def test_bad_hf_source_fails_clearly_and_leaves_nothing(tmp_path, damage, message):
    src, _ = transformers_saved(tmp_path, tie=False)
    damage(src)
    for to in ("orbax", "hf"):
        with pytest.raises(YarnJaxError, match=message):
            convert(src, tmp_path / "out", to=to, progress=False)
        assert nothing_left(tmp_path, "out")


def test_bad_orbax_gguf_and_rope_inputs_fail_before_writing(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None, max_pos=64))
    params = random_params(cfg)
    params[("layers", "q_proj")] = params[("layers", "q_proj")][:, :-1]
    save_orbax_checkpoint(tmp_path / "ckpt", 1, cfg, params)
    with pytest.raises(YarnJaxError, match=r"parameter layers/q_proj has shape \(2, 47, 4, 16\), expected "
                                           r"\(2, 48, 4, 16\)"):
        convert(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert nothing_left(tmp_path, "out")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(YarnJaxError, match=r"junk\.gguf: not a readable GGUF file"):
        convert(tmp_path / "junk.gguf", tmp_path / "out", progress=False)
    src, _ = transformers_saved(tmp_path, tie=False)
    with pytest.raises(YarnJaxError, match="dynamic_yarn' has no transformers equivalent"):
        convert(src, tmp_path / "out", to="hf", rope={"rope_type": "dynamic_yarn", "factor": 2.0,
                                                      "original_max_position_embeddings": 32}, progress=False)
    with pytest.raises(YarnJaxError, match=r"--rope\['original_max_position_embeddings'\] is required"):
        convert(src, tmp_path / "out", rope={"rope_type": "yarn", "factor": 2.0}, progress=False)
    assert nothing_left(tmp_path, "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(YarnJaxError, match="already exists"):
        convert(src, tmp_path / "taken", progress=False)


# --- interruption and memory (subprocesses) ----------------------------------------------------------------

def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_kill_9_mid_conversion_leaves_nothing_that_looks_valid(assets, tmp_path, caplog):
    dst = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "yarn_jax.convert", str(assets["smollm2"]), str(dst),
                             "--no-verify"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until parameters are being written
        if list(tmp_path.glob(".out.staging-*/params-partial.partial_save/*")):  # orbax's pending saves
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the conversion never started writing parameters")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()
    with pytest.raises(YarnJaxError):
        load_checkpoint(dst)
    stale = list(tmp_path.glob(".out.staging-*"))
    assert len(stale) == 1  # the dead run's hidden staging directory, hundreds of MB
    # the same command again completes, and removes (and reports) the dead run's staging directory
    with caplog.at_level(logging.WARNING, logger="yarn_jax"):
        convert(assets["smollm2"], dst, verify_logits=False, progress=False)
    assert not stale[0].exists() and str(stale[0]) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    cfg, params = load_checkpoint(dst)
    assert cfg.num_hidden_layers == 30 and len(params) == 11


MEMORY_PROBE = """
import json, resource, sys
import numpy as np, orbax.checkpoint, tensorstore
from orbax.checkpoint.experimental.v1 import partial
from yarn_jax.checkpoint import open_checkpoint
from yarn_jax.convert import convert
src, dst, to = sys.argv[1:4]
with open_checkpoint(src) as s:
    sizes = [int(np.prod(t.our_shape(s.config.num_hidden_layers))) * 4 for t in s.layouts()]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
convert(src, dst, to=to, verify_logits=False, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"extra": peak - before, "largest": max(sizes), "model": sum(sizes)}))
"""


@pytest.mark.parametrize("source, to", [("smollm2", "orbax"), ("smollm2", "hf"), ("smollm2_gguf", "hf")])
def test_peak_memory_is_a_few_parameters_not_the_model(assets, tmp_path, source, to):
    """SmolLM2 (float32): largest parameter 108 MiB (the embedding), model 513 MiB. Measured here: HF -> HF
    1.0x, HF -> orbax 1.8x, GGUF -> HF 1.9x, GGUF -> orbax 2.3x, orbax -> HF 2.2x the largest parameter
    above the process's size after its imports. Bound: 3x the largest parameter."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(assets[source]), str(tmp_path / "out"), to],
                         env=_env(), capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["extra"] <= 3 * m["largest"], m
    assert m["extra"] < m["model"], m


def write_tiny_gguf(path: Path, hf: dict, tensors: dict[str, np.ndarray]) -> None:
    """A float32 llama GGUF file written with the gguf package the way llama.cpp's converter lays it out:
    GGUF tensor names, q/k rows permuted into the interleaved rotary order."""
    import gguf

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf: half-split -> interleaved pairs
        rows, cols = w.shape
        return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(hf["num_hidden_layers"])
    w.add_context_length(hf["max_position_embeddings"])
    w.add_embedding_length(hf["hidden_size"])
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(hf["num_attention_heads"])
    w.add_head_count_kv(hf["num_key_value_heads"])
    w.add_key_length(hf["head_dim"])
    w.add_rope_dimension_count(hf["head_dim"])
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    w.add_rope_freq_base(hf["rope_parameters"]["rope_theta"])
    for name, value in tensors.items():
        value = value.astype(np.float32)
        if name.startswith("model.layers."):
            _, _, i, *rest = name.split(".")
            key = ".".join(rest[:-1])
            if key == "self_attn.q_proj":
                value = permute(value, hf["num_attention_heads"])
            elif key == "self_attn.k_proj":
                value = permute(value, hf["num_key_value_heads"])
            gname = f"blk.{i}.{names[key]}.{rest[-1]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        w.add_tensor(gname, np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_tiny_gguf_to_hf_to_orbax_keeps_the_original_weights(tmp_path, tie):
    src, original = transformers_saved(tmp_path, tie=tie)
    truth = hf_tensors(src)
    write_tiny_gguf(tmp_path / "tiny.gguf", json.loads((src / "config.json").read_text()), truth)
    convert(tmp_path / "tiny.gguf", tmp_path / "hf", to="hf", verify_tokens=100, progress=False)
    got = hf_tensors(tmp_path / "hf")
    assert got.keys() == truth.keys()
    for name in truth:
        assert np.array_equal(got[name], truth[name]), name
    report = convert(tmp_path / "hf", tmp_path / "orbax", reference="transformers", verify_tokens=100,
                     progress=False)
    assert report["verify"]["passed"]
    cfg, params = load_checkpoint(tmp_path / "orbax")
    assert all(np.array_equal(a, truth[k]) for k, a in params_to_hf(cfg, params).items())
    ids = np.random.default_rng(1).integers(0, 97, size=(1, 100))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_array_equal(torch_logits(original, ids), torch_logits(reloaded, ids))


# --- never delete what the command did not create ---------------------------------------------------------

def _tiny_hf(directory: Path) -> Path:
    from yarn_jax.checkpoint import save_hf_checkpoint

    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None, max_pos=64))
    return save_hf_checkpoint(directory, cfg, random_params(cfg))


def _cli(*args) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", *args], env=_env(), capture_output=True, text=True)
    return proc.returncode, proc.stderr


def test_destination_overlapping_the_source_is_refused_and_nothing_changes(tmp_path):
    """The reported data loss: `convert SRC PARENT --overwrite` deleted the parent (the source and the
    files beside it); DST == SRC replaced the source. Both now refuse, with every byte left in place."""
    work = tmp_path / "work"
    src = _tiny_hf(work / "models" / "tiny")
    (work / "models" / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    for dst, message in [(work / "models", "contains the source"), (src, "is the source itself"),
                         (src / "sub", "lies inside the source"), (work, "contains the source")]:
        code, err = _cli("yarn_jax.convert", str(src), str(dst), "--overwrite", "--no-verify")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert snapshot(tmp_path) == before
    # the same through a symlink to the source's parent
    (tmp_path / "alias").symlink_to(work / "models")
    with pytest.raises(YarnJaxError, match="contains the source"):
        convert(src, tmp_path / "alias", overwrite=True, verify_logits=False, progress=False)
    (tmp_path / "alias").unlink()
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_a_checkpoint_or_an_empty_directory(tmp_path):
    src = _tiny_hf(tmp_path / "src")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(YarnJaxError, match=r"mine: holds config\.json, thesis\.tex, which is not a checkpoint"):
        convert(src, mine, overwrite=True, verify_logits=False, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(YarnJaxError, match="exists and is not a directory"):
        convert(src, tmp_path / "afile", overwrite=True, verify_logits=False, progress=False)
    (tmp_path / "afile").unlink()
    assert snapshot(tmp_path) == before
    # a checkpoint (of either kind) and an empty directory are replaced
    old_hf = _tiny_hf(tmp_path / "old_hf")
    convert(src, tmp_path / "old_orbax", verify_logits=False, progress=False)
    (tmp_path / "empty").mkdir()
    for dst in (old_hf, tmp_path / "old_orbax", tmp_path / "empty"):
        convert(src, dst, to="hf", overwrite=True, verify_logits=False, progress=False)
        assert hf_tensors(dst).keys() == hf_tensors(src).keys()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_an_existing_directory_and_the_run_directory(tmp_path):
    src = _tiny_hf(tmp_path / "src")
    run = tmp_path / "run"
    convert(src, run / "checkpoints", verify_logits=False, progress=False)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    for args, message in [((str(run / "checkpoints"), str(out)), "already exists"),
                          ((str(run / "checkpoints"), str(out), "--overwrite"), "which is not a checkpoint"),
                          ((str(run / "checkpoints"), str(run)), "contains the source"),
                          ((str(run / "checkpoints"), str(run), "--overwrite"), "contains the source"),
                          ((str(run / "checkpoints"), str(run / "checkpoints"), "--overwrite"), "the source itself")]:
        code, err = _cli("yarn_jax.convert", *args, "--no-verify")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert snapshot(tmp_path) == before
    code, err = _cli("yarn_jax.convert", str(run / "checkpoints"), str(tmp_path / "new"), "--no-verify")
    assert code == 0, err
    assert hf_tensors(tmp_path / "new").keys() == hf_tensors(src).keys()


def test_save_pretrained_never_replaces_unrelated_content(tmp_path):
    import yarn_jax

    src = _tiny_hf(tmp_path / "src")
    model = yarn_jax.from_pretrained(src)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "paper.pdf").write_bytes(b"%PDF")
    before = snapshot(tmp_path)
    with pytest.raises(YarnJaxError, match="not a checkpoint yarn_jax recognises"):
        model.save_pretrained(tmp_path / "docs")
    assert snapshot(tmp_path) == before
    with pytest.raises(YarnJaxError, match="save_pretrained destination .* is the source itself"):
        model.save_pretrained(src)  # its own source: refused as convert refuses DST == SRC (issue 37)
    assert snapshot(tmp_path) == before
    model.save_pretrained(tmp_path / "copy")  # a checkpoint elsewhere: written
    assert hf_tensors(tmp_path / "copy").keys() == hf_tensors(src).keys()


def test_nan_source_is_refused_naming_the_source_parameter(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None, max_pos=64))
    params = random_params(cfg)
    params[("layers", "v_proj")][1, 3, 0, 5] = np.nan
    from safetensors.numpy import save_file

    src = tmp_path / "src"  # written by the safetensors library (yarn_jax refuses to write NaN weights)
    src.mkdir()
    save_file(params_to_hf(cfg, params), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    for verify_logits in (False, True):
        with pytest.raises(YarnJaxError, match=r"src: parameter layers/v_proj holds 1 NaN/inf value"):
            convert(src, tmp_path / "out", verify_logits=verify_logits, progress=False)
        assert nothing_left(tmp_path, "out")
    with pytest.raises(YarnJaxError, match=r"parameter layers/v_proj holds 1 NaN/inf"):
        load_checkpoint(src)


def test_convert_takes_the_bundled_name_and_a_missing_source_says_where_assets_are(assets, tmp_path, monkeypatch):
    """`yarn-jax convert smollm2 DST` reads the bundled model as eval and train do (here refused for its
    existing DST, before any compute); a missing SRC names the bundled name and `yarn-jax assets`; a local
    path spelled `smollm2` is ambiguous and refused."""
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "yarn_jax", "convert", *argv], capture_output=True,
                              text=True, env=_env(), cwd=tmp_path)

    (tmp_path / "taken").mkdir()
    out = run("smollm2", "taken")
    assert out.returncode == 2 and out.stderr.strip() == "error: taken: already exists (pass --overwrite to replace it)"
    out = run("no_such_model", "new")
    assert out.returncode == 2 and "`smollm2` names the bundled model" in out.stderr and "yarn-jax assets" in out.stderr
    (tmp_path / "smollm2").mkdir()
    out = run("smollm2", "new")
    assert out.returncode == 2 and "write ./smollm2 for the path" in out.stderr
    assert not (tmp_path / "new").exists()
