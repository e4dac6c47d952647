"""The Trainer, by its first home: :class:`ember.Trainer` and :class:`History` live in
:mod:`ember.train` (the loop in ``train/trainer.py``); this module keeps ``from ember.trainer
import Trainer`` working.

Example:
    >>> from ember.trainer import Trainer
    >>> from ember.train import Trainer as Same
    >>> Trainer is Same
    True
"""
from ember.train.history import History
from ember.train.trainer import Trainer, load_trainer

__all__ = ["Trainer", "History", "load_trainer"]
