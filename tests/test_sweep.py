"""The sweep runner end to end on a CI-sized version of configs/sweeps/repro_small.yaml (the real file, shrunk
by --set overrides): corpus split, tokenizer, scratch pretraining, fine-tuned and untuned cells, the table
with the seed spread, plots; a re-run skips finished cells; cluster commands; untuned cells' perplexity
equals transformers' on the exported base model; bad configs fail before compute."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from yarn_jax.errors import ConfigError
from yarn_jax.sweep.__main__ import main
from yarn_jax.sweep.config import load_sweep
from yarn_jax.sweep.runner import Sweep

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "sweeps" / "repro_small.yaml")
L0 = 32


def ci_sets(out: Path) -> list[str]:
    return [
        f"out={out}",
        "scratch.vocab_size=400",
        "scratch.heldout=[twelfth-night, a-winter-s-tale]",
        "scratch.model={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,"
        f" num_key_value_heads: 2, head_dim: 8, rope_theta: 10000.0, max_position_embeddings: {L0}}}",
        "scratch.pretrain={steps: 30, batch_size: 8, learning_rate: 3.0e-3, warmup_steps: 3, lr_decay: cosine,"
        " remat: none, eval_docs: 1, save_every: 30, keep: 1, async_checkpoint: false, max_docs: 4}",
        "train={learning_rate: 1.0e-3, warmup_steps: 1, remat: none, eval_docs: 1, save_every: 3, keep: 1,"
        " async_checkpoint: false, max_docs: 3}",
        "eval={lengths: [32, 64, 128], max_docs: 2, protocol: truncate}",
        "grids=[{methods: [linear, yarn], scales: [2], finetune_steps: [3], seeds: [0, 1], train: {batch_size: 2}},"
        " {methods: [none, yarn, dynamic_yarn], scales: [2]}]",
    ]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, assets):
    out = tmp_path_factory.mktemp("sweep") / "repro"
    sets = ci_sets(out)
    assert main([CONFIG] + [a for s in sets for a in ("--set", s)]) == 0
    return out, sets


def test_pipeline_writes_every_cell_table_and_plots(swept):
    out, _ = swept
    ids = ["linear-s2-ft3-seed0", "linear-s2-ft3-seed1", "yarn-s2-ft3-seed0", "yarn-s2-ft3-seed1", "none",
           "yarn-s2", "dynamic_yarn-s2"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(ids)
    for cid in ids:
        r = json.loads((out / "cells" / cid / "result.json").read_text())
        assert set(r["perplexity"]) == {"32", "64", "128"}
        assert all(math.isfinite(v) and v > 1 for v in r["perplexity"].values())
        assert bool(r["train_final"]) == ("ft3" in cid)
    # held-out plays never enter training
    corpus = out / "setup" / "corpus"
    assert sorted(p.stem for p in (corpus / "heldout").iterdir()) == ["a-winter-s-tale", "twelfth-night"]
    assert not {"twelfth-night", "a-winter-s-tale"} & {p.stem for p in (corpus / "train").iterdir()}
    # pretraining learned something: loss fell
    losses = [json.loads(line)["loss"] for line in (out / "setup" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.5, losses
    # fine-tuned cells: seeds differ (data order), the table shows mean ± half-range over the 2 seeds
    a = json.loads((out / "cells" / "yarn-s2-ft3-seed0" / "result.json").read_text())["perplexity"]
    b = json.loads((out / "cells" / "yarn-s2-ft3-seed1" / "result.json").read_text())["perplexity"]
    assert a != b
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| yarn | 2 | 3 |"))
    mean, half = (float(x) for x in row.split("|")[5].split("±"))
    assert mean == pytest.approx((a["32"] + b["32"]) / 2, abs=0.006)
    assert half == pytest.approx(abs(a["32"] - b["32"]) / 2, abs=0.006)
    for name in ("ppl_vs_length", "nll_vs_position", "train_loss"):  # paper figures: 2 widths, PNG and PDF
        for suffix in ("", "_column"):
            assert (out / f"{name}{suffix}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (out / f"{name}{suffix}.pdf").read_bytes()[:4] == b"%PDF"
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 5  # linear/yarn fine-tuned, none/yarn/dynamic_yarn untuned
    # single-seed rows: a 95 % interval around the value; one best per length; Dynamic-YaRN at L0 is the
    # unscaled rope, so whichever of the two is not the best differs from it by exactly 0: not resolved
    untuned = {r["method"]: r for r in rows if r["finetune_steps"] == "0"}
    for n in (32, 64, 128):
        for r in untuned.values():
            assert float(r[f"lo@{n}"]) <= float(r[f"ppl@{n}"]) <= float(r[f"hi@{n}"])
        best = min(untuned.values(), key=lambda r: float(r[f"ppl@{n}"]))
        assert [m for m, r in untuned.items() if r[f"best@{n}"] == "True"] == [best["method"]]
    none, dyn = untuned["none"], untuned["dynamic_yarn"]
    assert float(none["ppl@32"]) == pytest.approx(float(dyn["ppl@32"]), rel=1e-5)  # a prefix vs a forward
    assert "True" in (none["best@32"], none["unresolved@32"]) and "True" in (dyn["best@32"], dyn["unresolved@32"])
    assert "**" in table and "not resolved" in table


def test_position_curves_average_back_to_the_perplexity(swept):
    """The NLL-by-position curves (longest length, 16 buckets of 8 tokens; the first holds 7 predictions
    after BOS) weighted by their token counts give back each cell's log perplexity at that length; fine-tuned
    cells keep one curve per seed."""
    from yarn_jax.sweep.report import load_results, position_curves

    out, _ = swept
    ids = sorted(p.name for p in (out / "cells").iterdir())
    results, missing = load_results(out / "cells", ids)
    assert not missing
    curves = position_curves(results, out / "cells")
    weights = np.full(16, 8.0)
    weights[0] = 7.0
    by_key = {(r["finetune_steps"] > 0, r["scale"], r["method"]): r for r in results}
    for (tuned, scale, method, _, _), (xs, ys) in curves.items():
        assert xs == pytest.approx((np.arange(16) + 0.5) * 8)
        assert ys.shape == ((2, 16) if tuned else (1, 16))
        if not tuned:
            ppl = by_key[(tuned, scale, method)]["perplexity"]["128"]
            assert float(np.average(ys[0], weights=weights)) == pytest.approx(math.log(ppl), rel=1e-6)
    a = json.loads((out / "cells" / "yarn-s2-ft3-seed0" / "result.json").read_text())["perplexity"]["128"]
    b = json.loads((out / "cells" / "yarn-s2-ft3-seed1" / "result.json").read_text())["perplexity"]["128"]
    ys = curves[(True, 2.0, "yarn", "yarn", 3)][1]
    assert sorted(np.average(ys, axis=1, weights=weights)) == pytest.approx(sorted([math.log(a), math.log(b)]))


def test_rerun_skips_finished_cells(swept, capsys):
    out, sets = swept
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}
    assert main([CONFIG] + [a for s in sets for a in ("--set", s)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")} == stamps
    assert main([CONFIG, "--list"] + [a for s in sets for a in ("--set", s)]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert sum(line.startswith("done") for line in listed) == 7


def test_emit_commands_cover_setup_cells_and_gather(swept, capsys):
    out, sets = swept
    assert main([CONFIG, "--emit-commands"] + [a for s in sets for a in ("--set", s)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("--setup-only") and lines[-1].endswith("--gather")
    assert sorted(line.rsplit(" ", 1)[1] for line in lines[1:-1]) == sorted(
        p.name for p in (out / "cells").iterdir())
    assert (out / "commands.txt").read_text().strip().splitlines() == lines


def test_untuned_cell_equals_transformers_on_the_exported_base(swept, tmp_path):
    """Independent check of the wiring (model, method, data, length): the yarn x2 cell's perplexity at 128
    tokens from transformers' LlamaForCausalLM with the same rope_scaling on the pretrained model."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, LlamaForCausalLM

    from yarn_jax.convert import convert

    out, _ = swept
    hf_dir = tmp_path / "hf"
    convert(out / "setup" / "pretrain" / "checkpoints", hf_dir, to="hf", verify_logits=False, progress=False)
    config = AutoConfig.from_pretrained(str(hf_dir))
    config.rope_parameters = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": L0,
                              "rope_theta": config.rope_parameters["rope_theta"]}
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), config=config, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    doc_means = []
    for play in ("twelfth-night", "a-winter-s-tale"):
        text = (out / "setup" / "corpus" / "heldout" / f"{play}.txt").read_text()
        ids = [config.bos_token_id] + tok.encode(text, add_special_tokens=False).ids[:127]
        with torch.no_grad():
            loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        doc_means.append(loss)
    expected = float(np.exp(np.mean(doc_means)))
    got = json.loads((out / "cells" / "yarn-s2" / "result.json").read_text())["perplexity"]["128"]
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("sets, field", [
    (["model=smollm2"], "exactly one of `model` and `scratch`"),
    (["train.rope={rope_type: yarn}"], "train: ['rope']"),
    (["train.learning_rat=0.1"], "learning_rat"),
    (["grids.0.scales=[0.5]"], "grids.0.scales"),
    (["grids.0.vary={not_a_field: [1, 2]}"], "not_a_field"),
    (["nonsense"], "KEY.PATH=VALUE"),
])
def test_bad_sweep_config_names_the_field(sets, field, tmp_path):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]").replace("`", "`")):
        load_sweep(CONFIG, [f"out={tmp_path}"] + sets)


