// ember._cpu: the CPU kernel library for NumPy arrays. Python callers go through ember.ops, which
// documents every function; this module checks every argument (checks.h) before any kernel runs.
#include <pybind11/pybind11.h>

#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "ember CPU kernels (float32, C-contiguous NumPy arrays). Use ember.ops.";
  m.attr("__version__") = EMBER_VERSION;

  m.def("isa", &ember::cpu::isa_name, R"(Instruction-set build in use: 'base', 'x86-64-v3' or 'x86-64-v4'.)");
  m.def(
      "set_isa",
      [](const std::string& name) {
        if (!ember::cpu::set_isa(name.c_str())) {
          throw py::value_error("set_isa: name must be 'base', 'v3' or 'v4' and supported by this CPU, got '" +
                                name + "'");
        }
      },
      py::arg("name"), R"(Force the kernel build ('base', 'v3', 'v4'); for tests and benchmarks.)");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
        ember::cpu::set_num_threads(n);
      },
      py::arg("n"), R"(Set the number of threads of ember's CPU thread pool (every CPU kernel uses it).)");
  m.def("get_num_threads", &ember::cpu::get_num_threads, R"(Number of threads of ember's CPU thread pool.)");

  ember::bind::bind_gemm(m);
  ember::bind::bind_activation(m);
  ember::bind::bind_loss(m);
  ember::bind::bind_reduce(m);
  ember::bind::bind_dropout(m);
  ember::bind::bind_optim(m);
  ember::bind::bind_gather(m);
  ember::bind::bind_mlp(m);
  ember::bind::bind_predict(m);
}
