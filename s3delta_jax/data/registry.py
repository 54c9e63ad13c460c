"""Task lookup by name: the 14 GLUE/SuperGLUE tasks of the reference and the built-in "synthetic".

SuperGLUE tasks answer to their Hugging Face config name too ("rte" -> "superglue-rte", "boolq",
"cb", "copa", "multirc", "record", "wic"); the task keeps its reference name, which is its source prefix.
"""

from __future__ import annotations

from collections.abc import Iterable

from s3delta_jax.data.glue import FIXES, REFERENCE_TASKS, with_fixes
from s3delta_jax.data.synthetic import NAME as SYNTHETIC
from s3delta_jax.data.synthetic import make_synthetic_task
from s3delta_jax.data.tasks import Task

ALIASES = {task.hf_config: name for name, task in REFERENCE_TASKS.items() if name.startswith("superglue-")}


def task_names() -> tuple[str, ...]:
    return tuple(REFERENCE_TASKS) + (SYNTHETIC,)


def get_task(name: str, fix_reference_bugs: bool | Iterable[str] = False) -> Task:
    """The task called `name` (see `task_names()`, and `ALIASES`), in the reference's format by default.

    fix_reference_bugs: False keeps the reference's formats; True applies every fix in
      `glue.FIXES` that concerns this task; an iterable of fix names applies those ("stsb_rounding",
      "copa_question", "mnli_hypothesis_colon"), ignoring the ones that concern other tasks, so one
      setting can serve every task of a config.
    "synthetic" gives the built-in task with default sizes (`synthetic.make_synthetic_task` sets them).
    """
    if name == SYNTHETIC:
        return make_synthetic_task()
    name = ALIASES.get(name, name)
    if name not in REFERENCE_TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(task_names())} (or {', '.join(ALIASES)})")
    if isinstance(fix_reference_bugs, bool):
        fixes = frozenset(FIXES) if fix_reference_bugs else frozenset()
    elif isinstance(fix_reference_bugs, str):
        fixes = frozenset([fix_reference_bugs])
    else:
        fixes = frozenset(fix_reference_bugs)
    return with_fixes(REFERENCE_TASKS[name], fixes)
