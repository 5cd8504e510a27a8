"""What a checkpoint holds, whatever its format: the per-tensor layout (our parameter path <-> HF tensor name,
shape and transposition), the checks on names, shapes and values, the dtypes written, and the files beside
the weights (tokenizer files; which directories are checkpoints that `--overwrite` may replace).

Every reader (HF, GGUF, orbax) and writer goes through these tables; none defines its own.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath

from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, ConfigError, OutputError
from yarn_jax.outputs import is_link

Path_ = tuple[str, ...]  # a parameter's path in the model, e.g. ("layers", "q_proj")

# Buffers some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# The tokenizer files copied along with the weights (HF directories, and the root of a yarn_jax checkpoint).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
# Files besides weights and tokenizer files that a checkpoint directory `--overwrite` may replace holds.
_HF_EXTRA = {"config.json", "model.safetensors.index.json", "vocab.json", "merges.txt", "tokenizer.model",
             "added_tokens.json", "conversion.json"}
_ORBAX_EXTRA = {"conversion.json"}


class Layout(NamedTuple):
    """One tensor: our param path, HF name (`{i}` = layer index), HF shape, and how ours derives from it:
    ours = hf.reshape(view).transpose(perm) (HF's nn.Linear [out, in] transposed, heads split out).
    `part` = (start, stop): the parameter is those rows of a fused HF tensor (Phi-3's qkv_proj, gate_up_proj);
    `hf_shape` is then the whole fused tensor's."""

    path: Path_
    name: str
    hf_shape: tuple[int, ...]
    view: tuple[int, ...]
    perm: tuple[int, ...]
    part: tuple[int, int] | None = None

    @property
    def part_shape(self) -> tuple[int, ...]:
        """The shape of this parameter's rows of the HF tensor (the whole tensor's when not fused)."""
        return self.hf_shape if self.part is None else (self.part[1] - self.part[0],) + self.hf_shape[1:]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name

    def hf_names(self, num_layers: int) -> list[tuple[int | None, str]]:
        """[(layer, HF tensor name)]: one per layer for a per-layer parameter, else [(None, name)]."""
        if not self.per_layer:
            return [(None, self.name)]
        return [(i, self.name.format(i=i)) for i in range(num_layers)]

    def our_shape(self, num_layers: int) -> tuple[int, ...]:
        """Our parameter's shape ([L, ...] for per-layer ones)."""
        shape = tuple(self.view[p] for p in self.perm)
        return (num_layers,) + shape if self.per_layer else shape

    def to_ours(self, w: np.ndarray) -> np.ndarray:
        """The whole HF tensor -> our parameter (of one layer)."""
        if self.part is not None:
            w = w[self.part[0]:self.part[1]]
        return w.reshape(self.view).transpose(self.perm)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        """Our parameter (of one layer) -> its rows of the HF tensor (the whole tensor when not fused)."""
        return a.transpose(np.argsort(self.perm)).reshape(self.part_shape)

    def read(self, tensor, index: tuple[slice, ...]) -> np.ndarray:
        """ours[index] reading only the HF rows/columns it needs from `tensor` (anything sliceable like a
        safetensors slice). A view dim split out of an HF dim (heads out of heads*head_dim) is read as the
        contiguous range of its first part; later parts are cut in memory."""
        view_index = [slice(None)] * len(self.view)
        for i, p in enumerate(self.perm):
            view_index[p] = index[i]
        hf_index, fine, local_view, v = [], [], [], 0
        for size in self.part_shape:
            group = [v]
            while np.prod([self.view[g] for g in group]) < size:
                group.append(group[-1] + 1)
            v = group[-1] + 1
            rest = int(np.prod([self.view[g] for g in group[1:]]))
            start, stop, _ = view_index[group[0]].indices(self.view[group[0]])
            hf_index.append(slice(start * rest, stop * rest))
            local_view += [stop - start] + [self.view[g] for g in group[1:]]
            fine += [slice(None)] + [view_index[g] for g in group[1:]]
        if self.part is not None:  # rows of a fused tensor
            hf_index[0] = slice(hf_index[0].start + self.part[0], hf_index[0].stop + self.part[0])
        block = np.asarray(tensor[tuple(hf_index)]).reshape(local_view)
        return block[tuple(fine)].transpose(self.perm)


def tensor_map(cfg: LlamaConfig) -> list[Layout]:
    """The layout of every tensor of a config's checkpoint."""
    e, h, k, d, f, v = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    qkv = {"q": ("model.layers.{i}.self_attn.q_proj.weight", (h * d, e), None),
           "k": ("model.layers.{i}.self_attn.k_proj.weight", (k * d, e), None),
           "v": ("model.layers.{i}.self_attn.v_proj.weight", (k * d, e), None)}
    mlp = {"gate": ("model.layers.{i}.mlp.gate_proj.weight", (f, e), None),
           "up": ("model.layers.{i}.mlp.up_proj.weight", (f, e), None)}
    if cfg.fused_projections:  # Phi-3: one qkv_proj [(H + 2K) D, E] and one gate_up_proj [2F, E]
        fused, full = "model.layers.{i}.self_attn.qkv_proj.weight", ((h + 2 * k) * d, e)
        qkv = {"q": (fused, full, (0, h * d)), "k": (fused, full, (h * d, (h + k) * d)),
               "v": (fused, full, ((h + k) * d, (h + 2 * k) * d))}
        fused, full = "model.layers.{i}.mlp.gate_up_proj.weight", (2 * f, e)
        mlp = {"gate": (fused, full, (0, f)), "up": (fused, full, (f, 2 * f))}
    rows = [
        Layout(("embed_tokens",), "model.embed_tokens.weight", (v, e), (v, e), (0, 1)),
        Layout(("final_norm", "weight"), "model.norm.weight", (e,), (e,), (0,)),
        Layout(("layers", "post_attention_norm", "weight"), "model.layers.{i}.post_attention_layernorm.weight",
               (e,), (e,), (0,)),
        # q [H*D, E] -> [E, H, D]; o [E, H*D] -> [H, D, E]; MLP [out, in] -> [in, out]
        Layout(("layers", "q_proj"), qkv["q"][0], qkv["q"][1], (h, d, e), (2, 0, 1), qkv["q"][2]),
        Layout(("layers", "k_proj"), qkv["k"][0], qkv["k"][1], (k, d, e), (2, 0, 1), qkv["k"][2]),
        Layout(("layers", "v_proj"), qkv["v"][0], qkv["v"][1], (k, d, e), (2, 0, 1), qkv["v"][2]),
        Layout(("layers", "o_proj"), "model.layers.{i}.self_attn.o_proj.weight", (e, h * d), (e, h, d), (1, 2, 0)),
        Layout(("layers", "gate_proj"), mlp["gate"][0], mlp["gate"][1], (f, e), (1, 0), mlp["gate"][2]),
        Layout(("layers", "up_proj"), mlp["up"][0], mlp["up"][1], (f, e), (1, 0), mlp["up"][2]),
        Layout(("layers", "down_proj"), "model.layers.{i}.mlp.down_proj.weight", (e, f), (e, f), (1, 0)),
    ]
    # the features a family turns on (families/): biases on the projections, per-head q/k norms
    if cfg.qkv_bias:
        rows += [Layout(("layers", f"{x}_bias"), f"model.layers.{{i}}.self_attn.{x}_proj.bias", (n * d,), (n, d), (0, 1))
                 for x, n in (("q", h), ("k", k), ("v", k))]
    if cfg.o_bias:
        rows.append(Layout(("layers", "o_bias"), "model.layers.{i}.self_attn.o_proj.bias", (e,), (e,), (0,)))
    # pre-norm (LLaMA): a norm on the attention's input; post-norm (OLMo): one on the MLP's output instead
    rows.append(Layout(("layers", "post_feedforward_norm", "weight"), "model.layers.{i}.post_feedforward_layernorm.weight",
                       (e,), (e,), (0,)) if cfg.post_norm else
                Layout(("layers", "input_norm", "weight"), "model.layers.{i}.input_layernorm.weight", (e,), (e,), (0,)))
    if cfg.qk_norm == "head":
        rows += [Layout(("layers", f"{x}_norm", "weight"), f"model.layers.{{i}}.self_attn.{x}_norm.weight", (d,), (d,),
                        (0,)) for x in ("q", "k")]
    elif cfg.qk_norm == "projection":
        rows += [Layout(("layers", f"{x}_norm", "weight"), f"model.layers.{{i}}.self_attn.{x}_norm.weight", (n * d,),
                        (n, d), (0, 1)) for x, n in (("q", h), ("k", k))]
    if not cfg.tie_word_embeddings:
        rows.append(Layout(("lm_head",), "lm_head.weight", (v, e), (v, e), (1, 0)))
    return rows


def expected_hf_names(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    return {name: t.hf_shape for t in tensor_map(cfg) for _, name in t.hf_names(cfg.num_hidden_layers)}


def check_tensor_names(cfg: LlamaConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected or mis-shaped tensors."""
    expected = expected_hf_names(cfg)
    present = {n for n in shapes if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} in all)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)")
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, "
                                  f"expected {tuple(shape)} from the config")


class HFTensors:
    """Collects each parameter's HF pieces and hands out whole HF tensors: a plain tensor at once, a fused
    one (Phi-3's qkv_proj, gate_up_proj) when its last part arrives, its parts in row order. The parts of a
    fused tensor are consecutive in `tensor_map`, so tensors come out in the map's order of names."""

    def __init__(self, cfg: LlamaConfig):
        self.cfg = cfg
        self.parts = {}
        for t in tensor_map(cfg):
            if t.part is not None:
                self.parts[t.name] = self.parts.get(t.name, 0) + 1
        self.pending: dict[str, list] = {}

    def add(self, t: Layout, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Our parameter `value` (stacked over layers when per-layer) -> the HF tensors it completes."""
        out = []
        for i, name in t.hf_names(self.cfg.num_hidden_layers):
            piece = t.to_hf(value if i is None else value[i])
            if t.part is None:
                out.append((name, piece))
                continue
            got = self.pending.setdefault(name, [])
            got.append((t.part[0], piece))
            if len(got) == self.parts[t.name]:
                del self.pending[name]
                out.append((name, np.concatenate([p for _, p in sorted(got, key=lambda x: x[0])])))
        return out


def params_to_hf(cfg: LlamaConfig, params: Mapping[Path_, np.ndarray]) -> dict[str, np.ndarray]:
    """Our params -> HF-named tensors (contiguous numpy arrays)."""
    tensors = HFTensors(cfg)
    return {name: np.ascontiguousarray(x) for t in tensor_map(cfg)
            for name, x in tensors.add(t, np.asarray(params[t.path]))}


SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def np_dtype(name: str) -> np.dtype:
    """float32 / bfloat16 / float16 -> numpy dtype (bfloat16 from ml_dtypes)."""
    if name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"dtype {name!r}: choose one of {', '.join(SAFETENSORS_DTYPES)}")
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def read_checked(t: Layout, cfg: LlamaConfig, read: Callable[[Layout], np.ndarray], source: str) -> np.ndarray:
    """read(t), its shape checked against the config and its values finite (the error names the parameter
    and the source)."""
    value = read(t)
    want = t.our_shape(cfg.num_hidden_layers)
    if tuple(value.shape) != want:
        raise CheckpointError(f"{source}: parameter {'/'.join(t.path)} has shape {tuple(value.shape)}, expected "
                              f"{want} from the config")
    check_finite(value, "/".join(t.path), source)
    return value


def check_finite(value, name: str, source: str) -> None:
    """Raise CheckpointError when a tensor (numpy, or a jax.Array possibly sharded across processes) holds
    NaN or inf — a damaged checkpoint; the error names the parameter, the source and the count."""
    if not jnp.issubdtype(value.dtype, jnp.floating):
        return
    if isinstance(value, np.ndarray):
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    else:  # reduced where the shards live; the count is replicated
        bad = int(value.size - jnp.isfinite(value).sum())
    if bad:
        raise CheckpointError(f"{source}: parameter {name} holds {bad} NaN/inf value(s) of {value.size}; the "
                              "checkpoint is damaged")


def copy_tokenizer_files(tokenizer_dir, directory, names: Iterable[str] = TOKENIZER_FILES,
                         overwrite: bool = True) -> None:
    """Copy the tokenizer files among `names` that tokenizer_dir has (if given) into directory (etils paths:
    local or gs://...); with overwrite=False, files already there are kept."""
    if tokenizer_dir is None:
        return
    for fname in names:
        src, dst = epath.Path(tokenizer_dir) / fname, epath.Path(directory) / fname
        if src.exists() and (overwrite or not dst.exists()):
            try:
                src.copy(dst, overwrite=overwrite)
            except OSError as e:  # name the file being written (the OSError names the source)
                raise OutputError(f"{dst}: cannot write ({e.strerror or e})") from None


def checkpoint_kind(path) -> str | None:
    """'empty' | 'hf' | 'orbax' when `path` is a directory `--overwrite` may replace, else None."""
    hf_members, orbax_members = _HF_EXTRA | set(TOKENIZER_FILES), _ORBAX_EXTRA | set(TOKENIZER_FILES)
    p = epath.Path(path)
    if not p.is_dir() or is_link(p):
        return None
    names = [c.name for c in p.iterdir()]
    if not names:
        return "empty"
    unknown = [n for n in names if n not in hf_members and not n.endswith(".safetensors")]
    if "config.json" in names and not unknown and any(n.endswith(".safetensors") for n in names):
        return "hf"
    steps = [n for n in names if n.isdigit()]
    unknown = [n for n in names if n not in orbax_members and not n.isdigit()
               and not (n.split(".")[0].isdigit() and ("tmp" in n or "damaged" in n))]
    if steps and not unknown and all((p / s / "model_config").exists() or not any((p / s).iterdir()) for s in steps):
        return "orbax"
    return None


def check_replaceable(dst, flag: str = "--overwrite") -> str:
    """The kind of an existing `dst` that `flag` may replace; anything else is refused, naming its content."""
    p = epath.Path(dst)
    if is_link(p) or (p.exists() and not p.is_dir()):
        raise ConfigError(f"{dst}: exists and is not a directory; {flag} replaces only a checkpoint directory "
                          "(or an empty one)")
    kind = checkpoint_kind(p)
    if kind is None:
        names = sorted(c.name for c in p.iterdir())
        raise ConfigError(f"{dst}: holds {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}, which is not a "
                          f"checkpoint yarn_jax recognises; {flag} replaces only an HF checkpoint directory, a "
                          "yarn_jax checkpoint root or an empty directory — remove it yourself or choose another path")
    return kind


