// ember's CPU thread pool (csrc/cpu/dispatch.cpp), used by every parallel kernel instead of
// OpenMP regions.
//
// A parallel call is split into a fixed number of tasks that depends only on the problem and on
// set_num_threads (never on which threads turn up), and each task is claimed from a shared
// counter by whichever thread gets to it first: the calling thread claims tasks too, so a worker
// that is descheduled (the cores are shared with other processes) delays nothing it has not
// started, and results are the same bits whoever runs which task. Idle workers spin for a short
// while (~0.2 ms) and then sleep on a futex; a spin that finds itself preempted sleeps at once.
// When the workers keep arriving late (cores busy elsewhere), calls run on the calling thread
// alone for a few milliseconds and then try the pool again. See bench/notes/cpu.md.
#pragma once
#include <cstdint>
#include <type_traits>

namespace ember::cpu {

using TaskFn = void (*)(void* ctx, int task);

// Calls fn(ctx, t) once for every t in [0, tasks), on the calling thread and the pool's workers,
// and returns when all have returned. An exception thrown by a task is rethrown here (the first
// one; the other tasks still run). Inside a task, parallel_run runs its tasks on the calling
// thread, in order.
void parallel_run(int tasks, TaskFn fn, void* ctx);

// The thread count set_num_threads set (OMP_NUM_THREADS or the CPUs this process may use, at
// first); task splits are computed from it.
int pool_threads();

// True inside a task of parallel_run (the analogue of omp_in_parallel()).
bool pool_in_task();

namespace {  // internal linkage: each instruction-set build keeps its own copies

// f(t) for t in [0, tasks) through parallel_run.
template <class F>
inline void parallel_tasks(int tasks, F&& f) {
  using Fn = typename std::remove_reference<F>::type;
  parallel_run(tasks, [](void* c, int t) { (*static_cast<Fn*>(c))(t); },
               const_cast<void*>(static_cast<const void*>(&f)));
}

// body(lo, hi) over [0, n) in contiguous ranges, one per thread (what `omp parallel for
// schedule(static)` gives each thread), or once over [0, n) when !parallel or one thread.
template <class F>
inline void parallel_for(int64_t n, bool parallel, F&& body) {
  if (n <= 0) return;
  const int threads = pool_threads();
  const int parts = parallel && threads > 1 && !pool_in_task()
                        ? int(n < int64_t(threads) ? n : int64_t(threads))
                        : 1;
  if (parts <= 1) {
    body(int64_t(0), n);
    return;
  }
  parallel_tasks(parts, [&](int t) { body(n * t / parts, n * (t + 1) / parts); });
}

}  // namespace
}  // namespace ember::cpu
