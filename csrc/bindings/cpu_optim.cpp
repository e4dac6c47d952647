// Bindings: sgd_step, adam_step (AdamW is adam_step with decoupled_weight_decay). Every list, array
// and hyperparameter is checked before the kernel touches anything, so a bad call changes nothing.
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "optim_args.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {
namespace {

// One list argument (params, grads, a state list) after its arrays passed array_arg.
struct ArrayList {
  const char* name = nullptr;
  bool output = false;
  std::vector<py::array> arrays;
};

std::string item_name(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// `obj` must be a list (or tuple) of `expected` float32 C-contiguous non-empty arrays (`expected`
// < 0: any number >= 1, as for params); outputs must be writable.
ArrayList array_list(const char* fn, py::handle obj, const char* name, bool output,
                     py::ssize_t expected, const char* expected_from = "params") {
  if (obj.is_none()) {
    throw py::value_error(std::string(fn) + ": " + name + " is required (got None)");
  }
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
    throw py::type_error(std::string(fn) + ": " + name + " must be a list of arrays, got " +
                         type_name(obj));
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  const py::ssize_t n = static_cast<py::ssize_t>(seq.size());
  if (expected < 0 && n == 0) {
    throw py::value_error(std::string(fn) + ": " + name + " must hold at least one array");
  }
  if (expected >= 0 && n != expected) {
    throw py::value_error(std::string(fn) + ": " + name + " has " + std::to_string(n) +
                          " arrays but " + expected_from + " has " + std::to_string(expected));
  }
  ArrayList out{name, output, {}};
  out.arrays.reserve(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    const std::string item = item_name(name, static_cast<size_t>(i));
    out.arrays.push_back(array_arg(fn, seq[i], item.c_str(), DType::f32, -1, output));
  }
  return out;
}

void same_shapes(const char* fn, const ArrayList& like, const ArrayList& list) {
  for (size_t i = 0; i < list.arrays.size(); ++i) {
    const py::array& a = list.arrays[i];
    const py::array& ref = like.arrays[i];
    bool ok = a.ndim() == ref.ndim();
    for (py::ssize_t d = 0; ok && d < a.ndim(); ++d) ok = a.shape(d) == ref.shape(d);
    if (!ok) {
      throw py::value_error(std::string(fn) + ": " + item_name(list.name, i) + " must have shape " +
                            shape_str(ref) + " like " + item_name(like.name, i) + ", got " +
                            shape_str(a));
    }
  }
}

// No array the kernel writes may share memory with any other array of the call (threads update
// different tensors at once), while gradients, only read, may overlap each other. One sort and a
// sweep: O(n log n) in the number of arrays.
void no_shared_memory(const char* fn, const std::vector<const ArrayList*>& lists) {
  struct Span {
    const char* lo;
    const char* hi;
    bool output;
    const char* list;
    size_t index;
  };
  std::vector<Span> spans;
  for (const ArrayList* l : lists) {
    for (size_t i = 0; i < l->arrays.size(); ++i) {
      const auto* lo = static_cast<const char*>(l->arrays[i].data());
      spans.push_back({lo, lo + l->arrays[i].nbytes(), l->output, l->name, i});
    }
  }
  // Stable, so that of two arrays at one address the later argument is named first in the error.
  std::stable_sort(spans.begin(), spans.end(),
                   [](const Span& x, const Span& y) { return x.lo < y.lo; });
  const Span* reach_any = nullptr;  // the earlier span reaching furthest
  const Span* reach_out = nullptr;  // the earlier output span reaching furthest
  for (const Span& s : spans) {
    const Span* hit = s.output ? reach_any : reach_out;
    if (hit != nullptr && hit->hi > s.lo) {
      const Span& written = s.output ? s : *hit;
      const Span& other = s.output ? *hit : s;
      throw py::value_error(std::string(fn) + ": " + item_name(written.list, written.index) +
                            " must not share memory with " + item_name(other.list, other.index));
    }
    if (reach_any == nullptr || s.hi > reach_any->hi) reach_any = &s;
    if (s.output && (reach_out == nullptr || s.hi > reach_out->hi)) reach_out = &s;
  }
}

template <class T>
std::vector<T> pointers(const ArrayList& l) {
  std::vector<T> out;
  out.reserve(l.arrays.size());
  for (const py::array& a : l.arrays) out.push_back(static_cast<T>(const_cast<void*>(a.data())));
  return out;
}


py::tuple result(StepResult r) { return py::make_tuple(r.grad_norm, r.skipped); }

// An optimizer's lists after their checks, with the raw pointers the kernels take: made by each
// sgd_step / adam_step call, or once by an OptimPlan that keeps it (and its arrays) between steps.
struct Lists {
  ArrayList params, grads;
  std::vector<ArrayList> states;  // momentum buffers; or exp_avgs, exp_avg_sqs[, max_exp_avg_sqs]
  std::vector<float*> p;
  std::vector<const float*> g;
  std::vector<std::vector<float*>> s;
  std::vector<int64_t> sizes;

  int64_t count() const { return static_cast<int64_t>(p.size()); }
  float** state(size_t i) { return i < s.size() ? s[i].data() : nullptr; }
};

// params: writable float32 arrays; grads and every state list: as many arrays, of the same shapes;
// no array that is written may share memory with any other.
Lists check_lists(const char* fn, py::handle params_obj, py::handle grads_obj,
                  const std::vector<std::pair<py::handle, const char*>>& states) {
  Lists l;
  l.params = array_list(fn, params_obj, "params", true, -1);
  const auto n = static_cast<py::ssize_t>(l.params.arrays.size());
  l.grads = array_list(fn, grads_obj, "grads", false, n);
  same_shapes(fn, l.params, l.grads);
  l.states.reserve(states.size());  // no reallocation: `all` points into it
  std::vector<const ArrayList*> all{&l.params, &l.grads};
  for (const auto& [obj, name] : states) {
    l.states.push_back(array_list(fn, obj, name, true, n));
    same_shapes(fn, l.params, l.states.back());
    all.push_back(&l.states.back());
  }
  no_shared_memory(fn, all);
  l.p = pointers<float*>(l.params);
  l.g = pointers<const float*>(l.grads);
  for (const ArrayList& st : l.states) l.s.push_back(pointers<float*>(st));
  for (const py::array& x : l.params.arrays) l.sizes.push_back(x.size());
  return l;
}

StepResult run_sgd(SgdArgs a, Lists& l) {
  a.count = l.count();
  a.params = l.p.data();
  a.grads = l.g.data();
  a.momentum_buffers = a.momentum != 0.0 ? l.state(0) : nullptr;
  a.sizes = l.sizes.data();
  py::gil_scoped_release release;
  return cpu::sgd_step(a);
}

StepResult run_adam(AdamArgs a, Lists& l) {
  a.count = l.count();
  a.params = l.p.data();
  a.grads = l.g.data();
  a.exp_avg = l.state(0);
  a.exp_avg_sq = l.state(1);
  a.max_exp_avg_sq = a.amsgrad ? l.state(2) : nullptr;
  a.sizes = l.sizes.data();
  py::gil_scoped_release release;
  return cpu::adam_step(a);
}

// The lists of an optimizer, checked once and kept (with references to their arrays): each step
// then checks only its hyperparameters. ember.optim keeps one per optimizer until a Parameter is
// reassigned (the CPU counterpart of ember._cuda.OptimPlan).
class OptimPlan {
 public:
  OptimPlan(py::handle params_obj, py::handle grads_obj, py::handle states_obj) {
    std::vector<py::object> held;  // the items of states_obj, alive while they are checked
    lists_ = check_lists("OptimPlan", params_obj, grads_obj, plan_states(states_obj, held));
  }

  int64_t state_lists() const { return static_cast<int64_t>(lists_.states.size()); }

  py::tuple sgd(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                bool maximize, py::handle step_obj, double max_grad_norm) {
    const SgdArgs a = sgd_hyperparameters(lr, momentum, dampening, weight_decay, nesterov,
                                          maximize, step_obj, max_grad_norm);
    expect_states("sgd_step", momentum != 0.0 ? 1 : 0);
    return result(run_sgd(a, lists_));
  }

  py::tuple adam(double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool amsgrad, bool decoupled_weight_decay, bool maximize, py::handle step_obj,
                 double max_grad_norm) {
    const AdamArgs a = adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad,
                                            decoupled_weight_decay, maximize, step_obj,
                                            max_grad_norm);
    expect_states("adam_step", amsgrad ? 3 : 2);
    return result(run_adam(a, lists_));
  }

 private:
  void expect_states(const char* fn, int64_t want) const {
    expect_state_lists(fn, state_lists(), want);
  }

  Lists lists_;
};

}  // namespace

