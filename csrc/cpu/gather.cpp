// Row gather: out[i] = x[index[i]] for a batch of rows (the DataLoader's batches).
// Split over threads in the row blocks the GEMM that reads the batch next uses for its rows (units
// of 8), so each core gathers the rows it then multiplies: a batch gathered on one core and read
// by two cost a 200 x 64 -> 100 forward GEMM 6 us more than its 20 (2 cores, measured).
#include "ember/pool.h"

#include <algorithm>
#include <cstring>

#include "ember/common.h"

namespace ember::cpu::EMBER_ISA {

void gather_rows(int64_t rows, int64_t cols, const float* x, const int64_t* index, float* out) {
  constexpr int64_t kUnit = 8;
  constexpr int64_t kParallelBytes = int64_t(1) << 15;
  const size_t row_bytes = size_t(cols) * sizeof(float);
  auto run = [&](int nt, int id) {
    const int64_t units = (rows + kUnit - 1) / kUnit;
    const int64_t r0 = std::min(rows, units * id / nt * kUnit);
    const int64_t r1 = std::min(rows, units * (id + 1) / nt * kUnit);
    for (int64_t r = r0; r < r1; ++r) std::memcpy(out + r * cols, x + index[r] * cols, row_bytes);
  };
  const int nt = pool_threads();
  if (int64_t(row_bytes) * rows < kParallelBytes || nt == 1) {
    run(1, 0);
    return;
  }
  parallel_tasks(nt, [&](int id) { run(nt, id); });
}

}  // namespace ember::cpu::EMBER_ISA
