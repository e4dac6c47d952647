// The contract of the optimizer family (sgd_step, adam_step, OptimPlan), used by both bindings
// (cpu_optim.cpp, cuda_optim.cpp): hyperparameters and tensor lists, so the same arguments give
// the same errors on either device.
#pragma once
#include <Python.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "ember/common.h"

namespace ember::bind {

inline std::string num(double v) { return py::str(py::float_(v)); }

inline double at_least_zero(const char* fn, double v, const char* name) {
  if (!(std::isfinite(v) && v >= 0.0)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be a finite number >= 0, got " +
                          num(v));
  }
  return v;
}

inline double beta_arg(const char* fn, double v, const char* name) {
  if (!(v >= 0.0 && v < 1.0)) {
    throw py::value_error(std::string(fn) + ": " + name + " must be in [0, 1), got " + num(v));
  }
  return v;
}

// step: a Python or NumPy integer >= 1 (bool and float are refused: a float step is a bug).
inline int64_t step_arg(const char* fn, py::handle obj) {
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
    throw py::type_error(std::string(fn) + ": step must be an int, got " + type_name(obj));
  }
  const auto step = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!step) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(step.ptr(), &overflow);
  if (overflow != 0 || v < 1) {
    throw py::value_error(std::string(fn) + ": step must be >= 1 (the 1-based number of this "
                          "step), got " + py::str(step).cast<std::string>());
  }
  return static_cast<int64_t>(v);
}

// The scalar part of SgdArgs, checked (PyTorch's rules, e.g. Nesterov needs momentum and no
// dampening); the tensor lists are filled by the caller.
inline SgdArgs sgd_hyperparameters(double lr, double momentum, double dampening,
                                   double weight_decay, bool nesterov, bool maximize,
                                   py::handle step_obj, double max_grad_norm) {
  const char* fn = "sgd_step";
  SgdArgs a;
  a.lr = at_least_zero(fn, lr, "lr");
  a.momentum = at_least_zero(fn, momentum, "momentum");
  finite_scalar(fn, dampening, "dampening");
  a.dampening = dampening;
  a.weight_decay = at_least_zero(fn, weight_decay, "weight_decay");
  if (nesterov && !(momentum > 0.0 && dampening == 0.0)) {
    throw py::value_error("sgd_step: nesterov requires momentum > 0 and dampening == 0, got "
                          "momentum=" + num(momentum) + ", dampening=" + num(dampening));
  }
  a.nesterov = nesterov;
  a.maximize = maximize;
  a.step = step_arg(fn, step_obj);
  a.max_grad_norm = at_least_zero(fn, max_grad_norm, "max_grad_norm");
  return a;
}

inline AdamArgs adam_hyperparameters(double lr, double beta1, double beta2, double eps,
                                     double weight_decay, bool amsgrad,
                                     bool decoupled_weight_decay, bool maximize,
                                     py::handle step_obj, double max_grad_norm) {
  const char* fn = "adam_step";
  AdamArgs a;
  a.lr = at_least_zero(fn, lr, "lr");
  a.beta1 = beta_arg(fn, beta1, "beta1");
  a.beta2 = beta_arg(fn, beta2, "beta2");
  // eps > 0: with 0 a parameter whose gradient and moments are all zero (a dead ReLU unit)
  // would get 0/0 = NaN. (PyTorch allows 0.)
  if (!(std::isfinite(eps) && eps > 0.0)) {
    throw py::value_error(std::string(fn) + ": eps must be a finite number > 0, got " + num(eps));
  }
  a.eps = eps;
  a.weight_decay = at_least_zero(fn, weight_decay, "weight_decay");
  a.amsgrad = amsgrad;
  a.decoupled_weight_decay = decoupled_weight_decay;
  a.maximize = maximize;
  a.step = step_arg(fn, step_obj);
  a.max_grad_norm = at_least_zero(fn, max_grad_norm, "max_grad_norm");
  return a;
}

