"""Fine-tuning tasks: GLUE, SQuAD v1.1/v2.0, RACE and CoNLL-2003 NER (`make_task` picks one)."""

from __future__ import annotations

import ml_collections

from albert_jax.tasks.base import DataError, Features, Task
from albert_jax.tasks.glue import TASKS as GLUE_TASKS

TASK_NAMES = (*GLUE_TASKS, "squad", "race", "ner")


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The task that `config.task` names, built from the config's task keys."""
    name = config.task
    if name in GLUE_TASKS:
        from albert_jax.tasks.glue import GlueTask

        return GlueTask(name, config.data_dir or None)
    if name == "squad":
        from albert_jax.tasks.squad import SquadTask

        keys = ("doc_stride", "max_query_length", "n_best_size", "max_answer_length", "qa_head")
        options = {k: config[k] for k in (*keys, "null_score_diff_threshold")}
        return SquadTask(config.version, config.train_file or None, config.predict_file or None, **options)
    if name == "race":
        from albert_jax.tasks.race import RaceTask

        return RaceTask(config.data_dir or None, config.max_qa_length)
    if name == "ner":
        from albert_jax.tasks.ner import NerTask

        return NerTask(config.data_dir or None)
    raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")


__all__ = ["DataError", "Features", "TASK_NAMES", "Task", "make_task"]
