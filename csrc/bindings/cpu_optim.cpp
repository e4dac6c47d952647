// Bindings: sgd_step, adam_step (AdamW is adam_step with decoupled_weight_decay). Every list, array
// and hyperparameter is checked before the kernel touches anything, so a bad call changes nothing.
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_bindings.h"
#include "optim_args.h"
#include "ember/cpu.h"

namespace ember::bind {
namespace {

py::tuple result(StepResult r) { return py::make_tuple(r.grad_norm, r.skipped); }

// An optimizer's lists after their checks (optim_args.h), with the raw pointers the kernels take:
// made by each sgd_step / adam_step call, or once by an OptimPlan that keeps it (and its arrays)
// between steps.
struct Lists {
  OptimLists lists;
  std::vector<float*> p;
  std::vector<const float*> g;
  std::vector<std::vector<float*>> s;
  std::vector<int64_t> sizes;

  int64_t count() const { return static_cast<int64_t>(p.size()); }
  float** state(size_t i) { return i < s.size() ? s[i].data() : nullptr; }
};

Lists check_lists(const char* fn, py::handle params_obj, py::handle grads_obj,
                  const std::vector<std::pair<py::handle, const char*>>& states) {
  Lists l;
  l.lists = optim_lists(cpu_call(fn), params_obj, grads_obj, states);
  l.p = l.lists.params.pointers<float*>();
  l.g = l.lists.grads.pointers<const float*>();
  for (const ArrList& st : l.lists.states) l.s.push_back(st.pointers<float*>());
  l.sizes = l.lists.params.sizes();
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

  int64_t state_lists() const { return static_cast<int64_t>(lists_.lists.states.size()); }

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