def test_bad_cell_settings_fail_before_any_compute(tmp_path):
    cfg = load_sweep(CONFIG, ci_sets(tmp_path / "s") + ["train.learning_rate=-1"])
    with pytest.raises(ConfigError, match="learning_rate"):
        Sweep(cfg).run()
    assert not (tmp_path / "s").exists()  # nothing built: no split, no tokenizer, no pretraining


def test_context_parallel_settings_are_sweep_axes(tmp_path):
    """load_balance / context_parallel vary like any TrainConfig field (an ablation over layouts and modes);
    a bad one fails naming the field before any compute."""
    from yarn_jax.sweep.runner import expand

    grid = ("grids=[{methods: [yarn], scales: [2], finetune_steps: [2], vary: {context_parallel: [all_gather, "
            "ring], load_balance: [dual_chunk, striped]}}]")
    cells = expand(load_sweep(CONFIG, ci_sets(tmp_path / "s") + [grid]))
    assert len(cells) == 4 and {dict(c.train)["context_parallel"] for c in cells} == {"all_gather", "ring"}
    assert "context_parallel=ring-load_balance=striped" in cells[-1].id
    with pytest.raises(ConfigError, match="load_balance"):
        Sweep(load_sweep(CONFIG, ci_sets(tmp_path / "s") + ["train.load_balance=zigzag"])).run()
    assert not (tmp_path / "s").exists()


