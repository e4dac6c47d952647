"""Training process for the checkpoint crash tests (run as a script by test_checkpoint.py).

    python ckpt_worker.py RUN_DIR [--kill-at-step N] [--kill-in-save N]

Trains a small MLP with dropout, Adam, a cosine schedule, EarlyStopping and ReduceLROnPlateau,
checkpointing every 3 steps and every epoch, resuming from RUN_DIR/latest when it exists.
--kill-at-step sends SIGKILL to itself right after optimizer step N; --kill-in-save sends it
during the N-th file write of a checkpoint save (a torn save).
"""
import argparse
import os
import signal
import sys

import numpy as np

import ember
from ember import _io, checkpoint, nn
from ember.callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from ember.schedules import CosineWithWarmup


class KillAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, batch, logs):
        if self.trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def data():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 10)) * 2
    y = rng.integers(0, 4, 150)
    x = (centers[y] + rng.standard_normal((150, 10))).astype(np.float32)
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--kill-at-step", type=int)
    ap.add_argument("--kill-in-save", type=int)
    args = ap.parse_args()
    ember.set_num_threads(1)
    if args.kill_in_save:
        real = _io.write_file
        calls = [0]

        def torn(path, payload):
            calls[0] += 1
            if calls[0] == args.kill_in_save:
                data = b"".join(bytes(c) for c in ([payload] if isinstance(payload, bytes)
                                                   else payload))
                with open(path, "wb") as f:  # half a file, then die
                    f.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, payload)

        _io.write_file = torn  # every durable write of a save goes through it
    x, y = data()
    model = nn.MLP([10, 32, 32, 4], dropout=0.2, seed=1)
    callbacks = [EarlyStopping(patience=50, restore_best_weights=True),
                 ReduceLROnPlateau(patience=2, factor=0.5),
                 checkpoint.ModelCheckpoint(args.run_dir, every_n_steps=3, keep_last=2)]
    if args.kill_at_step:
        callbacks.append(KillAtStep(args.kill_at_step))
    trainer = ember.Trainer(model, optimizer="adam", lr=3e-3, callbacks=callbacks,
                            lr_schedule=CosineWithWarmup(total_steps=60, warmup_steps=5))
    trainer.fit(x, y, epochs=6, batch_size=16, validation_split=0.2, seed=7,
                checkpoint_dir=args.run_dir, resume="latest", verbose=0)
    print("done", trainer.global_step)


if __name__ == "__main__":
    sys.exit(main())