// The state lists a step needs: momentum buffers only with momentum (PyTorch keeps None; one
// given without momentum is ignored, as is max_exp_avg_sqs without amsgrad).
inline std::vector<std::pair<py::handle, const char*>> sgd_states(double momentum,
                                                                   py::handle bufs_obj) {
  if (momentum == 0.0) return {};
  if (bufs_obj.is_none()) {
    throw py::value_error("sgd_step: momentum_buffers is required when momentum != 0");
  }
  return {{bufs_obj, "momentum_buffers"}};
}

inline std::vector<std::pair<py::handle, const char*>> adam_states(
    py::handle m_obj, py::handle v_obj, bool amsgrad, py::handle vmax_obj) {
  std::vector<std::pair<py::handle, const char*>> s{{m_obj, "exp_avgs"}, {v_obj, "exp_avg_sqs"}};
  if (amsgrad) {
    if (vmax_obj.is_none()) {
      throw py::value_error("adam_step: max_exp_avg_sqs is required when amsgrad=True");
    }
    s.emplace_back(vmax_obj, "max_exp_avg_sqs");
  }
  return s;
}

// OptimPlan(params, grads, states): `states` (a list or tuple of at most 3 lists of arrays) as
// the named lists the checks take ("states[0]"...); `holds` keeps its items alive meanwhile.
inline std::vector<std::pair<py::handle, const char*>> plan_states(py::handle states_obj,
                                                                   std::vector<py::object>& holds) {
  if (!py::isinstance<py::list>(states_obj) && !py::isinstance<py::tuple>(states_obj)) {
    throw py::type_error("OptimPlan: states must be a list of lists of arrays, got " +
                         type_name(states_obj));
  }
  auto seq = py::reinterpret_borrow<py::sequence>(states_obj);
  static const char* const kNames[] = {"states[0]", "states[1]", "states[2]"};
  if (seq.size() > 3) throw py::value_error("OptimPlan: at most 3 state lists");
  std::vector<std::pair<py::handle, const char*>> states;
  for (size_t i = 0; i < seq.size(); ++i) {
    holds.push_back(seq[i]);
    states.emplace_back(holds.back(), kNames[i]);
  }
  return states;
}

// An optimizer's tensor lists after their checks: params (written), grads (read), and the state
// lists (written: momentum buffers; or exp_avgs, exp_avg_sqs[, max_exp_avg_sqs]).
struct EMBER_BIND_HIDDEN OptimLists {
  ArrList params, grads;
  std::vector<ArrList> states;

  int64_t count() const { return static_cast<int64_t>(params.arrays.size()); }
};

// params: writable float32 arrays; grads and every state list: as many arrays, of the same shapes;
// no array that is written may share memory with any other.
inline OptimLists optim_lists(const Call& c, py::handle params_obj, py::handle grads_obj,
                              const std::vector<std::pair<py::handle, const char*>>& states) {
  OptimLists l;
  l.params = array_list(c, params_obj, "params", true, -1);
  const auto n = static_cast<py::ssize_t>(l.params.arrays.size());
  l.grads = array_list(c, grads_obj, "grads", false, n);
  same_shapes(c, l.params, l.grads);
  l.states.reserve(states.size());  // no reallocation: `all` points into it
  std::vector<const ArrList*> all{&l.params, &l.grads};
  for (const auto& [obj, name] : states) {
    l.states.push_back(array_list(c, obj, name, true, n));
    same_shapes(c, l.params, l.states.back());
    all.push_back(&l.states.back());
  }
  no_shared_memory(c, all);
  return l;
}

// A step through an OptimPlan needs as many state lists as the plan holds.
inline void expect_state_lists(const char* fn, int64_t held, int64_t want) {
  if (held != want) {
    throw py::value_error(std::string(fn) + ": this OptimPlan holds " + std::to_string(held) +
                          " state list(s), the step needs " + std::to_string(want));
  }
}

}  // namespace ember::bind
