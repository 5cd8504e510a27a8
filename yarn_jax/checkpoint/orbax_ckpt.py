"""yarn_jax checkpoints: an orbax CheckpointManager directory, one numbered step per save.

Layout (train.py writes more items per step; readers take what they need):
  ROOT/<step>/params/        the parameter tree {"layers": {"q_proj": [L, E, H, D], ...}, ...} (orbax standard)
  ROOT/<step>/model_config/  the model's HF config.json dict, carrying the rope configuration it uses
  ROOT/tokenizer.json        (and friends) the tokenizer, when the checkpoint was written with one
Paths may be local or anything orbax/etils can open (gs://...). Orbax only exposes a step once it is
complete, so a step interrupted mid-write is never picked up.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError

PARAMS, MODEL_CONFIG = "params", "model_config"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


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


def _manager(root: str | os.PathLike, **options):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(os.fspath(root), options=ocp.CheckpointManagerOptions(**options))


def is_orbax_root(path: str | os.PathLike) -> bool:
    """Whether path looks like a CheckpointManager root (numbered step directories)."""
    from etils import epath

    p = epath.Path(path)
    return p.is_dir() and any(c.name.isdigit() and (c / MODEL_CONFIG).exists() for c in p.iterdir())


def is_orbax_step(path: str | os.PathLike) -> bool:
    """Whether path is one step directory ROOT/<step> of a CheckpointManager root."""
    from etils import epath

    p = epath.Path(path)
    return p.is_dir() and p.name.isdigit() and is_orbax_root(p.parent)


def save_orbax_checkpoint(root: str | os.PathLike, step: int, cfg: LlamaConfig,
                          params: Mapping[tuple[str, ...], Any], tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write params + model config as step `step` of the manager at root (blocking); the tokenizer files
    of tokenizer_dir, if given, are copied to ROOT (shared by all steps). `params` may be jax.Arrays sharded
    across processes: every process calls this and writes its own shards."""
    import orbax.checkpoint as ocp
    from etils import epath

    if tokenizer_dir is not None and jax.process_index() == 0:
        epath.Path(root).mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            src = epath.Path(tokenizer_dir) / name
            if src.exists():
                src.copy(epath.Path(root) / name, overwrite=True)
    with _manager(root, create=True) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(nest(params)),
                                                   MODEL_CONFIG: ocp.args.JsonSave(cfg.to_hf_dict())}))
        mngr.wait_until_finished()


def load_orbax_checkpoint(root: str | os.PathLike, step: int | None = None, *, target=None):
    """(LlamaConfig, {param path: array}) of a step (default: the latest complete one).

    Without `target`: numpy arrays on the host. With `target(cfg) -> {param path: jax.ShapeDtypeStruct
    with a sharding}`: each process reads only the shards its devices hold, straight into jax.Arrays of
    those shardings and dtypes (works across processes; every process must call it)."""
    import orbax.checkpoint as ocp

    with _manager(root, read_only=True) as mngr:
        steps = mngr.all_steps()
        if not steps:
            raise CheckpointError(f"{root}: no complete checkpoint step")
        step = max(steps) if step is None else step
        if step not in steps:
            raise CheckpointError(f"{root}: no step {step}; complete steps are {sorted(steps)}")
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
