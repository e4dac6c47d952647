"""One fit, run by tests/test_distributed.py alone or under ``mpiexec -n N``; each rank writes
what the test compares into ``out``: ``rank<r>.npz`` (the final weights) and ``rank<r>.json``
(the weights' digest after every step, the history, test accuracy, the checkpoint writes it
made, the step path, the world size).

    python tests/mpi_worker.py '<json config>'
"""
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

cfg = json.loads(sys.argv[1])

from ember import Trainer, checkpoint, distributed  # noqa: E402
from ember.callbacks import Callback, ModelCheckpoint  # noqa: E402
from ember.datasets import load_digits  # noqa: E402
from ember.nn import MLP  # noqa: E402

rank = distributed.rank()
out = Path(cfg["out"])
out.mkdir(parents=True, exist_ok=True)

x, y = load_digits()
x = x.astype(np.float32)
n = cfg.get("n", 1450)  # (1450 at batch 100: an uneven last batch of 50)
x, y = x[:n], y[:n]
x_test, y_test = load_digits()[0][1500:].astype(np.float32), load_digits()[1][1500:]
if cfg.get("perturb_rank") == rank:  # another rank's data than rank 0's: must be refused
    x = x.copy()
    x[0, 0] += 1.0

writes = []
_write = checkpoint.write_checkpoint


def counting_write(*args, **kwargs):
    path = _write(*args, **kwargs)
    writes.append(str(path))
    return path


checkpoint.write_checkpoint = counting_write


def digest(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()[:16]


class Record(Callback):
    """The weights' digest after every step; optionally a pause (so a test can kill the run
    mid-way) or an error on one rank."""

    def __init__(self):
        self.digests = []

    def on_batch_end(self, batch, logs):
        self.digests.append(digest(self.trainer.model))
        if cfg.get("raise_at") == self.trainer.global_step and rank == cfg.get("raise_rank"):
            raise RuntimeError(f"a failure on rank {rank}")
        if cfg.get("die_at") == self.trainer.global_step and rank == cfg.get("die_rank"):
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.get("sleep"):
            time.sleep(cfg["sleep"])


record = Record()
callbacks = [record]
ckpt = cfg.get("checkpoint_dir")
if ckpt and cfg.get("every_n_steps"):
    callbacks.append(ModelCheckpoint(ckpt, every_n_steps=cfg["every_n_steps"], keep_last=100))
trainer = Trainer(MLP(cfg.get("sizes", [64, 48, 32, 10]), seed=1,
                      dropout=cfg.get("dropout", 0.0)),
                  optimizer="adam", lr=cfg.get("lr", 3e-3) * (2 if cfg.get("odd_lr_rank") == rank
                                                               else 1), callbacks=callbacks,
                  distributed=cfg.get("distributed", "auto"), device=cfg.get("device", "cpu"))
trainer.fused_steps = cfg.get("fused_steps", True)
history = trainer.fit(x, y, epochs=cfg.get("epochs", 3), batch_size=cfg.get("batch_size", 100),
                      validation_split=cfg.get("validation_split", 0.0), seed=3, verbose=0,
                      checkpoint_dir=ckpt, resume="latest" if cfg.get("resume") else None,
                      accumulate_steps=cfg.get("accumulate_steps", 1),
                      class_weight=cfg.get("class_weight"))
result = {"rank": rank, "size": distributed.size(), "digests": record.digests,
          "history": history.history, "grad_norms": history.grad_norms,
          "step_path": trainer.step_path,
          "accuracy": trainer.evaluate(x_test, y_test)["accuracy"], "writes": writes,
          "pid": os.getpid()}
np.savez(out / f"rank{rank}.npz", *[p.data for p in trainer.model.parameters()])
(out / f"rank{rank}.json").write_text(json.dumps(result, default=float))