def test_rope_parameters_are_sweep_axes(tmp_path):
    """`vary: {temperature: [...]}` over named yarn methods: one cell per value, the parameter in the method
    each cell evaluates (and fine-tunes with), not in its train settings; a key no method of the grid takes
    fails naming it."""
    from yarn_jax.sweep.runner import expand

    grid = ("grids=[{methods: [yarn, dynamic_yarn], scales: [2], vary: {temperature: [0, 0.07]}},"
            " {methods: [yarn], scales: [2], finetune_steps: [2], vary: {temperature: [0.07], learning_rate: [0.01]}}]")
    sweep = Sweep(load_sweep(CONFIG, ci_sets(tmp_path / "s") + [grid]))
    cells = expand(sweep.cfg)
    assert [c.id for c in cells] == ["yarn-s2-temperature=0", "yarn-s2-temperature=0.07",
                                     "dynamic_yarn-s2-temperature=0", "dynamic_yarn-s2-temperature=0.07",
                                     "yarn-s2-ft2-seed0-learning_rate=0.01-temperature=0.07"]
    _, ec = sweep.cell_configs(cells[1])
    assert ec.methods == ["yarn:temperature=0.07"]
    tc, ec = sweep.cell_configs(cells[-1])
    assert tc.rope == {"rope_type": "yarn", "temperature": 0.07, "factor": 2.0,
                       "original_max_position_embeddings": L0}
    assert tc.learning_rate == 0.01 and ec.methods == ["none"]
    bad = "grids=[{methods: [none, yarn], scales: [2], vary: {temperature: [0.07]}}]"
    with pytest.raises(ConfigError, match=r"'temperature' is neither a TrainConfig field nor a parameter of the "
                                          r"named rope method\(s\) \['none'\]"):
        load_sweep(CONFIG, ci_sets(tmp_path / "s") + [bad])
    assert not (tmp_path / "s").exists()


