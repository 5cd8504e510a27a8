"""Checkpoints: HF directories (safetensors), GGUF files and yarn_jax (orbax) checkpoints.

Reading: `open_checkpoint(path, step=None) -> Source` for every format (`source.py`; the format is
decided by `checkpoint_format` alone), `load_checkpoint` (the whole model as host arrays) and
`read_config`. Writing: `hf.write_hf_directory` (streamed; `save_hf_checkpoint` for arrays in memory)
and `orbax_ckpt`. `layout.py` holds what every format shares: the tensor layout, checks, dtypes and
tokenizer files.
"""

from yarn_jax.checkpoint.hf import save_hf_checkpoint, write_hf_directory
from yarn_jax.checkpoint.orbax_ckpt import save_orbax_checkpoint, write_orbax_streamed
from yarn_jax.checkpoint.source import (FORMATS, Source, checkpoint_format, load_checkpoint, open_checkpoint,
                                        read_config)

__all__ = ["open_checkpoint", "Source", "checkpoint_format", "FORMATS", "load_checkpoint", "read_config",
           "save_hf_checkpoint", "write_hf_directory", "save_orbax_checkpoint", "write_orbax_streamed"]
