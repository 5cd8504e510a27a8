"""yarn_jax checkpoints: an orbax CheckpointManager directory, one numbered step per save.

Layout (train.py writes more items per step; readers take what they need):
  ROOT/<step>/params/        the parameter tree {"layers": {"q_proj": [L, E, H, D], ...}, ...} (orbax standard)
  ROOT/<step>/model_config/  the model's HF config.json dict, carrying the rope configuration it uses
  ROOT/tokenizer.json        (and friends) the tokenizer, when the checkpoint was written with one
Paths may be local or anything orbax/etils can open (gs://...). Orbax only exposes a step once it is
complete, so a step interrupted mid-write is never picked up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath

from yarn_jax.checkpoint.layout import copy_tokenizer_files, np_dtype, read_checked, tensor_map
from yarn_jax.checkpoint.memory import release_host_memory
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError

PARAMS, MODEL_CONFIG = "params", "model_config"


def nest(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """{('layers', 'q_proj'): x} -> {'layers': {'q_proj': x}}."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value
    return out


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def absolute(path: str | os.PathLike):
    """An etils path, made absolute when local (orbax refuses relative checkpoint paths when reading)."""
    p = epath.Path(path)
    return p if "://" in os.fspath(path) else epath.Path(os.path.abspath(os.fspath(path)))


def _not_read_only_notice(record: logging.LogRecord) -> bool:
    """Drops orbax's notices that a read-only manager will not save or create anything (what we asked for)."""
    message = record.getMessage()
    return not ("read_only=True, setting" in message or message.startswith("Given directory is read only"))


def _manager(root: str | os.PathLike, **options):
    import orbax.checkpoint as ocp

    if options.get("read_only"):
        absl = logging.getLogger("absl")
        if _not_read_only_notice not in absl.filters:
            absl.addFilter(_not_read_only_notice)
    return ocp.CheckpointManager(os.fspath(absolute(root)), options=ocp.CheckpointManagerOptions(**options))


def is_orbax_root(path: str | os.PathLike) -> bool:
    """Whether path looks like a CheckpointManager root (numbered step directories)."""
    p = epath.Path(path)
    return p.is_dir() and any(c.name.isdigit() and (c / MODEL_CONFIG).exists() for c in p.iterdir())


def is_orbax_step(path: str | os.PathLike) -> bool:
    """Whether path is one step directory ROOT/<step> of a CheckpointManager root."""
    p = epath.Path(path)
    return p.is_dir() and p.name.isdigit() and is_orbax_root(p.parent)


def copy_tokenizer(tokenizer_dir, root) -> None:
    """Copy the tokenizer files of tokenizer_dir (if any) to a checkpoint root (etils paths)."""
    if tokenizer_dir is None:
        return
    epath.Path(root).mkdir(parents=True, exist_ok=True)
    copy_tokenizer_files(tokenizer_dir, root)


def save_orbax_checkpoint(root: str | os.PathLike, step: int, cfg: LlamaConfig,
                          params: Mapping[tuple[str, ...], Any], tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write params + model config as step `step` of the manager at root (blocking); the tokenizer files
    of tokenizer_dir, if given, are copied to ROOT (shared by all steps). `params` may be jax.Arrays sharded
    across processes: every process calls this and writes its own shards."""
    import orbax.checkpoint as ocp

    if jax.process_index() == 0:
        copy_tokenizer(tokenizer_dir, root)
    with _manager(root, create=True) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(nest(params)),
                                                   MODEL_CONFIG: ocp.args.JsonSave(cfg.to_hf_dict())}))
        mngr.wait_until_finished()


def write_orbax_streamed(root, cfg: LlamaConfig, read, *, step: int = 0, dtype: str = "float32",
                         tokenizer_dir=None, source: str = "source", progress=iter) -> None:
    """Fill a new CheckpointManager root (any etils path) with step `step` (params + model_config) and the
    tokenizer files, reading one parameter at a time through `read(layout)` (see checkpoint.hf.tensor_map).

    The params tree is written by orbax partial saves, one parameter per call, then finalized and put in
    the step as its `params` item: peak memory is one parameter, not the model. Single process."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.experimental.v1 import partial

    root = epath.Path(root)
    target = np_dtype(dtype)
    with _manager(root, create=True) as mngr:  # the step with its config; params are added below
        mngr.save(step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonSave(cfg.to_hf_dict())}))
        mngr.wait_until_finished()
    pending = root / f"{PARAMS}-partial"  # (orbax globs its pending saves: no leading dot)
    for t in progress(tensor_map(cfg)):
        # as a jax.Array (on CPU device_put aliases the numpy buffer): orbax then writes it with one staging
        # copy, where a numpy leaf costs two
        value = jax.device_put(read_checked(t, cfg, read, source).astype(target, copy=False))
        partial.save(os.fspath(pending), nest({t.path: value}))
        nbytes = value.nbytes
        del value
        release_host_memory(nbytes)
    partial.finalize(os.fspath(pending))
    (pending / "state").rename(root / str(step) / PARAMS)
    pending.rmtree()
    # record the params item in the step's metadata, as one CheckpointManager save of both items would
    meta_file = root / str(step) / "_CHECKPOINT_METADATA"
    meta = json.loads(meta_file.read_text())
    meta.setdefault("item_handlers", {})[PARAMS] = \
        "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"
    meta_file.write_text(json.dumps(meta))
    copy_tokenizer(tokenizer_dir, root)


