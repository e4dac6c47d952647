"""Training: the Trainer and what it is made of.

``trainer.py`` (the loop, one call per phase), ``state.py`` (what a Trainer's state is:
``state_dict`` / ``load_state_dict``, the epoch's running sums), ``steps.py`` (the training
step, chosen per fit), ``cuda_graph.py`` (GPU steps replayed as CUDA graphs), ``resume.py``
(continuing a run from a checkpoint), ``history.py`` and ``report.py`` (what the run says).
"""
from ember.train.history import History
from ember.train.state import EpochTally
from ember.train.trainer import Trainer, load_trainer

__all__ = ["Trainer", "History", "EpochTally", "load_trainer"]
