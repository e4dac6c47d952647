// Run-time choice of the CPU kernel build: every kernel source is compiled for baseline x86-64,
// x86-64-v3 (AVX2/FMA) and x86-64-v4 (AVX-512); this file picks the best one the processor and OS
// support, once, and forwards each call. EMBER_ISA=base|v3|v4 in the environment overrides it.
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#include "ember/cpu.h"
#include "ember/pool.h"

namespace ember::cpu::base {
#include "ember/cpu_kernels.inc"
}
#if EMBER_X86
namespace ember::cpu::v3 {
#include "ember/cpu_kernels.inc"
}
namespace ember::cpu::v4 {
#include "ember/cpu_kernels.inc"
}
#endif

namespace ember::cpu {
namespace {

int supported_level() {
#if EMBER_X86
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
  return v4 ? 4 : v3 ? 3 : 0;
#else
  return 0;
#endif
}

int parse_level(const char* name) {
  if (std::strcmp(name, "base") == 0) return 0;
  if (std::strcmp(name, "v3") == 0) return 3;
  if (std::strcmp(name, "v4") == 0) return 4;
  return -1;
}

int initial_level() {
  const int best = supported_level();
  const char* env = std::getenv("EMBER_ISA");
  if (env != nullptr && *env != '\0') {
    const int wanted = parse_level(env);
    if (wanted >= 0 && wanted <= best) return wanted;
  }
  return best;
}

int g_level = initial_level();

}  // namespace

const char* isa_name() {
  switch (g_level) {
    case 4: return "x86-64-v4";
    case 3: return "x86-64-v3";
    default: return "base";
  }
}

bool set_isa(const char* name) {
  const int wanted = parse_level(name);
  if (wanted < 0 || wanted > supported_level()) return false;
  g_level = wanted;
  return true;
}


#if EMBER_X86
#define EMBER_DISPATCH(fn, ...)                          \
  switch (g_level) {                                     \
    case 4: return v4::fn(__VA_ARGS__);                  \
    case 3: return v3::fn(__VA_ARGS__);                  \
    default: return base::fn(__VA_ARGS__);               \
  }
#else
#define EMBER_DISPATCH(fn, ...) return base::fn(__VA_ARGS__);
#endif

void gemm(const GemmArgs& a) { EMBER_DISPATCH(gemm, a) }
void linear_backward(const LinearBackwardArgs& a) { EMBER_DISPATCH(linear_backward, a) }
int64_t gemm_packed_b_size(int64_t n, int64_t k) { EMBER_DISPATCH(gemm_packed_b_size, n, k) }
void gemm_pack_b(int64_t n, int64_t k, const float* b, int64_t ldb, bool trans_b, float* dst) {
  EMBER_DISPATCH(gemm_pack_b, n, k, b, ldb, trans_b, dst)
}
void activation_forward(int64_t n, const float* x, float* y, Activation act, float param) {
  EMBER_DISPATCH(activation_forward, n, x, y, act, param)
}
void activation_backward(int64_t n, const float* g, const float* z, float* gi, Activation act,
                         float param) {
  EMBER_DISPATCH(activation_backward, n, g, z, gi, act, param)
}
double softmax_cross_entropy(const SoftmaxCrossEntropyArgs& a) {
  EMBER_DISPATCH(softmax_cross_entropy, a)
}
double mse(int64_t n, const float* p, const float* t, float* g, Reduction r, float s) {
  EMBER_DISPATCH(mse, n, p, t, g, r, s)
}
void argmax_rows(int64_t rows, int64_t cols, const float* x, int64_t* out) {
  EMBER_DISPATCH(argmax_rows, rows, cols, x, out)
}
int64_t count_correct(int64_t rows, int64_t cols, const float* logits, const int64_t* labels) {
  EMBER_DISPATCH(count_correct, rows, cols, logits, labels)
}
void column_sum(int64_t rows, int64_t cols, const float* x, float* out, bool accumulate) {
  EMBER_DISPATCH(column_sum, rows, cols, x, out, accumulate)
}
double sum(int64_t n, const float* x) { EMBER_DISPATCH(sum, n, x) }
double sum_squares(int64_t count, const float* const* t, const int64_t* sizes) {
  EMBER_DISPATCH(sum_squares, count, t, sizes)
}
void gather_rows(int64_t rows, int64_t cols, const float* x, const int64_t* index, float* out) {
  EMBER_DISPATCH(gather_rows, rows, cols, x, index, out)
}
void dropout_forward(int64_t n, const float* x, float* y, float p, uint64_t seed, uint64_t off) {
  EMBER_DISPATCH(dropout_forward, n, x, y, p, seed, off)
}
void dropout_backward(int64_t n, const float* g, float* gi, float p, uint64_t seed, uint64_t off) {
  EMBER_DISPATCH(dropout_backward, n, g, gi, p, seed, off)
}
MlpStepResult mlp_train_step(const MlpStepArgs& a) { EMBER_DISPATCH(mlp_train_step, a) }
StepResult sgd_step(const SgdArgs& a) { EMBER_DISPATCH(sgd_step, a) }
StepResult adam_step(const AdamArgs& a) { EMBER_DISPATCH(adam_step, a) }

}  // namespace ember::cpu

