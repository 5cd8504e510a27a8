"""Two processes on 127.0.0.1 (jax.distributed over gloo, 2 CPU devices each, mesh fsdp=2 x sequence=2
across them): sharded train steps, the eval step and eval.py's runner give the single-process results;
an orbax checkpoint written by both is restored by both. Bounded in time; the processes are always
cleaned up."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import random_params, tiny_hf_dict
from yarn_jax.checkpoint import load_checkpoint, save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.data.corpus import Document
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.evaluation.methods import parse_methods
from yarn_jax.evaluation.perplexity import PerplexityScorer
from yarn_jax.evaluation.runner import run
from yarn_jax.model import model_from_params
from yarn_jax.training.step import TrainStep, make_optimizer

WORKER = Path(__file__).with_name("multiprocess_worker.py")
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, assets):
    from yarn_jax import assets as a

    work = tmp_path_factory.mktemp("mp")
    d = tiny_hf_dict(None, max_pos=64, vocab=49152, hidden=32, heads=2, kv_heads=1)
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=11, std=0.1)
    save_hf_checkpoint(work / "model", cfg, params, tokenizer_dir=str(assets["smollm2"]))
    rng = np.random.default_rng(5)
    np.savez(work / "batches.npz", batch0=rng.integers(0, 49152, (4, 64)).astype(np.int32),
             batch1=rng.integers(0, 49152, (4, 64)).astype(np.int32),
             doc=rng.integers(0, 49152, 200).astype(np.int32))
    text = a.play_text("hamlet")
    (work / "docs.jsonl").write_text(json.dumps({"id": "hamlet", "text": text[:4000]}) + "\n")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[1]), "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(work), str(port), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{err[-4000:]}"
    return work, cfg, params, [json.loads((work / f"result_{i}.json").read_text()) for i in range(2)]


def test_train_and_eval_steps_give_the_single_process_losses(two_process_run):
    work, cfg, params, results = two_process_run
    data = np.load(work / "batches.npz")
    model = model_from_params(cfg, params)
    state = nnx.state(model)
    step = TrainStep(model, make_optimizer(1e-2, warmup_steps=1, clip_norm=0.5, eps=1e-3))  # as the worker's
    opt = step.init(state)
    losses = []
    for name in ("batch0", "batch1"):
        state, opt, metrics = step(state, opt, {"input_ids": jnp.asarray(data[name])})
        losses.append(float(metrics["loss"]))
    nll = float(PerplexityScorer(model_from_params(cfg, params), bos=None).score(
        Document("doc", data["doc"]), 64, parse_methods(["none"], [2.0], 64)[0]).nll.sum())
    for r in results:
        assert r["losses"] == pytest.approx(losses, rel=1e-5)
        assert r["eval_nll"] == pytest.approx(nll, rel=1e-5)
    # each process read only its own block of every batch, and the two blocks differ
    for b in range(2):
        blocks = [r["blocks"][b] for r in results]
        assert blocks[0] != blocks[1]
        assert all((hi - lo) < n for blk in blocks for (lo, hi), n in zip(blk, (4, 64)) if (lo, hi) != (0, n)) \
            and any((lo, hi) != (0, n) for blk in blocks for (lo, hi), n in zip(blk, (4, 64)))

    # the checkpoint both processes wrote: restored by both (checked in the workers) and equal to the
    # single-process training result when read back here
    assert all(r["restored_equal"] for r in results)
    ckpt_cfg, ckpt = load_checkpoint(work / "ckpt")
    assert ckpt_cfg.to_hf_dict() == cfg.to_hf_dict()
    for path, var in nnx.to_flat_state(state):
        ref = np.asarray(var.get_value())
        assert np.max(np.abs(ckpt[tuple(path)] - ref)) <= 1e-5 * np.max(np.abs(ref)), path


def test_eval_runner_across_processes_writes_once_and_matches(two_process_run, tmp_path):
    work, cfg, params, _ = two_process_run
    lines = (work / "eval" / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 lengths x 2 methods, each written once (by process 0)
    single = run(EvalConfig(model=str(work / "model"), data=str(work / "docs.jsonl"), lengths=[48, 64],
                            methods=["none", "yarn"], scales=[2.0], max_docs=1, bos="none", out=str(tmp_path / "e")))
    both = json.loads((work / "eval" / "summary.json").read_text())
    assert [r["ppl"] for r in both["perplexity"]] == pytest.approx([r["ppl"] for r in single["perplexity"]], rel=1e-5)
    assert jax.process_count() == 1


def test_initialize_is_single_process_unless_asked_and_checks_its_settings(monkeypatch):
    from yarn_jax.errors import ConfigError
    from yarn_jax.sharding.distributed import DistributedConfig, initialize

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert initialize(DistributedConfig(mode="off")) is False
    assert initialize(DistributedConfig()) is False  # auto: no settings, no environment, no TPU VM
    with pytest.raises(ConfigError, match="coordinator_address, num_processes and process_id go together"):
        initialize(DistributedConfig(num_processes=2))
    with pytest.raises(ConfigError, match="process_id 2 is outside 0..1"):
        initialize(DistributedConfig(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2))
    assert jax.process_count() == 1
