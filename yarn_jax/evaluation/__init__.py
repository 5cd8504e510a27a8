"""Evaluation: perplexity protocols, context-use curves and passkey retrieval (the library behind eval.py).

methods.py   method names at a scale factor -> HF-style rope dicts
data.py      documents from the Shakespeare corpus, text/JSONL files or TFDS, tokenized
perplexity.py  `truncate` and `sliding` protocols, per-token NLL, aggregation
"""
