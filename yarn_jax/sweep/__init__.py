"""Ablation sweeps: grids of context-extension methods x scales x fine-tuning budgets x hyperparameters,
each cell fine-tuned (if asked) and evaluated, with combined tables and plots. `python -m yarn_jax.sweep`."""
