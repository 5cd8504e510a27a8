"""eval.py end to end on a tiny random model with SmolLM2's tokenizer: results against transformers,
resuming, refusing mixed run directories, and errors before compute."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import HeldLock, random_params, snapshot, tiny_hf_dict, torch_llama

from yarn_jax.evaluation import cli as eval_cli
from yarn_jax.checkpoint.hf import save_hf_checkpoint
from yarn_jax.checkpoint.layout import params_to_hf
from yarn_jax.config import LlamaConfig

VOCAB = 49152


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, assets):
    d = tiny_hf_dict(None, max_pos=64, vocab=VOCAB, hidden=32, heads=2, kv_heads=1)
    d["bos_token_id"] = 1
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=7, std=0.1)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_hf_checkpoint(out, cfg, params, tokenizer_dir=str(assets["smollm2"]))
    return out, d, cfg, params


@pytest.fixture()
def corpus(tmp_path, assets):
    from yarn_jax import assets as a

    text = a.play_text("hamlet")
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"doc{i}", "text": text[i * 3000:(i + 1) * 3000]}) for i in range(3)))
    return f


def run(tiny, corpus, out, *extra):
    argv = ["--model", str(tiny[0]), "--data", str(corpus), "--lengths", "48", "96", "--methods", "none", "yarn",
            "linear", "--scales", "2", "--max-docs", "2", "--out", str(out), *extra]
    assert eval_cli.main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_perplexity_equals_transformers_and_outputs_exist(tiny_dir, corpus, tmp_path):
    summary = run(tiny_dir, corpus, tmp_path / "run")
    _, d, cfg, params = tiny_dir
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_dir[0] / "tokenizer.json"))
    docs = [json.loads(x)["text"] for x in corpus.read_text().splitlines()][:2]
    rope = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}
    model = torch_llama(tiny_hf_dict(rope, max_pos=64, vocab=VOCAB, hidden=32, heads=2, kv_heads=1),
                        params_to_hf(cfg, params))
    doc_nll = []
    for text in docs:
        ids = [1] + tok.encode(text).ids[:95]  # BOS + 95 tokens: the truncate protocol at L = 96
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        doc_nll.append(-float(np.mean([lp[i - 1, ids[i]] for i in range(1, len(ids))])))
    row = next(r for r in summary["perplexity"] if r["method"] == "yarn x2" and r["length"] == 96)
    assert row["ppl"] == pytest.approx(np.exp(np.mean(doc_nll)), rel=1e-5)
    assert row["docs"] == 2 and row["tokens"] == 190
    out = tmp_path / "run"
    rows = list(csv.DictReader((out / "perplexity.csv").open()))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"none", "yarn x2", "linear x2"}
    yarn = next(r for r in rows if r["method"] == "yarn x2")  # the rope beside its label
    assert (yarn["rope_type"], float(yarn["scale"]), yarn["original_context"]) == ("yarn", 2.0, "64")  # L0
    assert summary["model"] == {"path": str(tiny_dir[0]), "original_context": 64}
    (inv,) = json.loads((out / "provenance.json").read_text())["invocations"]
    assert inv["status"] == "finished" and inv["inputs"]["model_path"] == str(tiny_dir[0])
    for png in ("ppl_vs_length.png", "nll_vs_position.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = summary["position_curves"]["none"]
    assert curve["length"] == 96 and len(curve["mean_nll"]) == 16


def test_interrupted_run_resumes_and_keeps_finished_cells(tiny_dir, corpus, tmp_path):
    out = tmp_path / "run"
    first = run(tiny_dir, corpus, out)
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 12  # 2 lengths x 2 docs x 3 methods
    (out / "cells.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # killed mid-write
    second = run(tiny_dir, corpus, out)
    after = (out / "cells.jsonl").read_text().splitlines()
    assert after[:5] == lines[:5] and len(after) == 12  # finished cells kept, the cut one recomputed
    assert second["perplexity"] == first["perplexity"]
    run(tiny_dir, corpus, out)  # nothing left to do: no new lines
    assert len((out / "cells.jsonl").read_text().splitlines()) == 12


def test_shared_prefix_cells_equal_a_forward_per_length(tiny_dir, corpus, tmp_path):
    """Truncate cells scored from the longest forward with the same frequencies equal a forward per length
    (static ropes share every length; dynamic_yarn only those inside L0 = 64, then 96 is its own forward)."""
    extra = ["--lengths", "24", "48", "64", "96", "--methods", "none", "yarn", "dynamic_yarn"]
    shared = run(tiny_dir, corpus, tmp_path / "shared", *extra)
    separate = run(tiny_dir, corpus, tmp_path / "separate", *extra, "--no-share-prefix")
    recs = {name: {json.loads(x)["key"]: json.loads(x) for x in (tmp_path / name / "cells.jsonl").read_text().splitlines()}
            for name in ("shared", "separate")}
    assert recs["shared"].keys() == recs["separate"].keys() and len(recs["shared"]) == 4 * 2 * 3
    obtained = {}
    for key, a in recs["shared"].items():
        b = recs["separate"][key]
        assert a["nll_sum"] == pytest.approx(b["nll_sum"], rel=1e-5) and a["tokens"] == b["tokens"], key
        assert a["bucket_sums"] == pytest.approx(b["bucket_sums"], rel=1e-5, abs=1e-6), key
        assert b["obtained"] == "forward"
        obtained[(a.get("same_as", a["method"]) if a["method"] == "dynamic_yarn x2" else a["method"],
                  a["length"])] = a["obtained"]
    assert obtained[("none", 96)] == "forward" and obtained[("yarn x2", 24)] == "prefix of L=96"
    assert obtained[("dynamic_yarn x2", 96)] == "forward"  # past L0: frequencies of its own
    assert obtained[("none", 48)] == "prefix of L=96"  # dynamic_yarn inside L0 is the unscaled rope
    assert [r["ppl"] for r in shared["perplexity"]] == pytest.approx([r["ppl"] for r in separate["perplexity"]],
                                                                     rel=1e-5)


@pytest.mark.parametrize("mesh", [["--mesh", "fsdp_sequence"],
                                  ["--mesh", "dp", "--mesh-axes", "{data: 2, sequence: 4}", "--load-balance", "striped",
                                   "--context-parallel", "ring"]])
def test_mesh_run_gives_the_single_device_cells(tiny_dir, corpus, tmp_path, mesh):
    """The same evaluation sharded over 8 virtual devices (parameters by fsdp, tokens by sequence, in the
    load-balanced layouts): every cell's NLL and its NLL-by-position curve (in the sequence's order) equal
    one device's."""
    single = run(tiny_dir, corpus, tmp_path / "single")
    sharded = run(tiny_dir, corpus, tmp_path / "mesh", *mesh)
    cells = {}
    for name in ("single", "mesh"):
        for line in (tmp_path / name / "cells.jsonl").read_text().splitlines():
            rec = json.loads(line)
            cells.setdefault(rec["key"], {})[name] = rec
    assert len(cells) == 12
    for key, v in cells.items():
        assert v["mesh"]["nll_sum"] == pytest.approx(v["single"]["nll_sum"], rel=1e-5), key
        if "bucket_sums" in v["single"]:
            assert v["mesh"]["bucket_sums"] == pytest.approx(v["single"]["bucket_sums"], rel=1e-5, abs=1e-6), key
    assert [r["ppl"] for r in sharded["perplexity"]] == pytest.approx([r["ppl"] for r in single["perplexity"]],
                                                                      rel=1e-5)


