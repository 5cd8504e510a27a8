"""A small LLaMA trained from scratch for the sweeps' reproduction at laptop scale.

corpus -> (train/, heldout/) text directories -> a byte-level BPE tokenizer trained on train/ (tokenizers)
-> a randomly initialised HF directory (config.json + safetensors + tokenizer.json) -> pretraining at the
short context L0 with `yarn_jax.training.loop.train`. Every step writes into its own directory atomically
and is skipped when already there, so an interrupted setup resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from yarn_jax.checkpoint import write_hf_directory
from yarn_jax.config import LlamaConfig
from yarn_jax.data.corpus import iter_texts
from yarn_jax.errors import ConfigError
from yarn_jax.model import Llama, model_params
from yarn_jax.outputs import build_once

BOUNDARY = "<|endoftext|>"  # BOS and EOS of the small model (one id, as SmolLM2 / GPT-2 do)


def split_corpus(source: str, out: Path, heldout: list[str] | int) -> tuple[Path, Path]:
    """Write the documents of `source` as .txt files into out/train and out/heldout: `heldout` names the
    held-out documents, or (an int) takes the last N in source order. Returns (train_dir, heldout_dir)."""
    docs = list(iter_texts(source))
    names = [n for n, _ in docs]
    if isinstance(heldout, int):
        if not 0 < heldout < len(docs):
            raise ConfigError(f"scratch.heldout: {heldout} of {len(docs)} documents leaves no train or test set")
        held = set(names[-heldout:])
    else:
        missing = sorted(set(heldout) - set(names))
        if missing:
            raise ConfigError(f"scratch.heldout: no document named {missing} in {source!r} (have: {names})")
        held = set(heldout)

    def build(tmp: Path) -> None:
        for part in ("train", "heldout"):
            (tmp / part).mkdir()
        for name, text in docs:
            stem = name.replace("/", "__")
            (tmp / ("heldout" if name in held else "train") / f"{stem}.txt").write_text(text, encoding="utf-8")

    root = build_once(out, build)
    return root / "train", root / "heldout"


def train_tokenizer(train_dir: Path, out: Path, vocab_size: int) -> Path:
    """Byte-level BPE (tokenizers) trained on the .txt files of train_dir; out/tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def build(tmp: Path) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOUNDARY], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train(sorted(str(p) for p in train_dir.glob("*.txt")), trainer)
        tok.save(str(tmp / "tokenizer.json"))

    return build_once(out, build)


def init_model(out: Path, arch: dict, tokenizer_dir: Path, seed: int) -> Path:
    """A randomly initialised LLaMA as an HF directory (config.json from `arch`, HF field names)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    boundary = tok.token_to_id(BOUNDARY)
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
          "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "initializer_range": 0.02, **arch,
          "vocab_size": tok.get_vocab_size(), "bos_token_id": boundary, "eos_token_id": boundary}
    cfg = LlamaConfig.from_hf_dict(hf, where="scratch.model")

    def build(tmp: Path) -> None:  # (tmp: a staging directory moved into place once complete)
        params = {k: np.asarray(v) for k, v in model_params(Llama(cfg, rngs=nnx.Rngs(seed))).items()}
        write_hf_directory(tmp, cfg, lambda t: params[t.path], tokenizer_dir=tokenizer_dir)

    target = build_once(out, build)
    written = json.loads((target / "config.json").read_text())
    if written.get("hidden_size") != cfg.hidden_size or written.get("num_hidden_layers") != cfg.num_hidden_layers:
        raise ConfigError(f"{target}: holds a model of another shape than scratch.model; remove it or use another out")
    return target

