"""eval.py end to end on a tiny random model with SmolLM2's tokenizer: results against transformers,
resuming, refusing mixed run directories, and errors before compute."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import random_params, tiny_hf_dict, torch_llama

import eval as eval_cli
from yarn_jax.checkpoint.hf import params_to_hf, save_hf_checkpoint
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


@pytest.mark.parametrize("mesh", [["--mesh", "fsdp_sequence"], ["--mesh", "dp", "--mesh-axes", "{data: 2, sequence: 4}"]])
def test_mesh_run_gives_the_single_device_cells(tiny_dir, corpus, tmp_path, mesh):
    """The same evaluation sharded over 8 virtual devices (parameters by fsdp, tokens by sequence)."""
    single = run(tiny_dir, corpus, tmp_path / "single")
    sharded = run(tiny_dir, corpus, tmp_path / "mesh", *mesh)
    cells = {}
    for name in ("single", "mesh"):
        for line in (tmp_path / name / "cells.jsonl").read_text().splitlines():
            rec = json.loads(line)
            cells.setdefault(rec["key"], {})[name] = rec["nll_sum"]
    assert len(cells) == 12
    for key, v in cells.items():
        assert v["mesh"] == pytest.approx(v["single"], rel=1e-5), key
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