def test_run_directory_refuses_other_settings(tiny_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_dir, corpus, out, "--lengths", "48")
    assert eval_cli.main(["--model", str(tiny_dir[0]), "--data", str(corpus), "--lengths", "48",
                          "--bos", "none", "--out", str(out)]) == 2
    assert "bos (1 there, None now)" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--lengths", "1"], "lengths"),
    (["--methods", "yarn:factor"], "key=value"),
    (["--methods", "warp"], "warp"),
    (["--model", "/nonexistent"], "model"),
    (["--data", "/nonexistent.jsonl"], "data"),
    (["--protocol", "chunked"], "protocol"),
    (["--bos", "99999999"], "bos"),
    (["--mesh-axes", "{pipeline: 2}"], "mesh_axes"),
    (["--mesh", "fsdp", "--mesh-axes", "{tensor: 3}"], "not divisible"),
    (["--mesh", "ring"], "mesh"),
    (["--mesh-rules", "{embed: pipeline}"], "mesh_rules"),
    (["--mesh-rules", "{widths: fsdp}"], "no logical axis"),
    (["--num-processes", "2"], "coordinator_address"),
])
def test_bad_input_fails_before_compute_naming_the_field(tiny_dir, corpus, tmp_path, capsys, args, message):
    argv = ["--model", str(tiny_dir[0]), "--data", str(corpus), "--lengths", "48", "--out", str(tmp_path / "r"),
            *args]
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "r" / "cells.jsonl").exists()