def test_every_cells_rope_is_checked_before_any_cell_runs(tmp_path):
    """The reported late failure: a cell's rope was validated only when that cell ran, after the earlier
    cells (and the pretraining) had run."""
    sets = ci_sets(tmp_path / "s")[:-1] + ["grids=[{methods: [none, 'yarn:factor=4'], scales: [2]}]"]
    with pytest.raises(ConfigError, match=r"cell yarn_factor=4-s2: method 'yarn:factor=4'\['original_max_position_"
                                          r"embeddings'\] is required"):
        Sweep(load_sweep(CONFIG, sets)).run()
    assert not (tmp_path / "s").exists()


def test_model_sweep_on_the_exported_base_matches_and_reads_l0(swept, tmp_path):
    """A `model:` sweep (like the SmolLM2 ablation) over the scratch sweep's pretrained model exported to HF
    gives the scratch sweep's untuned perplexities, with L0 read from the model's config.json (not set in the
    sweep) for the table header."""
    from yarn_jax.convert import convert

    out, _ = swept
    hf_dir = tmp_path / "hf"
    convert(out / "setup" / "pretrain" / "checkpoints", hf_dir, to="hf", verify_logits=False, progress=False)
    cfg_path = tmp_path / "model_sweep.yaml"
    cfg_path.write_text(
        f"name: exported\nout: {tmp_path / 'sweep'}\nmodel: {hf_dir}\n"
        f"data: {out / 'setup' / 'corpus' / 'heldout'}\n"
        "eval: {lengths: [32, 64, 128], max_docs: 2, protocol: truncate}\n"
        "grids: [{methods: [none, yarn], scales: [2]}]\n")
    assert main([str(cfg_path)]) == 0
    for cid in ("none", "yarn-s2"):
        got = json.loads((tmp_path / "sweep" / "cells" / cid / "result.json").read_text())["perplexity"]
        want = json.loads((out / "cells" / cid / "result.json").read_text())["perplexity"]
        assert got == pytest.approx(want, rel=1e-5)
    header = (tmp_path / "sweep" / "table.md").read_text().splitlines()[2]
    assert "64 (2·L0)" in header and "128 (4·L0)" in header
    assert (tmp_path / "sweep" / "nll_vs_position.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_in_a_sweep_saves_the_fine_tune_and_records_no_result(swept, tmp_path):
    """Ctrl-C while a cell fine-tunes: one line saying a checkpoint will be saved, the step saved, one
    `error:` line and exit 130 — and the cell has no result.json (an interrupted fine-tune is never read as
    finished); the re-run would resume it."""
    import os
    import re
    import shutil
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "repro"
    shutil.copytree(swept[0] / "setup", out / "setup")  # the pretrained base: no pretraining again
    sets = [s for s in ci_sets(out) if not s.startswith("grids=")]
    sets.append("grids=[{methods: [yarn], scales: [2], finetune_steps: [100000], seeds: [0], train: {batch_size: 2}}]")
    cmd = [sys.executable, "-m", "yarn_jax", "sweep", CONFIG] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        metrics = []
        while time.time() < deadline and proc.poll() is None:
            metrics = list((out / "cells").glob("*/train/metrics.jsonl"))
            if metrics and len(metrics[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert metrics, "no cell started fine-tuning"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "SIGINT: saving a checkpoint when the step in progress ends" in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: SIGINT: saved step \d+ of 100000 to .*/checkpoints; stopped \(re-run the same "
                        r"command to resume\)", last), last
    cell = metrics[0].parent.parent
    assert not (cell / "result.json").exists()
    assert [p for p in (cell / "train" / "checkpoints").iterdir() if p.name.isdigit()]