void bind_optim(py::module_& m) {
  m.def(
      "sgd_step",
      [](py::handle params_obj, py::handle grads_obj, py::handle bufs_obj, double lr,
         double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
         py::handle step_obj, double max_grad_norm) {
        const SgdArgs a = sgd_hyperparameters(lr, momentum, dampening, weight_decay, nesterov,
                                              maximize, step_obj, max_grad_norm);
        Lists l = check_lists("sgd_step", params_obj, grads_obj, sgd_states(momentum, bufs_obj));
        return result(run_sgd(a, l));
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"),
      py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
      py::arg("maximize"), py::arg("step"), py::arg("max_grad_norm"),
      R"(One fused SGD step over all params in place; returns (grad_norm, skipped). See ember.ops.sgd_step.)");

  m.def(
      "adam_step",
      [](py::handle params_obj, py::handle grads_obj, py::handle m_obj, py::handle v_obj,
         py::handle vmax_obj, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool amsgrad, bool decoupled_weight_decay, bool maximize,
         py::handle step_obj, double max_grad_norm) {
        const AdamArgs a = adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad,
                                                decoupled_weight_decay, maximize, step_obj,
                                                max_grad_norm);
        Lists l = check_lists("adam_step", params_obj, grads_obj,
                              adam_states(m_obj, v_obj, amsgrad, vmax_obj));
        return result(run_adam(a, l));
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::arg("max_exp_avg_sqs"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("amsgrad"),
      py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("step"),
      py::arg("max_grad_norm"),
      R"(One fused Adam/AdamW step over all params in place; returns (grad_norm, skipped). See ember.ops.adam_step.)");

  py::class_<OptimPlan>(m, "OptimPlan", R"(An optimizer's tensor lists, checked once (see ember.optim).

OptimPlan(params, grads, states): states is a list of lists (momentum buffers; or exp_avgs,
exp_avg_sqs[, max_exp_avg_sqs]). .sgd(...) / .adam(...) take sgd_step's / adam_step's arguments
after the lists and do the same step without checking the arrays again.)")
      .def(py::init<py::handle, py::handle, py::handle>(), py::arg("params"), py::arg("grads"),
           py::arg("states"))
      .def_property_readonly("state_lists", &OptimPlan::state_lists)
      .def("sgd", &OptimPlan::sgd, py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
           py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"), py::arg("step"),
           py::arg("max_grad_norm"))
      .def("adam", &OptimPlan::adam, py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
           py::arg("eps"), py::arg("weight_decay"), py::arg("amsgrad"),
           py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("step"),
           py::arg("max_grad_norm"));
}

}  // namespace ember::bind