// ---- the thread pool (ember/pool.h) --------------------------------------------------------
//
// Why not OpenMP: libgomp's idle workers (and a thread waiting at a region's end) spin for
// GOMP_SPINCOUNT iterations (300K by default, milliseconds) before they sleep, and a region
// cannot end before every thread of its team has run its share. On a machine whose cores are
// shared with another busy process, a fit's steps (hundreds of small regions a second) then
// wait for descheduled threads and burn the cores the other process needs: two 2-thread digits
// fits at once on 2 cores took 6-50x their time alone (issue 16). Here the calling thread claims
// tasks too, so a region never waits for a thread that has not started; spinning is short and
// yields to other runnable threads; and when workers keep turning up late, calls run on the
// calling thread alone for a while (the team sized to the cores actually free).
namespace ember::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  (void)word;
  (void)expected;
  sched_yield();
#endif
}

void futex_wake(std::atomic<uint32_t>* word, int count) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr,
          nullptr, 0);
#else
  (void)word;
  (void)count;
#endif
}

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (end == v || *end != '\0') return fallback;
  return std::clamp<int64_t>(x, lo, hi);
}

// How long an idle worker (or a caller waiting for workers) spins before it sleeps. A training
// step's parallel calls come microseconds apart, so workers spin through a fit; a worker woken
// from sleep takes 50-150 us to arrive on this VM (the caller does not wait for it: it runs the
// unclaimed tasks itself). EMBER_POOL_SPIN_US overrides it (0: sleep at once).
const int64_t kSpinNs = env_int("EMBER_POOL_SPIN_US", 200, 0, 1000000) * 1000;
// A gap this long between two looks at the clock in a spin loop means the thread was
// descheduled: another thread wanted this core. The spinner then sleeps instead.
constexpr int64_t kPreemptedNs = 50000;
// A spinning thread offers its core to other runnable threads (sched_yield) this often.
constexpr int64_t kYieldNs = 20000;
// EMBER_POOL_ADAPT=0 turns off the contention back-off below (for measurements).
const bool kAdapt = env_int("EMBER_POOL_ADAPT", 1, 0, 1) != 0;
// Contention back-off: when 3 of 16 consecutive parallel calls find a worker late, calls run on
// the calling thread alone for kBackoffNs, doubling while the contention lasts (up to
// kMaxBackoffNs), back to kBackoffNs after 16 calls without one. Late: a spinning worker claimed
// nothing although the caller's tasks took over kLateIdleNs (a running spinner arrives within
// ~1 us, or after a yield, a few); or a worker's spin found itself preempted; or the caller
// waited on a worker's task for over kLateWaitNs and longer than its own share took. (Without
// the kLateIdleNs floor, workers a microsecond late for 1-2 us calls set it off on a quiet
// machine: 20 % of a 200x100x64 GEMM loop's calls ran alone.)
constexpr int kWindow = 16, kBadInWindow = 3;
constexpr int64_t kBackoffNs = 2000000, kMaxBackoffNs = 64000000;
constexpr int64_t kLateIdleNs = 20000, kLateWaitNs = 200000;

thread_local bool t_in_task = false;

struct Pool {
  // The current call: region id (32 bits) | tasks (16) | next unclaimed task (16), one word so
  // that a claim is one compare-and-swap that fails once the call is over.
  std::atomic<uint64_t> word{0};
  std::atomic<uint32_t> gen{0};        // the region id; idle workers wait on it (futex)
  std::atomic<uint32_t> remaining{0};  // tasks not yet finished; the caller waits on it (futex)
  std::atomic<uint32_t> caller_waiting{0};
  std::atomic<int> sleepers{0};        // workers asleep on gen
  std::atomic<uint32_t> preempted{0};  // worker spins that found themselves descheduled
  std::atomic<uint32_t> worker_claims{0};
  std::atomic<uint32_t> worker_sleeps{0};
  std::atomic<bool> busy{false};       // a call is in progress (a second caller runs serially)
  std::atomic<int> threads{1};
  TaskFn fn = nullptr;
  void* ctx = nullptr;
  std::mutex error_mutex;
  std::exception_ptr error;
  // Owned by the caller holding busy:
  int workers = 0;
  uint32_t region = 0;
  int64_t serial_until = 0, backoff = kBackoffNs;
  int window_calls = 0, window_bad = 0;
  uint64_t stat_parallel = 0, stat_serial = 0, stat_bad = 0, stat_backoffs = 0;
  uint64_t stat_idle_late = 0, stat_long_wait = 0, stat_preempted = 0;

