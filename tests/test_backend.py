import subprocess
import sys

import numpy as np
import pytest

import ember
from ember import backend


def test_info_reports_backends_and_threads():
    info = ember.info()
    assert info["version"] == ember.__version__
    cpu = info["backends"]["cpu"]
    assert cpu["built"] and cpu["usable"]
    assert cpu["isa"] in ("base", "x86-64-v3", "x86-64-v4")
    assert cpu["threads"] == ember.get_num_threads() >= 1
    cuda = info["backends"]["cuda"]
    assert cuda["usable"] == (len(cuda["devices"]) > 0)
    if not cuda["usable"]:
        assert cuda["reason"]


def test_set_num_threads_roundtrip():
    before = ember.get_num_threads()
    try:
        ember.set_num_threads(1)
        assert ember.get_num_threads() == 1
        ember.set_num_threads(2)
        assert ember.get_num_threads() == 2
    finally:
        ember.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects(bad):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        ember.set_num_threads(bad)


@pytest.mark.parametrize("too_many", [lambda lim: lim + 1, lambda lim: 32768, lambda lim: 65536,
                                      lambda lim: 2 ** 31, lambda lim: 2 ** 70])
def test_set_num_threads_refuses_more_than_the_bound(too_many):
    """Above the bound libgomp aborts (32768: thread creation failed) or crashes (65536) at the
    next kernel call; the count is refused up front and the pool left as it was."""
    import os
    limit = backend.max_num_threads()
    assert limit == max(256, 4 * (os.cpu_count() or 1))
    before = ember.get_num_threads()
    with pytest.raises(ValueError, match=rf"set_num_threads: n must be at most {limit}"):
        ember.set_num_threads(too_many(limit))
    assert ember.get_num_threads() == before


def test_resolve_device():
    assert backend.resolve_device("cpu") == "cpu"
    assert backend.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        backend.resolve_device("tpu")
    if not ember.cuda_available():
        with pytest.raises(ValueError, match="CUDA is not usable"):
            backend.resolve_device("cuda")


def test_cuda_module_imports_without_gpu():
    """The CUDA module is built whenever nvcc is found and must import on a GPU-less machine."""
    if not backend.cuda_built():
        pytest.skip("built without CUDA (nvcc not found at build time)")
    from ember import _cuda
    n, why = _cuda.device_count()
    assert n >= 0
    assert _cuda.runtime_version() >= 12000
    if n == 0:
        assert why


def test_isa_override_in_subprocess():
    code = "import ember; print(ember.info()['backends']['cpu']['isa'])"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__('os').environ,
                         "EMBER_ISA": "base"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "base"


def test_ops_rejects_non_arrays():
    with pytest.raises(TypeError, match="gemm: a must be a numpy.ndarray or a CUDA array"):
        ember.ops.gemm([[1.0]], np.ones((1, 1), np.float32))


# A child Python in which ember's CUDA module was never built: the import system finds no
# ember._cuda (as on the default build of a machine without a GPU).
_WITHOUT_CUDA = r'''
import sys
class _Hide:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name == "ember._cuda":
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
import json
import ember
from ember import backend
out = {"built": backend.cuda_built(), "reason": ember.info()["backends"]["cuda"]["reason"]}
try:
    import ember._cuda_ops
except ImportError as exc:
    out["import"] = [type(exc).__name__, str(exc)]
try:
    backend.resolve_device("cuda")
except ValueError as exc:
    out["device"] = str(exc)
print(json.dumps(out))
'''


def test_a_build_without_cuda_says_so_and_how_to_build_it():
    """Without the CUDA module, ember says it was built without CUDA and how to build with it
    (it said "cannot import name '_cuda' from partially initialized module 'ember' (most likely
    due to a circular import)")."""
    import json
    import subprocess
    import sys

    from conftest import subprocess_env
    res = subprocess.run([sys.executable, "-c", _WITHOUT_CUDA], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["built"] is False
    for text in (out["reason"], out["import"][1], out["device"]):
        assert "built without CUDA" in text and "EMBER_CUDA=ON" in text, text
        assert "circular" not in text and "partially initialized" not in text, text
    assert out["import"][0] == "ModuleNotFoundError"  # so pytest.importorskip skips on it
