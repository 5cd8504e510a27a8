"""The fine-tuning loop behind train.py: load (sharded if a mesh is configured), resume or start, step,
log, evaluate, checkpoint; SIGTERM (TPU preemption) or Ctrl-C saves at the next step boundary and stops
(exit 128 + signal: the run is not finished; re-running the same command resumes it)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax.pretrained import load_pretrained
from yarn_jax.assets import resolve_model
from yarn_jax.data.corpus import check_source, load_documents
from yarn_jax.data.packing import BatchStream, build_rows
from yarn_jax.errors import ConfigError, Interrupted, NumericsError
from yarn_jax.evaluation.methods import Method
from yarn_jax.evaluation.perplexity import PerplexityScorer
from yarn_jax.fingerprint import describe_change, model_identity, short
from yarn_jax.outputs import atomic_write_text, close_after, lock, writing
from yarn_jax.rundir import check_settings, write_json_atomic
from yarn_jax.sharding import distributed
from yarn_jax.sharding.params import tree_shardings
from yarn_jax.training.checkpoints import TrainCheckpointer
from yarn_jax.training.config import TRAJECTORY_FIELDS, TrainConfig
from yarn_jax.progress import Progress
from yarn_jax.provenance import Invocation
from yarn_jax.training.step import TrainStep, batch_sharding, donatable, learning_rate_schedule, make_optimizer

log = logging.getLogger("yarn_jax.train")


class _Stop:
    """SIGTERM (a TPU VM's preemption notice) or a first Ctrl-C: one line, then the loop saves when the step
    in progress ends — the wait is at most one step, whose time the progress line shows — and stops with
    `Interrupted` (exit 128 + the signal). A second Ctrl-C stops at once, without saving (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.step_seconds: float | None = None  # the last step's time, for the line
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        wait = f" (the last step took {self.step_seconds:.1f} s)" if self.step_seconds else ""
        print(f"{signal.Signals(signum).name}: saving a checkpoint when the step in progress ends{wait}, then "
              "stopping; Ctrl-C again stops at once without saving", file=sys.stderr, flush=True)

    def restore(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def _run_identity(cfg: TrainConfig, model_path: str) -> dict:
    """The fields that define a run's trajectory, the initial weights' identity included."""
    mine = {k: getattr(cfg, k) for k in TRAJECTORY_FIELDS}
    if cfg.lr_decay == "cosine":  # the schedule depends on the length of the run
        mine["steps"] = cfg.steps
    mine["model_identity"] = model_identity(model_path)
    return mine


def _check_run_dir(out: Path, mine: dict) -> None:
    """A run directory belongs to one trajectory: resuming under another model or other data/optimizer
    settings is refused, naming what differs (nothing is written here)."""
    check_settings(out / "train_config.json", mine, f"{out} holds a run with other",
                   describe={"model_identity": lambda old, new: f"the initial weights differ: "
                             f"{describe_change(old, new)}",
                             "data_identity": lambda old, new: "the documents' text or tokenizer changed"})


def _metrics_file(out: Path, resume_step: int, primary: bool) -> Path:
    """metrics.jsonl holding exactly the steps up to the resumed one (later lines came from the lost run)."""
    path = out / "metrics.jsonl"
    if primary and path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= resume_step:
                keep.append(line)
        atomic_write_text(path, "".join(x + "\n" for x in keep))
    return path


def _global_batch(host_batch_fn, sharder, shape):
    """The batch as arrays the step accepts: device arrays, or global arrays built from this process's block."""
    if sharder is None:
        return {k: jnp.asarray(v) for k, v in host_batch_fn(slice(None)).items()}
    sharding = batch_sharding(sharder, shape)
    block = distributed.process_block(sharding, shape)
    local = host_batch_fn(block[0])  # only this process's rows are read
    return {k: distributed.from_process_block(v[:, block[1]], sharding, shape) for k, v in local.items()}


def train(cfg: TrainConfig, note: str | None = None) -> dict:
    """Run (or resume) the fine-tune described by cfg; returns the final metrics record. Process 0 holds the
    run directory's lock throughout (a second command on the same --out is refused). `note` (where the
    settings came from) is logged when the run starts."""
    distributed.initialize(cfg.distributed_config())
    primary = distributed.is_primary()
    with lock(cfg.out, f"run directory {cfg.out}", enabled=primary, run_dir=True):
        return _train(cfg, primary, note)


def _train(cfg: TrainConfig, primary: bool, note: str | None) -> dict:
    log.setLevel(logging.INFO if primary else logging.ERROR)
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.propagate = False
    sharder = cfg.sharder()
    out = Path(cfg.out)
    check_source(cfg.data)
    model_path = distributed.share_from_primary(resolve_model(cfg.model) if primary else None)
    mine = _run_identity(cfg, model_path)
    _check_run_dir(out, mine)  # before the model loads; the record is written once every input validated
    pm = load_pretrained(model_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         attention_backend=cfg.attention_backend, remat=cfg.remat, sharder=sharder,
                         splash_blocks=cfg.splash())
    if cfg.rope is not None:
        pm = pm.with_rope(cfg.rope, where="rope")
    mc = pm.config
    designed = mc.rope.designed_context
    if cfg.seq_len > designed:  # allowed (a baseline can want it), never silent
        l0 = mc.rope.original_max_position_embeddings or mc.max_position_embeddings
        log.warning("warning: seq_len %d is %.1fx the %d positions rope %r is configured for: positions past "
                    "%d are unseen by it — pass --rope (e.g. yarn:factor=%d,original_max_position_embeddings=%d) "
                    "to extend it; continuing", cfg.seq_len, cfg.seq_len / designed, designed, mc.rope.rope_type,
                    designed, -(-cfg.seq_len // l0), l0)
    bos = mc.bos_token_id
    eos = mc.eos_token_id[0] if isinstance(mc.eos_token_id, tuple) else mc.eos_token_id
    docs = load_documents(cfg.data, pm.tokenizer(), max_docs=cfg.max_docs, text_field=cfg.text_field,
                          tfds_data_dir=cfg.tfds_data_dir)
    # the documents' tokens (their text and the tokenizer) are part of the trajectory too
    mine["data_identity"] = short([(d.name, d.digest) for d in docs])
    _check_run_dir(out, mine)
    if len(docs) <= cfg.eval_docs:
        raise ConfigError(f"eval_docs: {cfg.eval_docs} held out of {len(docs)} document(s) leaves none to train on")
    train_docs, eval_docs = docs[:len(docs) - cfg.eval_docs], docs[len(docs) - cfg.eval_docs:]
    rows = build_rows([d.ids for d in train_docs], cfg.seq_len, bos=bos, eos=eos, mode=cfg.packing)
    stream = BatchStream(rows, cfg.batch_size, cfg.seed)
    if note:
        log.info("%s", note)
    log.info("%s: %d training rows of %d tokens from %d document(s) (%s), %d held out; rope %s; mesh %s",
             cfg.model, len(rows), cfg.seq_len, len(train_docs), cfg.packing, len(eval_docs), mc.rope.rope_type,
             dict(sharder.mesh.shape) if sharder else "none")

    optimizer = make_optimizer(cfg.learning_rate, warmup_steps=cfg.warmup_steps, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                               weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, decay=cfg.lr_decay,
                               total_steps=cfg.steps)
    schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps, cfg.lr_decay, cfg.steps)
    graphdef, state = nnx.split(pm.module)
    step_fn = TrainStep(pm.module, optimizer, accum=cfg.accum)
    ckpt = TrainCheckpointer(out / "checkpoints", keep=cfg.keep, save_every=cfg.save_every,
                             async_save=cfg.async_checkpoint, save_optimizer=cfg.save_optimizer)
    abstract_opt = jax.eval_shape(optimizer.init, state)
    shardings = None if sharder is None else (tree_shardings(state, sharder), tree_shardings(abstract_opt, sharder))
    restored = ckpt.restore_latest(state, abstract_opt, shardings)
    if restored is not None:
        start, state, opt_state, data_state = restored
        next_batch = stream.check_resume(data_state, f"{out}/checkpoints/{start}")
        log.info("resumed from %s/checkpoints/%d (next batch %d)", out, start, next_batch)
    else:
        start, next_batch, opt_state = 0, 0, step_fn.init(state)
    state = donatable(state)
    nnx.update(pm.module, state)  # the module holds the training state only: no loaded arrays kept alive
    if primary:  # every input validated and the checkpoints (if any) restored: the run directory is ours
        ckpt.check_space(state, opt_state)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "train_config.json", {**cfg.model_dump(), **mine})
    ckpt.copy_tokenizer(pm.tokenizer_dir)
    metrics_path = _metrics_file(out, start, primary)

    writer = invocation = None
    if primary:
        from tensorboardX import SummaryWriter

        invocation = Invocation(out, {"model": cfg.model, "model_path": str(model_path), "rope": mc.rope.to_dict(),
                                      "original_context": mc.rope.original_max_position_embeddings
                                      or mc.max_position_embeddings, **mine}, sharder).start()
        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1)
        with writing(out / "tb"):  # the settings and provenance beside the curves (TensorBoard's text tab)
            writer.add_text("config", _code_block(cfg.model_dump()), start + 1)
            writer.add_text("provenance", _code_block(invocation.record), start + 1)
    scorer = None
    if cfg.eval_every:
        scorer = PerplexityScorer(nnx.merge(graphdef, state), bos)
    eval_length = cfg.eval_length or cfg.seq_len
    shape = (cfg.batch_size, cfg.seq_len)
    preemption = _Stop()
    record: dict = {}
    bar = Progress(cfg.steps, "train", unit="steps", initial=start, enabled=primary)
    ckpt.quiet_writer_noise()
    try:
        for step in range(start + 1, cfg.steps + 1):
            batch = _global_batch(lambda rows, i=next_batch: stream.batch(i, rows), sharder, shape)
            t0 = time.perf_counter()
            state, opt_state, m = step_fn(state, opt_state, batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            seconds = time.perf_counter() - t0
            if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
                saved = ckpt.steps()
                raise NumericsError(
                    f"step {step}: loss {m['loss']}, gradient norm {m['grad_norm']} — training diverged; this "
                    f"step was not saved (latest checkpoint: {saved[-1] if saved else 'none'}); lower the learning "
                    "rate, keep clip_norm on, or check the data")
            next_batch += 1
            record = {"step": step, "loss": m["loss"], "grad_norm": m["grad_norm"],
                      "learning_rate": float(schedule(step - 1)), "tokens": int(m["tokens"]),
                      "tokens_per_s": cfg.batch_size * cfg.seq_len / seconds, "step_time_s": seconds}
            if scorer is not None and step % cfg.eval_every == 0:
                scorer.update(state)
                nll = [scorer.score(d, eval_length, Method("trained", None)).nll for d in eval_docs]
                record["eval_ppl"] = float(np.exp(np.mean([x.mean() for x in nll])))
            if primary and (step % cfg.log_every == 0 or step == cfg.steps):
                with writing(metrics_path), metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                with writing(out / "tb"):
                    for k, v in record.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}" if k != "eval_ppl" else "eval/ppl", v, step)
                    writer.flush()
            bar.update(1, loss=f"{m['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            final = step == cfg.steps or preemption.requested
            if final or step % cfg.save_every == 0:
                ckpt.save(step, state, opt_state, mc, stream.state(next_batch), cfg.model_dump(), force=True)
            if preemption.requested:
                ckpt.wait()
                raise Interrupted(f"{signal.Signals(preemption.signum).name}: saved step {step} of {cfg.steps} to "
                                  f"{out}/checkpoints; stopped (re-run the same command to resume)",
                                  preemption.signum)
            preemption.step_seconds = seconds
        ckpt.wait()
        if writer is not None and record:
            with writing(out / "tb"):  # TensorBoard's hparams tab: the trajectory's settings and where it ended
                writer.add_hparams({k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                                    for k, v in cfg.model_dump().items() if k in TRAJECTORY_FIELDS},
                                   {f"hparam/{k}": record[k] for k in ("loss", "eval_ppl") if k in record},
                                   name="hparams", global_step=record["step"])
    except BaseException as e:
        if invocation is not None:
            invocation.finish(e)
        raise
    finally:
        bar.close()  # ends the progress bar's line, so an error is printed on a line of its own
        preemption.restore()
        if writer is not None:
            close_after(writer.close, out / "tb")
        close_after(ckpt.close)
    if invocation is not None:
        invocation.finish()
    return record


def _code_block(obj) -> str:
    """A mapping as a markdown code block of JSON (TensorBoard renders text summaries as markdown)."""
    return "```\n" + json.dumps(obj, indent=2, default=str) + "\n```"