# --- resumes check what they resume; failures are one line, before compute ------------------------------------

def _argv(model, corpus, out, *extra):
    return ["--model", str(model), "--data", str(corpus), "--lengths", "48", "--methods", "none", "--max-docs", "2",
            "--out", str(out), *extra]


def test_changed_inputs_are_refused_naming_what_changed(tiny_dir, corpus, tmp_path, capsys):
    """The stale-cell bugs: a data file edited in place, weights re-exported into the same directory and a
    checkpoint root that gained a newer step all used to reuse the old cells silently (exit 0)."""
    import shutil

    from yarn_jax.checkpoint import save_orbax_checkpoint

    model = tmp_path / "model"
    shutil.copytree(tiny_dir[0], model)
    out = tmp_path / "run"
    assert eval_cli.main(_argv(model, corpus, out)) == 0
    first = json.loads((out / "summary.json").read_text())["perplexity"][0]["ppl"]
    capsys.readouterr()
    lines = corpus.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["text"] = edited["text"][::-1]
    corpus.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]))
    before = snapshot(tmp_path)
    assert eval_cli.main(_argv(model, corpus, out)) == 2
    assert "inputs changed since its cells were computed — document(s) doc1: content changed" in \
        capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert eval_cli.main(_argv(model, corpus, out, "--recompute-changed")) == 0
    second = json.loads((out / "summary.json").read_text())["perplexity"][0]["ppl"]
    assert second != first and len((out / "cells.jsonl").read_text().splitlines()) == 3  # 2 old + doc1 anew
    capsys.readouterr()
    # weights re-exported in place (same names and shapes, other values)
    _, _, cfg, params = tiny_dir
    save_hf_checkpoint(model, cfg, random_params(cfg, seed=8, std=0.1), tokenizer_dir=str(tiny_dir[0]))
    assert eval_cli.main(_argv(model, corpus, out)) == 2
    assert "model: changed: model.safetensors" in capsys.readouterr().err
    # a checkpoint root that gained a newer step
    root = tmp_path / "ckpt"
    save_orbax_checkpoint(root, 1, cfg, params, tokenizer_dir=str(tiny_dir[0]))
    assert eval_cli.main(_argv(root, corpus, tmp_path / "run2")) == 0
    save_orbax_checkpoint(root, 2, cfg, random_params(cfg, seed=9, std=0.1))
    capsys.readouterr()
    assert eval_cli.main(_argv(root, corpus, tmp_path / "run2")) == 2
    assert "its latest step was 1, it is now 2" in capsys.readouterr().err


