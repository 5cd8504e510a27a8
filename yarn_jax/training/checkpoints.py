"""Training checkpoints: an orbax CheckpointManager whose steps readers of yarn_jax checkpoints understand
(`params` + `model_config`, see checkpoint/orbax_ckpt.py) plus what resuming needs: `opt_state` (the
optimizer state's leaves), `data` (the batch stream's position) and `train_config`.

Saves are periodic, keep the last N, and run asynchronously (the device-to-host copy blocks, the file
writing does not). Orbax exposes a step only once it is complete; a step directory that cannot be restored
(e.g. damaged after it was finalized) is reported and the previous complete one is used — a run with
checkpoints never restarts silently from step 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import jax
from flax import nnx

from yarn_jax.checkpoint.layout import copy_tokenizer_files
from yarn_jax.checkpoint.orbax_ckpt import MODEL_CONFIG, PARAMS, flatten, nest
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, OutputError
from yarn_jax.model import flat_params, state_from_flat

log = logging.getLogger("yarn_jax.train")
OPT_STATE, DATA, TRAIN_CONFIG = "opt_state", "data", "train_config"


class TrainCheckpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int, save_every: int, async_save: bool = True,
                 save_optimizer: bool = True):
        import orbax.checkpoint as ocp

        directory = os.fspath(directory)
        # orbax wants absolute local paths; gs:// and other etils paths pass through
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self._ocp = ocp
        self.keep = keep
        self.save_optimizer = save_optimizer  # False: steps hold the weights only (not resumable)
        self._previous_hook = None
        self._failed = False
        self._tokenizer_dir: str | None = None  # copied with the first saved step
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save,
            create=False))  # the directory appears with the first saved step: a run killed before it leaves none

    def check_space(self, state, opt_state) -> None:
        """OutputError now when the directory's disk cannot hold the checkpoints this run will keep (one
        step is params + optimizer state; `keep` of them, plus the one being written)."""
        if "://" in self.directory:
            return
        import shutil

        saved = (state, opt_state) if self.save_optimizer else state
        step_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(saved)) + 2**20
        need = step_bytes * max(1, self.keep + 1 - len(self.steps()))
        existing = self.directory
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)  # (not created until the first save)
        free = shutil.disk_usage(existing).free
        if free < need:
            raise OutputError(f"{self.directory}: {free / 2**20:.1f} MiB free, but keeping {self.keep} checkpoint(s) "
                              f"of {step_bytes / 2**20:.1f} MiB each needs about {need / 2**20:.1f} MiB more; free "
                              "space, lower --keep, or choose another --out")

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def incomplete(self) -> list[str]:
        """Entries of the directory that look like unfinished saves (orbax's temporary names)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory) if "tmp" in n and n.split(".")[0].isdigit())

    def save(self, step: int, state: nnx.State, opt_state, cfg: LlamaConfig, data: dict, train_config: dict,
             *, force: bool = False) -> bool:
        """Save step `step` if it is due (every `save_every`) or forced; returns whether it saved."""
        ocp = self._ocp
        with self._reported(f"saving checkpoint step {step}"):
            items = {PARAMS: ocp.args.StandardSave(nest(flat_params(state))),
                     MODEL_CONFIG: ocp.args.JsonSave(cfg.to_hf_dict()), DATA: ocp.args.JsonSave(data),
                     TRAIN_CONFIG: ocp.args.JsonSave(train_config)}
            if self.save_optimizer:
                items[OPT_STATE] = ocp.args.StandardSave(list(jax.tree.leaves(opt_state)))
            saved = self.manager.save(step, force=force, args=ocp.args.Composite(**items))
        if saved:
            self._copy_tokenizer()
        return saved

    @contextlib.contextmanager
    def _reported(self, what: str):
        """Failures of the (asynchronous) checkpoint writers as one OutputError naming the directory: orbax
        reports one failed write from several threads, each with its own traceback (see `quiet_writer_noise`)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - classified here: every failure to write is an output error
            self._failed = True
            first = " ".join(str(e).split())
            raise OutputError(f"{self.directory}: {what} failed ({type(e).__name__}: {first[:300]}"
                              f"{' ...' if len(first) > 300 else ''})") from None

    def restore_latest(self, abstract_state: nnx.State, abstract_opt, shardings=None):
        """(step, state, opt_state, data) of the latest step that restores, or None without checkpoints.
        `shardings` = (state shardings, opt shardings) places the arrays (default: one local device)."""
        ocp = self._ocp
        steps = self.steps()
        for bad in self.incomplete():
            log.warning("%s: ignoring incomplete checkpoint %s (a save that did not finish)", self.directory, bad)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = (jax.tree.map(lambda _: device, abstract_state), jax.tree.map(lambda _: device, abstract_opt))
        target_state = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)
                        for (k, v), s in zip(flat_params(abstract_state).items(),
                                             flat_params(shardings[0]).values())}
        opt_leaves = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                      for x, s in zip(jax.tree.leaves(abstract_opt), jax.tree.leaves(shardings[1]))]
        errors = []
        for step in reversed(steps):
            if not self._has_optimizer_state(step):  # saved with save_optimizer: false — not damaged, not resumable
                raise CheckpointError(f"{self.directory}/{step} holds no optimizer state (saved with save_optimizer: "
                                      "false), so this run cannot be resumed exactly; its weights can start a new "
                                      f"run: --model {self.directory} --out NEW_DIR (its checkpoints were left as "
                                      "they are)")
            mismatch = self._structure_mismatch(step, target_state, opt_leaves)
            if mismatch:  # the command is wrong, not the checkpoint: refuse, touch nothing
                raise CheckpointError(f"{self.directory}/{step} holds another model or optimizer ({mismatch}); "
                                      "this run directory belongs to another run — choose another --out (its "
                                      "checkpoints were left as they are)")
            try:
                r = self.manager.restore(step, args=ocp.args.Composite(**{
                    PARAMS: ocp.args.StandardRestore(nest(target_state)),
                    OPT_STATE: ocp.args.StandardRestore(opt_leaves),
                    DATA: ocp.args.JsonRestore()}))
            except (PermissionError, MemoryError):  # not the checkpoint's fault
                raise
            except Exception as e:  # a damaged step: say so, set it aside, fall back to the one before
                errors.append(f"step {step}: {type(e).__name__}")
                aside = self._set_aside(step)
                log.warning("%s: checkpoint step %d cannot be restored (%s: %s); moved to %s, trying the "
                            "previous one", self.directory, step, type(e).__name__, str(e)[:200], aside)
                continue
            state = state_from_flat(abstract_state, flatten(r[PARAMS]))
            opt_state = jax.tree.unflatten(jax.tree.structure(abstract_opt), list(r[OPT_STATE]))
            return step, state, opt_state, dict(r[DATA])
        if steps:
            raise CheckpointError(f"{self.directory}: none of the checkpoint steps {steps} can be restored "
                                  f"({'; '.join(errors)}); refusing to restart from step 0 — move the directory "
                                  "away to start over")
        return None

    def _has_optimizer_state(self, step: int) -> bool:
        from etils import epath

        return (epath.Path(self.directory) / str(step) / OPT_STATE).exists()

    def _structure_mismatch(self, step: int, target_state: dict, opt_leaves: list) -> str | None:
        """How a step's saved parameter and optimizer trees differ from this run's (names, shapes), read from
        orbax's metadata without reading arrays; None when they agree or the metadata is unreadable (then
        the restore decides whether the step is damaged)."""
        from etils import epath

        ocp = self._ocp
        want = {PARAMS: {k: tuple(v.shape) for k, v in target_state.items()},
                OPT_STATE: {(str(i),): tuple(x.shape) for i, x in enumerate(opt_leaves)}}
        for item, expected in want.items():
            try:
                meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / item)
                tree = getattr(meta, "tree", meta)
                leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
            except Exception:  # noqa: BLE001 - unreadable metadata: the restore below classifies it
                return None
            have = {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
                    for path, leaf in leaves}
            if have.keys() != expected.keys():
                extra, missing = sorted(have.keys() - expected.keys()), sorted(expected.keys() - have.keys())
                return (f"{item}: {len(have)} arrays saved, {len(expected)} expected"
                        + (f"; e.g. saved {'/'.join(extra[0])}" if extra else "")
                        + (f"; e.g. missing {'/'.join(missing[0])}" if missing else ""))
            for k, shape in expected.items():
                if have[k] != shape:
                    return f"{item} {'/'.join(k)}: saved {have[k]}, this run has {shape}"
        return None

    def _set_aside(self, step: int) -> str:
        """Rename a damaged step so that it is neither tried again nor in the way of a new save of it."""
        from etils import epath

        src = epath.Path(self.directory) / str(step)
        dst = epath.Path(self.directory) / f"{step}.damaged-{int(time.time())}"
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"yarn_jax set aside step {step}")
        self.manager.reload()
        return dst.name

    def copy_tokenizer(self, tokenizer_dir: str | None) -> None:
        """The tokenizer files go beside the steps (readers of the root find them there) — with the first
        saved step, or now when steps exist (a resumed run)."""
        self._tokenizer_dir = tokenizer_dir
        if self.steps():
            self._copy_tokenizer()

    def _copy_tokenizer(self) -> None:
        if jax.process_index() == 0 and self._tokenizer_dir is not None:
            copy_tokenizer_files(self._tokenizer_dir, self.directory, overwrite=False)
        self._tokenizer_dir = None

    def wait(self) -> None:
        with self._reported("writing a checkpoint"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        try:
            with self._reported("writing a checkpoint"):
                self.manager.close()
        finally:
            # after a failed write, orbax's abandoned tasks keep reporting it until they are collected (at
            # exit): the filters stay then; after a clean run they go
            if self._previous_hook is not None and not self._failed:
                for name in _NOISY_LOGGERS:
                    logging.getLogger(name).removeFilter(_quiet_orbax_thread_errors)
                if sys.unraisablehook == self._unraisable:
                    sys.unraisablehook = self._previous_hook

    def quiet_writer_noise(self) -> None:
        """Until close() (for good once a write failed): a failed asynchronous write is reported once, by
        `_reported`; orbax's per-thread error logs, asyncio's reports of the same failure and tensorstore's
        uncatchable 'Event loop is closed' reports that follow it (`_unraisable`) are dropped."""
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).addFilter(_quiet_orbax_thread_errors)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

    def _unraisable(self, unraisable) -> None:
        """After a failed write, tensorstore's callbacks find orbax's event loops closed and each reports a
        RuntimeError nobody can catch; the failure itself is reported once (`_reported`)."""
        if unraisable.exc_type is RuntimeError and "Event loop is closed" in str(unraisable.exc_value):
            return
        self._previous_hook(unraisable)


_NOISY_LOGGERS = ("absl", "asyncio")


def _quiet_orbax_thread_errors(record: logging.LogRecord) -> bool:
    """Drop orbax's per-thread error tracebacks of a failed write, and asyncio's reports of the same
    failure in its write coroutines (TrainCheckpointer reports it once)."""
    if record.levelno < logging.ERROR:
        return True
    return not (f"{os.sep}orbax{os.sep}" in (record.pathname or "")
                or record.name == "asyncio" and "exception was never retrieved" in record.getMessage())
