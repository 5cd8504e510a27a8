"""Evaluation tasks behind the runner's seam (`base.Task`): each is one module. TASKS lists them in the
order they run; their names are their sections of summary.json and their CSV files."""

from yarn_jax.evaluation.tasks.base import Cell, RunContext, Task
from yarn_jax.evaluation.tasks.passkey import PasskeyTask
from yarn_jax.evaluation.tasks.perplexity import PerplexityTask
from yarn_jax.evaluation.tasks.ruler import RulerTask

TASKS: tuple[type[Task], ...] = (PerplexityTask, PasskeyTask, RulerTask)

__all__ = ["TASKS", "Task", "Cell", "RunContext", "PerplexityTask", "PasskeyTask", "RulerTask"]
