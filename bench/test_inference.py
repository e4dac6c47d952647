"""Inference on pytest-benchmark: ember's frozen predictor beside onnxruntime and PyTorch eager
(the figures of bench_inference.py, from its own make_peers and check_peers), at batch 1 and
4096. Run: ``python -m pytest bench/test_inference.py --benchmark-only``."""
from __future__ import annotations

import numpy as np
import pytest

import bench_inference as bi

_PEERS: dict = {}


@pytest.fixture(scope="module")
def tmpdir_onnx(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx"))


def _peers(label, threads, tmpdir):
    key = (label, threads)
    if key not in _PEERS:
        peers = bi.make_peers(bi.MODELS[label], threads, tmpdir)
        bi.check_peers(peers, bi.MODELS[label][0], np.random.default_rng(0))
        _PEERS[key] = peers
    return _PEERS[key]


@pytest.mark.parametrize("batch", [1, 4096])
@pytest.mark.parametrize("label", list(bi.MODELS))
@pytest.mark.parametrize("who", ["ember", "onnxruntime", "pytorch"])
def test_predict(benchmark, bench_threads, tmpdir_onnx, label, batch, who):
    if who == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    if who == "pytorch":
        pytest.importorskip("torch")
    peers = _peers(label, bench_threads, tmpdir_onnx)
    f = peers[who]
    x = np.random.default_rng(1).standard_normal((batch, bi.MODELS[label][0])).astype(np.float32)
    np.testing.assert_allclose(f(x), peers["ember"](x), rtol=1e-4, atol=1e-4)
    benchmark.group = f"predict {label} batch {batch} @ {bench_threads} thr"
    benchmark.extra_info.update(contender=who, threads=bench_threads, batch=batch)
    if batch > 1:
        benchmark.pedantic(f, args=(x,), rounds=5, warmup_rounds=1)
    else:
        benchmark(f, x)
