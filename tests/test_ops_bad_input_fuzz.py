"""Every ember.ops function called with many random bad arguments, in a subprocess: each call must
raise TypeError or ValueError (or succeed, for odd but valid input), never crash the interpreter
or raise anything else."""
import json
import subprocess
import sys
import textwrap

from conftest import subprocess_env

SCRIPT = textwrap.dedent(r'''
    import json, random, traceback
    import numpy as np
    import ember.ops as ops

    rng = np.random.default_rng(0)
    random.seed(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    def bad_values():
        nan = f32(3, 4)
        nan[0, 0] = np.nan
        return [
            None, 0, -1, 1.5, -1e300, 2**70, -(2**70), float("nan"), float("inf"), True, "relu",
            "", b"x", [1.0, 2.0], [[1.0]], (), {}, object(), 1j,
            np.float64(0.5), np.int32(3), np.array(0.5, np.float32),
            f32(3, 4).astype(np.float64), f32(3, 4).astype(np.float16), np.ones((3, 4), np.int64),
            np.ones((3, 4), np.int32), np.ones((3, 4), bool), np.ones((3, 4), np.complex64),
            np.array([object()] * 4), np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
            np.zeros((3, 0), np.float32), f32(3), f32(4), f32(4, 3), f32(3, 4, 2), f32(1, 1),
            f32(3, 8)[:, ::2], f32(4, 3).T, read_only(f32(3, 4)), nan, np.full((3, 4), np.inf, np.float32),
            np.array([0, 1, 99]), np.array([-5, 0, 1]), np.array([0.0, 1.0, 2.0]),
            np.asmatrix(f32(3, 4)), f32(3, 4).astype(">f4"),
            np.frombuffer(np.zeros(13, np.float32).tobytes(), np.uint8)[1:49].view(np.float32).reshape(3, 4),
        ]

    def base_calls():
        x, w = f32(3, 4), f32(5, 4)
        y = np.array([0, 1, 2])
        p = [f32(5, 4), f32(5)]
        g = [f32(5, 4), f32(5)]
        return {
            "gemm": (ops.gemm, dict(a=x, b=f32(4, 5), trans_a=False, trans_b=False, bias=f32(5),
                                   activation="relu", negative_slope=0.01, alpha=1.0, beta=0.0,
                                   out=None, preact_out=None, save_preact=True, precision="fp32")),
            "matmul": (ops.matmul, dict(a=x, b=f32(4, 5), out=None)),
            "linear_forward": (ops.linear_forward, dict(x=x, weight=w, bias=f32(5), activation="gelu",
                                                       save_preact=False, out=None, precision="tf32")),
            "linear_backward": (ops.linear_backward, dict(
                grad_out=f32(3, 5), x=x, weight=w, preact=f32(3, 5), activation="relu",
                negative_slope=0.01, bias=True, need_grad_input=True, accumulate=False,
                grad_input=None, grad_weight=None, grad_bias=None, workspace=None, precision="fp32")),
            "activation_forward": (ops.activation_forward, dict(x=x, activation="silu",
                                                               negative_slope=0.01, out=None)),
            "activation_backward": (ops.activation_backward, dict(
                grad_out=x, preact=f32(3, 4), activation="tanh", negative_slope=0.01, out=None)),
            "softmax_cross_entropy": (ops.softmax_cross_entropy, dict(
                logits=x, labels=y, weight=np.ones(4, np.float32), label_smoothing=0.1,
                reduction="mean", grad_scale=1.0, compute_grad=True, grad=None, row_loss=None)),
            "mse": (ops.mse, dict(pred=x, target=f32(3, 4), reduction="sum", grad_scale=1.0,
                                  compute_grad=True, grad=None)),
            "argmax": (ops.argmax, dict(x=x, out=None)),
            "accuracy": (ops.accuracy, dict(logits=x, labels=y)),
            "column_sum": (ops.column_sum, dict(x=x, out=None, accumulate=False)),
            "gather_rows": (ops.gather_rows, dict(x=x, index=y, out=None)),
            "sum": (ops.sum, dict(x=x)),
            "global_norm": (ops.global_norm, dict(arrays=[x, w])),
            "dropout_forward": (ops.dropout_forward, dict(x=x, p=0.5, seed=1, offset=0, out=None)),
            "dropout_backward": (ops.dropout_backward, dict(grad_out=x, p=0.5, seed=1, offset=0, out=None)),
            "sgd_step": (ops.sgd_step, dict(params=p, grads=g, momentum_buffers=[f32(5, 4), f32(5)],
                                            lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                                            nesterov=False, maximize=False, step=1, max_grad_norm=None)),
            "adam_step": (ops.adam_step, dict(params=p, grads=g, exp_avgs=[f32(5, 4), f32(5)],
                                              exp_avg_sqs=[np.ones((5, 4), np.float32), np.ones(5, np.float32)],
                                              max_exp_avg_sqs=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                              weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False,
                                              maximize=False, step=1, max_grad_norm=1.0)),
            "adamw_step": (ops.adamw_step, dict(params=p, grads=g, exp_avgs=[f32(5, 4), f32(5)],
                                                exp_avg_sqs=[np.ones((5, 4), np.float32), np.ones(5, np.float32)],
                                                lr=1e-3, step=2)),
        }

    def call(fn, kw):
        args = dict(kw)
        names = list(args)
        # positional-or-keyword names first, as the signature lists them
        import inspect
        sig = inspect.signature(fn)
        pos = [n for n, prm in sig.parameters.items()
               if prm.kind is prm.POSITIONAL_OR_KEYWORD and n in args]
        return fn(*[args.pop(n) for n in pos], **args)

    report = {"calls": 0, "ok": 0, "rejected": 0, "runtime": {}, "unexpected": []}
    pool = bad_values()
    for name, (fn, kw) in base_calls().items():
        try:
            call(fn, kw)  # the baseline must be valid
            report["ok"] += 1
        except RuntimeError as e:
            report["runtime"].setdefault(name, str(e)[:120])
        except Exception as e:
            report["unexpected"].append(f"{name} baseline: {type(e).__name__}: {e}"[:300])
        for trial in range(250):
            fn, kw = base_calls()[name]
            for arg in random.sample(list(kw), k=min(len(kw), 1 if trial % 3 else 2)):
                bad = random.choice(pool)
                if isinstance(kw[arg], list) and kw[arg] and random.random() < 0.5:
                    lst = list(kw[arg])
                    lst[random.randrange(len(lst))] = bad
                    bad = lst if random.random() < 0.8 else lst[:1]
                kw[arg] = bad
            report["calls"] += 1
            try:
                call(fn, kw)
                report["ok"] += 1
            except (TypeError, ValueError):
                report["rejected"] += 1
            except RuntimeError as e:
                report["runtime"].setdefault(name, str(e)[:120])
            except Exception as e:
                report["unexpected"].append(
                    f"{name}({ {k: type(v).__name__ for k, v in kw.items()} }): "
                    f"{type(e).__name__}: {e}"[:300])
    print(json.dumps(report))
''')


def test_every_op_rejects_bad_input_without_crashing():
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["calls"] > 4000 and report["rejected"] > report["calls"] // 2, report
    assert not report["unexpected"], "\n".join(report["unexpected"][:30])
    assert not report["runtime"], f"RuntimeError from: {report['runtime']}"
