"""The pytest-benchmark suite of bench/ (``python -m pytest bench --benchmark-only``).

Each benchmark is one contender ("ember", "numpy", "torch", ...) of one figure; its group is the
figure and the thread count, so pytest-benchmark prints ember beside its peers in one table. The
workloads live in ``workloads.py``, shared with the scripts that print the README's tables.

Threads: ``--bench-threads N`` (or ``1,2`` to run every benchmark at each count; default: ember's
own default, which is OMP_NUM_THREADS or the CPUs this process may use). During a benchmark at N
threads, ember (``ember.set_num_threads``), PyTorch (``torch.set_num_threads``) and every thread
pool threadpoolctl finds (NumPy's OpenBLAS, OpenMP runtimes) all run N threads; the header says
which pools those are. Tests that take the ``bench_threads`` fixture (directly or through
``measure``) get this pinning.

``measure(case, who)`` is the fixture a test calls: it skips a contender that is not installed
(PyTorch), checks the contender's result against the float64 reference outside the timed
region, waits for the previous library's idle workers to sleep, and times the call.
"""
from __future__ import annotations

import os
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # workloads.py, for every test file (whatever pytest's import mode)
    sys.path.insert(0, _HERE)

import workloads  # noqa: E402

import ember  # noqa: E402


def pytest_addoption(parser):
    parser.getgroup("benchmark").addoption(
        "--bench-threads", default=None, metavar="N[,N...]",
        help="threads for ember, PyTorch and NumPy's BLAS alike (a comma list runs every "
             "benchmark at each count); default: ember's default thread count")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject turns warnings into errors; pytest-benchmark's warnings (a saved run's
    # machine_info differs from this one's, ...) are information for a comparison, not failures.
    config.addinivalue_line("filterwarnings",
                            "default::pytest_benchmark.logger.PytestBenchmarkWarning")
    _thread_counts(config)  # a bad --bench-threads stops here, once


def _thread_counts(config) -> list:
    raw = config.getoption("--bench-threads")
    if raw is None:
        return [ember.get_num_threads()]
    try:
        counts = [int(v) for v in str(raw).split(",") if v.strip()]
    except ValueError:
        raise pytest.UsageError(f"--bench-threads: expected N or N,N,... got {raw!r}") from None
    if not counts or min(counts) < 1:
        raise pytest.UsageError(f"--bench-threads: counts must be >= 1, got {raw!r}")
    return counts


def _benchmarks_enabled(config) -> bool:
    bs = getattr(config, "_benchmarksession", None)
    return bool(bs is not None and not bs.disabled and not bs.skip)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _pools() -> str:
    from threadpoolctl import threadpool_info
    found = [f"{p['internal_api']} {p.get('version') or '?'} ({p['user_api']}, {p['prefix']})"
             for p in threadpool_info()]
    return ", ".join(found) or "none loaded yet"


def pytest_report_header(config):
    counts = _thread_counts(config)
    torch = _version("torch")
    lines = [
        f"ember {ember.__version__} (CPU build {ember._cpu.isa()}, {ember.__file__}); "
        f"numpy {_version('numpy')}; torch {torch}"
        + ("" if torch != "not installed" else " (its cases skip)"),
        f"threads: {', '.join(map(str, counts))} -- ember.set_num_threads, "
        f"torch.set_num_threads and threadpoolctl.threadpool_limits on: {_pools()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs)",
    ]
    if _benchmarks_enabled(config):
        from ember.bench import core_check
        lines.append("before: " + core_check(max(counts)))
    return lines


def pytest_generate_tests(metafunc):
    if "bench_threads" in metafunc.fixturenames:
        counts = _thread_counts(metafunc.config)
        metafunc.parametrize("bench_threads", counts, indirect=True,
                             ids=[f"{n}thr" for n in counts])


@pytest.fixture
def bench_threads(request):
    """The thread count of this benchmark, pinned for ember, PyTorch (where installed) and every
    pool threadpoolctl sees, and put back afterwards."""
    from threadpoolctl import threadpool_limits
    n = request.param
    before = ember.get_num_threads()
    torch = workloads.torch_or_none()  # imported first, so that threadpoolctl sees its pools
    torch_before = torch.get_num_threads() if torch is not None else None
    ember.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        ember.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)


@pytest.fixture
def measure(benchmark, bench_threads):
    """``measure(case, who, rounds=None)``: check ``case``'s contender ``who`` once against the
    float64 reference, then time its call (``benchmark.pedantic`` with ``rounds`` fixed rounds
    when given). Returns the benchmark fixture's result."""
    def run(case: workloads.Case, who: str, rounds: int | None = None):
        if who.startswith("torch"):
            torch = pytest.importorskip("torch")
            torch.set_num_threads(bench_threads)
        if who not in case.calls:
            pytest.skip(f"{who} is not available here for {case.name!r}")
        benchmark.group = f"{case.name} @ {bench_threads} thr"
        benchmark.extra_info.update(contender=who, case=case.name, threads=bench_threads,
                                    work=case.work, unit=case.unit)
        case.check(who)  # also the warm-up: buffers, thread pools, page faults
        fn = case.prepare(who)
        if benchmark.enabled:
            time.sleep(workloads.SETTLE)
        if rounds is not None:
            return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
        return benchmark(fn)
    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["ember"] = {"version": ember.__version__, "isa": ember._cpu.isa(),
                             "threads": _thread_counts(config)}
    machine_info["peers"] = {"numpy": _version("numpy"), "torch": _version("torch")}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """After pytest-benchmark's tables: one line per figure, each peer's median over ember's
    (> 1: ember is faster), and the core check again."""
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not _benchmarks_enabled(config):
        return
    groups: dict = {}
    for b in bs.benchmarks:
        who = b.extra_info.get("contender") if b else None
        if who is not None:
            groups.setdefault(b.group, {})[who] = b.stats.median
    lines = []
    for group, med in groups.items():
        if "ember" not in med:
            continue
        peers = "; ".join(f"{who} {t / med['ember']:.2f}x" for who, t in med.items()
                          if who != "ember")
        lines.append(f"{group:<52} ember {med['ember'] * 1e6:10.1f} us  {peers}")
    if lines:
        terminalreporter.write_sep("-", "peer median / ember median (> 1: ember faster)")
        for line in lines:
            terminalreporter.write_line(line)
    from ember.bench import core_check
    terminalreporter.write_line("after: " + core_check(max(_thread_counts(config))))
