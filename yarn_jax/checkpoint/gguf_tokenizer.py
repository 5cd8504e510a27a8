"""The tokenizer a GGUF file carries, as an HF fast tokenizer — without torch.

transformers builds it with `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, whose GGUF metadata reader
imports torch. Here the metadata comes from the `gguf` package's reader and is handed to transformers' own
converter (`convert_gguf_tokenizer`, torch-free), grouped under the same names transformers reads
(`GGUF_TOKENIZER_MAPPING`), so the saved `tokenizer.json` is the one the torch path writes
(tests/test_gguf_tokenizer.py compares the two byte for byte).
"""

from __future__ import annotations

import os
from pathlib import Path

from yarn_jax.checkpoint.gguf import gguf_reader
from yarn_jax.errors import CheckpointError

# tokenizer_config.json entry -> the GGUF metadata key of its token id (as transformers names them)
_SPECIAL_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                      "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def _metadata(path: Path) -> dict:
    """Every metadata key of the file as a Python value (strings, ints, floats, lists)."""
    reader = gguf_reader(path)
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def gguf_tokenizer(path: str | os.PathLike):
    """The file's tokenizer as transformers' `TokenizersBackend` (what `AutoTokenizer.from_pretrained(...,
    gguf_file=...)` returns for it), built from its `tokenizer.ggml.*` metadata and chat template."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    path = Path(path)
    metadata = _metadata(path)
    if "tokenizer.ggml.tokens" not in metadata:
        raise CheckpointError(f"{path}: GGUF metadata has no tokenizer (no 'tokenizer.ggml.tokens')")
    architecture = metadata.get("general.architecture")
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, config = grouped["tokenizer"], grouped["tokenizer_config"]
    kind = tokenizer_dict.get("tokenizer_type")
    if kind == "llama":  # transformers: llama.cpp adds BOS to a sentencepiece vocabulary unless told otherwise
        config.setdefault("add_bos_token", True)
    elif kind == "gemma4":  # transformers follows the reference tokenizer here: its chat template writes <bos>
        config["add_bos_token"] = False
    tokens = tokenizer_dict["tokens"]
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < len(tokens)):
            raise CheckpointError(f"{path}: GGUF metadata 'tokenizer.ggml.{key}'={token_id!r} is not a token id "
                                  f"of its {len(tokens)}-token vocabulary")
        config[name] = tokens[token_id] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    except (KeyError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: transformers cannot build a tokenizer from its GGUF metadata "
                              f"(tokenizer.ggml.model={kind!r}: {' '.join(str(e).split())[:200]})") from None
    return TokenizersBackend(tokenizer_object=backend, **config, **extra)


def save_gguf_tokenizer(path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Write the file's tokenizer into out_dir as HF tokenizer files (tokenizer.json, tokenizer_config.json,
    chat_template.jinja when the file has a chat template)."""
    gguf_tokenizer(path).save_pretrained(str(out_dir))
