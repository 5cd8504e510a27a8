"""Evaluation: perplexity protocols, context-use curves and passkey retrieval (the library behind eval.py).

methods.py     method names at a scale factor -> HF-style rope dicts
perplexity.py  `truncate` and `sliding` protocols, per-token NLL, aggregation
passkey.py     the passkey prompt, trials and greedy decoding of one trial
tasks/         the runner's tasks (perplexity, passkey): cells, records, summaries, plots, tables
runner.py      one run: model, methods, the run directory, every task's cells, summary.json
"""
