// Binding: ForwardPlan, a frozen MLP's forward pass in one call (ember.inference.Predictor).
//
// The plan copies the weights once, each Linear's B operand already packed the way the GEMM packs
// it (gemm_pack_b), so a call streams the weights and never repacks them: at batch 1 the packing
// was most of the time (a 784-1024-1024-10 MLP: 3.2 + 4 MB packed per call). The arithmetic is
// the GEMM's own (the same kernel on the same packed floats), so the outputs are the bits the
// layer-by-layer forward gives. A call checks x (dtype, shape, finite values), takes a workspace
// from the plan's pool (a mutex held only to pop and push; concurrent calls each get their own,
// so the plan is thread-safe), runs the layers on blocks of rows with the GIL released, and
// returns a new array.
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"
#include "ember/pool.h"

namespace ember::bind {
namespace {

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeDeleter>;

// n floats, 64-byte aligned (the packed panels are read with aligned loads).
Floats aligned_floats(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  return Floats(p);
}

struct Layer {
  int64_t in = 0, out = 0;
  Floats weight;  // packed op(B) when packed, else the (out x in) weight itself
  bool packed = false;
  Floats bias;    // null without a bias
  Activation act = Activation::identity;
  float slope = 0.01f;
};

// The activations of one block of rows (two ping-pong buffers) and the standardized input.
struct Workspace {
  int64_t rows = 0;
  std::vector<float> a, b, xs;
};

// Index of the first NaN or Inf of x[0:n], or -1: an integer test of the exponent bits, which the
// compiler vectorises (a float compare against itself would not be, under -O3 without fast-math).
int64_t first_non_finite(const float* x, int64_t n) {
  constexpr int64_t kBlock = 4096;
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t e = std::min(n, s + kBlock);
    uint32_t any = 0;
    for (int64_t i = s; i < e; ++i) {
      uint32_t u;
      std::memcpy(&u, x + i, sizeof u);
      any |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    if (any) {
      for (int64_t i = s; i < e; ++i) {
        if (!std::isfinite(x[i])) return i;
      }
    }
  }
  return -1;
}

class ForwardPlan {
 public:
  ForwardPlan(int64_t in_features, const py::list& weights, const py::list& biases,
              const py::list& activations, const py::list& slopes, py::handle mean,
              py::handle std_dev, int64_t block_rows) {
    const char* fn = "ForwardPlan";
    const Call c = cpu_call(fn);
    require(in_features >= 1, fn, "in_features must be >= 1");
    require(block_rows >= 1, fn, "block_rows must be >= 1");
    const size_t L = weights.size();
    require(L >= 1, fn, "weights must hold at least one layer");
    for (const py::list* l : {&biases, &activations, &slopes}) {
      require(l->size() == L, fn, "every per-layer list must have one entry per layer");
    }
    isa_ = cpu::isa_name();
    in_ = in_features;
    block_ = block_rows;
    int64_t in = in_features;
    for (size_t i = 0; i < L; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      const Arr w = array_arg(c, weights[i], "weights" + at, DType::f32, 2);
      Layer l;
      l.out = w.dim(0);
      l.in = in;
      expect_shape(c, w, {l.out, in});
      l.act = parse_activation(fn, py::cast<std::string>(activations[i]));
      l.slope = finite_scalar(fn, py::cast<double>(slopes[i]), ("slopes" + at).c_str());
      const int64_t packed = cpu::gemm_packed_b_size(l.out, in);
      l.packed = packed > 0;
      l.weight = aligned_floats(l.packed ? packed : l.out * in);
      if (l.packed) {
        cpu::gemm_pack_b(l.out, in, w.cf32(), in, true, l.weight.get());
      } else {
        std::memcpy(l.weight.get(), w.cf32(), sizeof(float) * l.out * in);
      }
      if (!biases[i].is_none()) {
        const Arr b = array_arg(c, biases[i], "biases" + at, DType::f32, 1);
        expect_shape(c, b, {l.out});
        l.bias = aligned_floats(l.out);
        std::memcpy(l.bias.get(), b.cf32(), sizeof(float) * l.out);
      }
      widest_ = std::max(widest_, l.out);
      in = l.out;
      layers_.push_back(std::move(l));
    }
    out_ = in;
    require(mean.is_none() == std_dev.is_none(), fn, "mean and std must be given together");
    if (!mean.is_none()) {
      const Arr m = array_arg(c, mean, "mean", DType::f32, 1);
      const Arr s = array_arg(c, std_dev, "std", DType::f32, 1);
      expect_shape(c, m, {in_});
      expect_shape(c, s, {in_});
      mean_.assign(m.cf32(), m.cf32() + in_);
      std_.assign(s.cf32(), s.cf32() + in_);
    }
  }