  bool claim(uint32_t g, int& task) {
    uint64_t w = word.load(std::memory_order_acquire);
    for (;;) {
      if (uint32_t(w >> 32) != g) return false;
      const int tasks = int((w >> 16) & 0xffff), next = int(w & 0xffff);
      if (next >= tasks) return false;
      if (word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
        task = next;
        return true;
      }
    }
  }

  void run(int task) {
    t_in_task = true;
    try {
      fn(ctx, task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
    t_in_task = false;
    if (remaining.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_waiting.load(std::memory_order_seq_cst)) {
      futex_wake(&remaining, 1);
    }
  }

  // Spins until done() (true) or for kSpinNs / until preempted (false). Yields now and then.
  template <class Done>
  bool spin(Done done, bool count_preemption) {
    const int64_t start = now_ns();
    int64_t last = start, yielded = start;
    for (unsigned i = 1;; ++i) {
      if (done()) return true;
      cpu_relax();
      if (i % 32 == 0) {
        const int64_t t = now_ns();
        if (t - last > kPreemptedNs) {
          if (count_preemption) preempted.fetch_add(1, std::memory_order_relaxed);
          return false;
        }
        if (t - start >= kSpinNs) return false;
        if (t - yielded >= kYieldNs) {
          sched_yield();
          yielded = now_ns();
          if (yielded - t > kPreemptedNs) {  // other threads ran meanwhile: cores are busy
            if (count_preemption) preempted.fetch_add(1, std::memory_order_relaxed);
            return done();
          }
          last = yielded;
        } else {
          last = t;
        }
      }
    }
  }

  uint32_t wait_region(uint32_t seen) {
    uint32_t g = seen;
    if (spin([&] { return (g = gen.load(std::memory_order_acquire)) != seen; }, true)) return g;
    worker_sleeps.fetch_add(1, std::memory_order_relaxed);
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    while ((g = gen.load(std::memory_order_seq_cst)) == seen) futex_wait(&gen, seen);
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
    return g;
  }

  void wait_done() {
    if (spin([&] { return remaining.load(std::memory_order_acquire) == 0; }, false)) return;
    caller_waiting.store(1, std::memory_order_seq_cst);
    uint32_t r;
    while ((r = remaining.load(std::memory_order_seq_cst)) != 0) futex_wait(&remaining, r);
    caller_waiting.store(0, std::memory_order_relaxed);
  }

  static void worker_main(Pool* p, uint32_t seen) {
    for (;;) {
      const uint32_t g = p->wait_region(seen);
      seen = g;
      int task;
      while (p->claim(g, task)) {
        p->worker_claims.fetch_add(1, std::memory_order_relaxed);
        p->run(task);
      }
    }
  }

  void ensure_workers(int n) {
    while (workers < n) {
      try {
        std::thread(worker_main, this, gen.load(std::memory_order_relaxed)).detach();
      } catch (const std::system_error&) {
        return;  // no more threads: the callers' own threads run the rest of the tasks
      }
      ++workers;
    }
  }

  // The back-off's bookkeeping after a parallel call.
  void record(bool bad, int64_t now) {
    if (bad) ++window_bad, ++stat_bad;
    if (window_bad >= kBadInWindow) {
      ++stat_backoffs;
      serial_until = now + backoff;
      backoff = std::min(backoff * 2, kMaxBackoffNs);
      window_calls = window_bad = 0;
      return;
    }
    if (++window_calls == kWindow) {
      if (window_bad == 0) backoff = kBackoffNs;
      window_calls = window_bad = 0;
    }
  }
};

// Immortal (workers may outlive static destructors at exit); a fork's child gets a new one.
Pool* g_pool = nullptr;

int initial_threads() { return std::max(1, omp_get_max_threads()); }

void reset_after_fork() {
  const int threads = g_pool ? g_pool->threads.load() : initial_threads();
  g_pool = new Pool;
  g_pool->threads.store(threads);
}

// EMBER_POOL_STATS=1: at exit, print to stderr how many parallel calls ran on the pool and how
// many on the calling thread alone (the back-off), with the late-worker count.
void print_stats() {
  const Pool* p = g_pool;
  std::fprintf(stderr,
               "ember pool: %llu calls on the pool, %llu alone (back-off), %llu late, "
               "%llu back-offs, %u worker claims, %u worker sleeps, %u preempted spins; late: %llu idle "
               "worker, %llu long "
               "wait, %llu preempted\n",
               (unsigned long long)p->stat_parallel, (unsigned long long)p->stat_serial,
               (unsigned long long)p->stat_bad, (unsigned long long)p->stat_backoffs,
               p->worker_claims.load(), p->worker_sleeps.load(), p->preempted.load(),
               (unsigned long long)p->stat_idle_late,
               (unsigned long long)p->stat_long_wait, (unsigned long long)p->stat_preempted);
}

Pool* pool() {
  static Pool* p = [] {
    g_pool = new Pool;
    g_pool->threads.store(initial_threads());
    pthread_atfork(nullptr, nullptr, reset_after_fork);
    if (env_int("EMBER_POOL_STATS", 0, 0, 1)) std::atexit(print_stats);
    return g_pool;
  }();
  (void)p;
  return g_pool;
}

void run_serially(int tasks, TaskFn fn, void* ctx) {
  const bool outer = t_in_task;
  t_in_task = true;
  std::exception_ptr error;
  for (int t = 0; t < tasks; ++t) {
    try {
      fn(ctx, t);
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  t_in_task = outer;
  if (error) std::rethrow_exception(error);
}

}  // namespace

void parallel_run(int tasks, TaskFn fn, void* ctx) {
  if (tasks <= 0) return;
  Pool* p = pool();
  const int threads = std::min(p->threads.load(std::memory_order_relaxed), 65535);
  if (tasks == 1 || threads <= 1 || t_in_task || tasks > 65535 ||
      p->busy.exchange(true, std::memory_order_acquire)) {
    run_serially(tasks, fn, ctx);
    return;
  }
  struct Release {
    Pool* p;
    ~Release() { p->busy.store(false, std::memory_order_release); }
  } release{p};
  const int64_t t0 = now_ns();
  if (t0 < p->serial_until) {
    ++p->stat_serial;
    run_serially(tasks, fn, ctx);
    return;
  }
  ++p->stat_parallel;
  const int helpers = std::min(threads, tasks) - 1;
  p->ensure_workers(helpers);
  p->fn = fn;
  p->ctx = ctx;
  p->remaining.store(uint32_t(tasks), std::memory_order_relaxed);
  const uint32_t g = ++p->region;
  const uint32_t claims0 = p->worker_claims.load(std::memory_order_relaxed);
  const uint32_t preempted0 = p->preempted.load(std::memory_order_relaxed);
  p->word.store(uint64_t(g) << 32 | uint64_t(tasks) << 16, std::memory_order_release);
  p->gen.store(g, std::memory_order_seq_cst);
  const int asleep = p->sleepers.load(std::memory_order_seq_cst);
  if (asleep > 0) futex_wake(&p->gen, std::min(asleep, helpers));
  int task;
  while (p->claim(g, task)) p->run(task);
  const int64_t t1 = now_ns();
  p->wait_done();
  if (kAdapt) {
    const int64_t t2 = now_ns();
    const bool idle_worker_late = asleep == 0 && t1 - t0 > kLateIdleNs &&
                                  p->worker_claims.load(std::memory_order_relaxed) == claims0;
    const bool long_wait = t2 - t1 > kLateWaitNs && t2 - t1 > t1 - t0;
    const bool preempted = p->preempted.load(std::memory_order_relaxed) != preempted0;
    p->stat_idle_late += idle_worker_late;
    p->stat_long_wait += long_wait;
    p->stat_preempted += preempted;
    p->record(idle_worker_late || long_wait || preempted, t2);
  }
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(p->error_mutex);
    std::swap(error, p->error);
  }
  if (error) std::rethrow_exception(error);
}

int pool_threads() { return pool()->threads.load(std::memory_order_relaxed); }
bool pool_in_task() { return t_in_task; }

void set_num_threads(int n) {
  pool()->threads.store(std::max(1, n), std::memory_order_relaxed);
  omp_set_num_threads(n);
}
int get_num_threads() { return pool_threads(); }

}  // namespace ember::cpu
