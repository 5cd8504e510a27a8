"""Text in, tokens out, shared by evaluation, training and sweeps: `corpus.py` reads documents (the
Shakespeare corpus, text/JSONL files, TFDS) and tokenizes them; `packing.py` cuts them into training rows
and serves a resumable stream of batches."""