  // The outputs for the rows of x (float32, C-contiguous, (rows, in_features), finite).
  py::object run(py::handle x_obj) {
    const char* fn = "predict";
    const Call c = cpu_call(fn);
    const Arr x = array_arg(c, x_obj, "x", DType::f32, 2);
    if (x.dim(1) != in_) {
      throw py::value_error(std::string(fn) + ": x has " + std::to_string(x.dim(1)) +
                            " features, the model expects " + std::to_string(in_));
    }
    if (isa_ != cpu::isa_name()) {
      throw py::value_error(std::string(fn) + ": the plan was packed for the " + isa_ +
                            " kernels, but ember now runs " + cpu::isa_name() +
                            " (ember._cpu.set_isa); build the predictor again");
    }
    const int64_t rows = x.dim(0);
    py::array_t<float> out(std::vector<py::ssize_t>{rows, out_});
    float* y = out.mutable_data();
    const int64_t blocks = (rows + block_ - 1) / block_;
    int64_t bad = -1;
    {
      py::gil_scoped_release release;
      bad = first_non_finite(x.cf32(), x.size);
      if (bad < 0 && (blocks == 1 || cpu::pool_threads() == 1)) {
        std::unique_ptr<Workspace> ws = take(std::min(rows, block_));
        for (int64_t r0 = 0; r0 < rows; r0 += block_) {
          forward(x.cf32() + r0 * in_, std::min(block_, rows - r0), *ws, y + r0 * out_);
        }
        give_back(std::move(ws));
      } else if (bad < 0) {
        // Blocks of rows side by side, each through all the layers on one thread (its GEMMs
        // then run on that thread): no wait between layers, and a row's bits do not depend on
        // the block it is in. One block is split inside its GEMMs instead (batch 1).
        const int64_t nt = std::min<int64_t>(blocks, 1 << 15);
        cpu::parallel_tasks(static_cast<int>(nt), [&](int t) {
          const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
          std::unique_ptr<Workspace> ws = take(block_);
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t r0 = b * block_;
            forward(x.cf32() + r0 * in_, std::min(block_, rows - r0), *ws, y + r0 * out_);
          }
          give_back(std::move(ws));
        });
      }
    }
    if (bad >= 0) {
      throw py::value_error(std::string(fn) + ": x holds NaN or Inf (first at row " +
                            std::to_string(bad / in_) + ", column " + std::to_string(bad % in_) +
                            ")");
    }
    return std::move(out);
  }

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  std::string isa() const { return isa_; }
  // Floats held for the weights (packed panels include their padding) and biases.
  int64_t weight_floats() const {
    int64_t n = 0;
    for (const Layer& l : layers_) {
      n += (l.packed ? cpu::gemm_packed_b_size(l.out, l.in) : l.out * l.in) + (l.bias ? l.out : 0);
    }
    return n;
  }

 private:
  void forward(const float* x, int64_t rows, Workspace& ws, float* y) const {
    if (!mean_.empty()) {  // (x - mean) / std in float32: preprocessing.Standardize's bits
      float* xs = ws.xs.data();
      for (int64_t r = 0; r < rows; ++r) {
        const float* s = x + r * in_;
        float* d = xs + r * in_;
        for (int64_t j = 0; j < in_; ++j) d[j] = (s[j] - mean_[j]) / std_[j];
      }
      x = xs;
    }
    const float* in = x;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      float* dst = i + 1 == layers_.size() ? y : (i % 2 ? ws.b.data() : ws.a.data());
      GemmArgs g = gemm_operands(rows, l.out, l.in, in, l.in, false, l.weight.get(), l.in, true,
                                 dst, l.out);
      if (l.packed) g.packed_b = l.weight.get();
      g.bias = l.bias.get();
      g.act = l.act;
      g.act_param = l.slope;
      cpu::gemm(g);
      in = dst;
    }
  }

  // A workspace for blocks of `rows` rows: a pooled one large enough, else a new one.
  std::unique_ptr<Workspace> take(int64_t rows) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < pool_.size(); ++i) {
        if (pool_[i]->rows >= rows) {
          std::unique_ptr<Workspace> w = std::move(pool_[i]);
          pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(i));
          return w;
        }
      }
    }
    auto w = std::make_unique<Workspace>();
    w->rows = rows;
    if (layers_.size() > 1) w->a.resize(static_cast<size_t>(rows * widest_));
    if (layers_.size() > 2) w->b.resize(static_cast<size_t>(rows * widest_));
    if (!mean_.empty()) w->xs.resize(static_cast<size_t>(rows * in_));
    return w;
  }

  void give_back(std::unique_ptr<Workspace> w) {
    std::lock_guard<std::mutex> lock(mutex_);
    pool_.push_back(std::move(w));
  }

  std::string isa_;
  int64_t in_ = 0, out_ = 0, widest_ = 0, block_ = 512;
  std::vector<Layer> layers_;
  std::vector<float> mean_, std_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> pool_;
};

}  // namespace

void bind_predict(py::module_& m) {
  py::class_<ForwardPlan>(m, "ForwardPlan", R"(A frozen MLP's forward pass in one call.

ForwardPlan(in_features, weights, biases, activations, slopes, mean, std, block_rows): copies the
Linear layers' weights ((out, in) float32; packed for the GEMM) and biases (or None), with each
layer's fused activation and slope; mean/std (or None) standardize the input first, as
ember.preprocessing.Standardize does. run(x) returns the outputs of x (float32, C-contiguous,
(rows, in_features)) as a new array, computed in blocks of block_rows rows: the bits of the
layer-by-layer forward. Thread-safe: concurrent calls use their own workspaces.)")
      .def(py::init<int64_t, const py::list&, const py::list&, const py::list&, const py::list&,
                    py::handle, py::handle, int64_t>(),
           py::arg("in_features"), py::arg("weights"), py::arg("biases"),
           py::arg("activations"), py::arg("slopes"), py::arg("mean") = py::none(),
           py::arg("std") = py::none(), py::arg("block_rows") = 512)
      .def("run", &ForwardPlan::run, py::arg("x"))
      .def_property_readonly("in_features", &ForwardPlan::in_features)
      .def_property_readonly("out_features", &ForwardPlan::out_features)
      .def_property_readonly("isa", &ForwardPlan::isa)
      .def_property_readonly("weight_floats", &ForwardPlan::weight_floats);
}

}  // namespace ember::bind
