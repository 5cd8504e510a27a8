"""One process of the two-process test (tests/test_sharding_distributed.py), run as a script:

    python tests/multiprocess_worker.py WORKDIR PORT PROCESS_ID

Two CPU devices per process, 4 in all, mesh fsdp=2 x sequence=2 across the processes (gloo collectives
over 127.0.0.1). Reads WORKDIR/model (HF directory) and WORKDIR/batches.npz; writes
WORKDIR/result_<id>.json with the train losses, the eval NLL and the checkpoint round-trip check, after
saving and restoring an orbax checkpoint (WORKDIR/ckpt) and running eval.py's runner (WORKDIR/eval).
"""

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from yarn_jax.api import from_pretrained  # noqa: E402
from yarn_jax.checkpoint import save_orbax_checkpoint  # noqa: E402
from yarn_jax.data.corpus import Document  # noqa: E402
from yarn_jax.evaluation.config import EvalConfig  # noqa: E402
from yarn_jax.evaluation.methods import parse_methods  # noqa: E402
from yarn_jax.evaluation.perplexity import PerplexityScorer  # noqa: E402
from yarn_jax.evaluation.runner import run  # noqa: E402
from yarn_jax.model import model_params  # noqa: E402
from yarn_jax.sharding import MeshConfig, Sharder, distributed, make_mesh  # noqa: E402
from yarn_jax.training.step import TrainStep, batch_sharding, donatable, make_optimizer  # noqa: E402

MESH = {"fsdp": 2, "sequence": 2}


def main(workdir: Path, port: int, pid: int) -> None:
    distributed.initialize(distributed.DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                                         process_id=pid, timeout_s=60))
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    sharder = Sharder(make_mesh(MeshConfig(axes=MESH)))
    model = from_pretrained(workdir / "model", sharder=sharder).module
    cfg = model.config
    graphdef, state = nnx.split(model)

    # eval step: the perplexity scorer's sharded forward on one document
    doc = Document("doc", np.load(workdir / "batches.npz")["doc"])
    none = parse_methods(["none"], [2.0], 64)[0]
    nll = float(PerplexityScorer(model, bos=None).score(doc, 64, none).nll.sum())

    # two train steps; each process reads only its block of every batch
    # eps above rounding-level gradients: AdamW's first update maps |g| >> eps to +-lr, so an entry whose
    # tiny gradient comes from cancellation would compare summation orders, not sharding
    step = TrainStep(model, make_optimizer(1e-2, warmup_steps=1, clip_norm=0.5, eps=1e-3))
    opt = step.init(state)
    state = donatable(state)  # as the training loop (global arrays: each process copies its shards)
    losses, blocks = [], []
    data = np.load(workdir / "batches.npz")
    for name in ("batch0", "batch1"):
        full = data[name]
        sharding = batch_sharding(sharder, full.shape)
        block = distributed.process_block(sharding, full.shape)
        blocks.append([[s.start, s.stop] for s in block])
        batch = {"input_ids": distributed.from_process_block(full[block], sharding, full.shape)}
        state, opt, metrics = step(state, opt, batch)
        losses.append(float(metrics["loss"]))

    # orbax: both processes write their shards of one checkpoint, then both restore it
    trained = nnx.merge(graphdef, state)
    save_orbax_checkpoint(workdir / "ckpt", 2, cfg, model_params(trained))
    restored = from_pretrained(workdir / "ckpt", sharder=sharder).module
    same = True
    for path, value in model_params(restored).items():
        original = model_params(trained)[path]
        same &= value.sharding == original.sharding
        for a, b in zip(value.addressable_shards, original.addressable_shards):
            same &= a.index == b.index and bool(np.array_equal(np.asarray(a.data), np.asarray(b.data)))

    # eval.py's runner across both processes: process 0 alone writes
    run(EvalConfig(model=str(workdir / "model"), data=str(workdir / "docs.jsonl"), lengths=[48, 64],
                   methods=["none", "yarn"], scales=[2.0], max_docs=1, bos="none", out=str(workdir / "eval"),
                   mesh="none", mesh_axes=MESH))

    (workdir / f"result_{pid}.json").write_text(json.dumps(
        {"losses": losses, "eval_nll": nll, "restored_equal": bool(same), "blocks": blocks,
         "process_index": jax.process_index()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