def test_second_eval_on_the_same_out_is_refused_naming_the_holder(tiny_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    with HeldLock(out) as holder:
        assert eval_cli.main(_argv(tiny_dir[0], corpus, out)) == 2
        err = capsys.readouterr().err
        assert f"run directory {out} is in use by another yarn_jax command (pid {holder.pid} on" in err
        assert not out.exists()


def test_non_finite_results_exit_non_zero_and_plots_skip_them(tiny_dir, corpus, tmp_path, capsys):
    _, d, cfg, params = tiny_dir
    huge = dict(params)
    huge[("final_norm", "weight")] = np.full_like(params[("final_norm", "weight")], 3e38)  # finite weights,
    huge[("lm_head",)] = params[("lm_head",)] * 1e3  # logits that overflow to inf
    save_hf_checkpoint(tmp_path / "huge", cfg, huge, tokenizer_dir=str(tiny_dir[0]))
    out = tmp_path / "run"
    assert eval_cli.main(_argv(tmp_path / "huge", corpus, out, "--lengths", "48", "96")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: non-finite perplexity for none at 48, none at 96")
    assert sum(line.startswith("error:") for line in err) == 1
    assert (out / "ppl_vs_length.png").read_bytes()[:4] == b"\x89PNG"


def test_passkey_length_too_short_fails_before_any_cell(tiny_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert eval_cli.main(_argv(tiny_dir[0], corpus, out, "--passkey-lengths", "20", "4096")) == 2
    assert "passkey_lengths: 20 tokens is too short for the passkey prompt (it needs" in capsys.readouterr().err
    assert not (out / "cells.jsonl").exists()


def test_tokenizer_larger_than_the_vocabulary_is_refused(tiny_dir, corpus, tmp_path, capsys):
    d = tiny_hf_dict(None, max_pos=64, vocab=1000, hidden=32, heads=2, kv_heads=1)
    cfg = LlamaConfig.from_hf_dict(d)
    save_hf_checkpoint(tmp_path / "small", cfg, random_params(cfg), tokenizer_dir=str(tiny_dir[0]))
    assert eval_cli.main(_argv(tmp_path / "small", corpus, tmp_path / "run")) == 2
    assert "the tokenizer emits ids up to 49151, but the model's embedding has vocab_size=1000" in \
        capsys.readouterr().err


def _damage_config(out):
    (out / "config.json").write_text("{not json")


def _damage_cells(out):
    with (out / "cells.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "ppl", "nll_sum": 1.0}) + "\n")


@pytest.mark.parametrize("damage, message", [
    (_damage_config, "config.json: damaged (JSONDecodeError"),
    (_damage_cells, "cells.jsonl line 3 is not a result record (no 'key')"),
])
def test_damaged_run_directory_records_are_one_line_errors(tiny_dir, corpus, tmp_path, capsys, damage, message):
    out = tmp_path / "run"
    assert eval_cli.main(_argv(tiny_dir[0], corpus, out)) == 0
    damage(out)
    capsys.readouterr()
    assert eval_cli.main(_argv(tiny_dir[0], corpus, out)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _non_utf8(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Fran\xe7ois ".encode("latin-1") * 200)
    return ["--data", str(f)]


def _bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("lengths: [48\nmethods: none")
    return ["--config", str(tmp_path / "bad.yaml")]


def _list_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    return ["--config", str(tmp_path / "list.yaml")]


def _broken_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps([1, 2]))
    return ["--model", str(tmp_path / "m")]


def _zero_heads(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**tiny_hf_dict(None), "num_attention_heads": 0}))
    return ["--model", str(tmp_path / "m")]


def _data_checked_before_model(tmp_path):
    return _broken_model(tmp_path) + ["--data", str(tmp_path / "missing.jsonl")]


@pytest.mark.parametrize("make, message", [
    (_non_utf8, "latin1.txt is not UTF-8 text"),
    (_bad_yaml, "bad.yaml: not valid YAML"),
    (_list_yaml, "list.yaml: expected a mapping of field: value"),
    (_broken_model, "expected a JSON object of config fields, got list"),
    (_zero_heads, "['num_attention_heads'] must be a positive integer, got 0"),
    (_data_checked_before_model, "missing.jsonl' is neither"),
    (lambda p: ["--protocol", "sliding", "--stride", "48"], "stride 48 must be smaller than every length"),
    (lambda p: ["--scales", "nan"], "scales"),
    (lambda p: ["--scales", "inf"], "scales"),
    (lambda p: ["--methods", "yarn:factor=nan,original_max_position_embeddings=64"], "['factor'] must be finite"),
    (lambda p: ["--methods", "{rope_type: linear, factor: .inf}"], "['factor'] must be finite"),
], ids=["non-utf8", "yaml", "yaml-list", "config-list", "zero-heads", "data-first", "stride", "nan-scale",
        "inf-scale", "nan-factor", "inf-factor"])
def test_more_bad_inputs_are_one_line_errors(tiny_dir, corpus, tmp_path, capsys, make, message):
    extra = make(tmp_path)
    argv = _argv(tiny_dir[0], corpus, tmp_path / "r", *extra)
    if "--config" in extra:
        argv = extra + _argv(tiny_dir[0], corpus, tmp_path / "r")
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "cells.jsonl").exists()


def test_full_disk_and_read_only_are_one_line_naming_the_file(tiny_dir, corpus, small_disk, capsys):
    """The reported failure: 857 lines of stderr on ENOSPC. Now: exit 2, one line naming the file."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = small_disk("100k") / "run"
    proc = subprocess.run([sys.executable, str(root / "eval.py"), *_argv(tiny_dir[0], corpus, out, "--lengths", "48",
                           "96", "--methods", "none", "yarn")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and sum(x.startswith("error:") for x in lines) == 1
    assert lines[-1].startswith(f"error: {out}/") and "cannot write (No space left on device" in lines[-1]
    # a read-only output directory: refused before anything is computed, naming the path
    ro = small_disk("1m", read_only=True)
    capsys.readouterr()
    assert eval_cli.main(_argv(tiny_dir[0], corpus, ro / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ro}/.run.lock: Read-only file system") and len(err.splitlines()) == 1, err