def load_orbax_checkpoint(root: str | os.PathLike, step: int | None = None, *, target=None):
    """(LlamaConfig, {param path: array}) of a step (default: the latest complete one).

    Without `target`: numpy arrays on the host. With `target(cfg) -> {param path: jax.ShapeDtypeStruct
    with a sharding}`: each process reads only the shards its devices hold, straight into jax.Arrays of
    those shardings and dtypes (works across processes; every process must call it)."""
    import orbax.checkpoint as ocp

    with _manager(root, read_only=True) as mngr:
        step = _latest(mngr, root, step)
        config = mngr.restore(step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))
        cfg = LlamaConfig.from_hf_dict(config[MODEL_CONFIG], where=f"{root}/{step}/{MODEL_CONFIG}")
        if target is None:  # as saved, or onto one local device when another topology wrote it
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            item = ocp.args.StandardRestore(fallback_sharding=device)
        else:
            item = ocp.args.StandardRestore(nest(target(cfg)))
        restored = mngr.restore(step, args=ocp.args.Composite(**{PARAMS: item}))
    params = flatten(restored[PARAMS])
    return cfg, params if target is not None else {k: np.asarray(v) for k, v in params.items()}


def latest_step(root: str | os.PathLike) -> int:
    """The latest complete step of a CheckpointManager root (CheckpointError when there is none)."""
    with _manager(root, read_only=True) as mngr:
        return _latest(mngr, root, None)


def _latest(mngr, root, step: int | None) -> int:
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"{root}: no complete checkpoint step")
    step = max(steps) if step is None else step
    if step not in steps:
        raise CheckpointError(f"{root}: no step {step}; complete steps are {sorted(steps)}")
    return step


def check_param_shapes(cfg: LlamaConfig, root, step: int) -> None:
    """Every parameter the config implies is in the step's params tree with its shape (orbax metadata, no
    array read); raises CheckpointError naming the first that is missing or mis-shaped."""
    import orbax.checkpoint as ocp

    where = absolute(root) / str(step) / PARAMS
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(where)
    except Exception as e:  # orbax raises assorted types for a missing or unreadable tree
        raise CheckpointError(f"{where}: cannot read the parameter metadata ({e})") from None
    shapes = {k: tuple(v.shape) for k, v in flatten(dict(getattr(meta, "tree", meta))).items()}
    for t in tensor_map(cfg):
        want = t.our_shape(cfg.num_hidden_layers)
        if t.path not in shapes:
            raise CheckpointError(f"{where}: parameter {'/'.join(t.path)} is missing")
        if shapes[t.path] != want:
            raise CheckpointError(f"{where}: parameter {'/'.join(t.path)} has shape {shapes[t.path]}, expected "
                                  f"{want} from the config")


@contextlib.contextmanager
def open_orbax_params(root: str | os.PathLike, step: int | None = None):
    """Context: (LlamaConfig, read(param path, dtype=None) -> numpy array, the step) of a step (default: the
    latest complete one). Each read restores just that parameter (orbax partial restore), so a caller holds one
    at a time."""
    import orbax.checkpoint as ocp

    with _manager(root, read_only=True) as mngr:
        step = _latest(mngr, root, step)
        config = mngr.restore(step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))
        cfg = LlamaConfig.from_hf_dict(config[MODEL_CONFIG], where=f"{root}/{step}/{MODEL_CONFIG}")
        check_param_shapes(cfg, root, step)

        def read(path: tuple[str, ...], dtype=None) -> np.ndarray:
            args = ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)  # cast by orbax while reading
            item = ocp.args.PyTreeRestore(item=nest({path: 0}), restore_args=nest({path: args}),
                                          partial_restore=True)
            try:
                restored = mngr.restore(step, args=ocp.args.Composite(**{PARAMS: item}))
            except (KeyError, ValueError, FileNotFoundError) as e:
                raise CheckpointError(f"{root}/{step}/{PARAMS}: cannot read parameter {'/'.join(path)} ({e})") from None
            return np.asarray(flatten(restored[PARAMS])[path])

        yield cfg, read, step
