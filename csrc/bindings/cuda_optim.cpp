// Bindings of the CUDA optimizer family: sgd_step, adam_step (AdamW: decoupled_weight_decay) on
// lists of CUDA arrays. Positional arguments as in ember._cpu, then
// `state`, `result`, `advance_step`, `stream`, `alloc`:
//   state None (the CPU-compatible call): the binding writes {step, lr} into scratch with a tiny
//     kernel, launches, then synchronises the stream to return (grad_norm, skipped) as Python values.
//   state given (int64[2] {step, lr as double bits}, owned by the caller): lr and step arguments are
//     ignored, nothing is synchronised, the outcome goes to `result` (int64[2] {grad_norm as double
//     bits, skipped}; allocated when None) and `result` is returned. With advance_step, a step that
//     is not skipped adds 1 to state[0] on the device: a CUDA graph can replay the step as is.
// Every list, array and hyperparameter is checked before anything is launched.
#include <Python.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda_bindings.h"
#include "cuda_device.h"
#include "optim_args.h"

namespace ember::bind {
namespace {


// The step's device state and result: the caller's (graph mode) or scratch (host mode).
struct StepIO {
  Arr state, result;
  bool device = false;
};

StepIO step_io(const char* fn, py::handle state_obj, py::handle result_obj, const py::object& alloc) {
  StepIO io;
  if (state_obj.is_none()) {
    if (!result_obj.is_none()) throw py::value_error(std::string(fn) + ": result needs state");
    return io;
  }
  io.device = true;
  const Call c = cuda_call(fn, alloc);
  io.state = array_arg(c, state_obj, "state", DType::i64, 1, true);
  expect_shape(c, io.state, {2});
  io.result = out_arg(c, result_obj, "result", {2}, DType::i64);
  no_overlap(c, io.result, io.state);
  return io;
}

// Runs `launch(state, result, workspace)` and returns the host or device outcome. `check`: put
// every array through device_phase first (an OptimPlan did that once, when it was built).
template <class Launch>
py::object run(const char* fn, StepIO& io, int64_t step, double lr, int64_t ws_words,
               std::vector<const Arr*> arrays, bool check, uintptr_t stream,
               const py::object& alloc, Launch&& launch) {
  if (io.device) {
    arrays.push_back(&io.state);
    arrays.push_back(&io.result);
  }
  if (check) {
    device_phase(fn, arrays, stream);
  } else if (io.device) {
    device_phase(fn, {&io.state, &io.result}, stream);
  }
  // Host mode: 2 more words for the state.
  const Arr ws = cuda_workspace(cuda_call(fn, alloc), ws_words + 2);
  double* w = words(ws);
  auto s = reinterpret_cast<cuda::Stream>(stream);
  if (io.device) {
    launch(reinterpret_cast<int64_t*>(io.state.ptr), reinterpret_cast<int64_t*>(io.result.ptr), w);
    return io.result.obj;
  }
  auto* state = reinterpret_cast<int64_t*>(w + ws_words);
  cuda::set_step_state(state, step, lr, s);
  launch(state, nullptr, w);
  const std::vector<int64_t> r = read_words(w + 2, 2, stream);  // {norm bits, skipped}
  return py::make_tuple(as_double(r[0]), r[1] != 0);
}

// The tensor lists of one optimizer call, checked (optim_args.h: params written, grads read, the
// optimizer's state written, all of params' shapes, none sharing memory with an array written),
// with their pointers and sizes for the kernels: [0] params, [1] grads, [2..] states.
struct DeviceLists {
  OptimLists lists;
  std::vector<std::vector<float*>> ptrs;
  std::vector<int64_t> sizes;

  std::vector<const Arr*> arrays() const {
    std::vector<const Arr*> out;
    add_all(out, lists.params);
    add_all(out, lists.grads);
    for (const ArrList& l : lists.states) add_all(out, l);
    return out;
  }
  int64_t count() const { return static_cast<int64_t>(sizes.size()); }
  int64_t state_lists() const { return static_cast<int64_t>(lists.states.size()); }
};

DeviceLists device_lists(const char* fn, py::handle params_obj, py::handle grads_obj,
                         const std::vector<std::pair<py::handle, const char*>>& states) {
  DeviceLists o;
  o.lists = optim_lists(cuda_call(fn, py::none()), params_obj, grads_obj, states);
  o.ptrs.push_back(o.lists.params.pointers<float*>());
  o.ptrs.push_back(o.lists.grads.pointers<float*>());
  for (const ArrList& l : o.lists.states) o.ptrs.push_back(l.pointers<float*>());
  o.sizes = o.lists.params.sizes();
  return o;
}

py::object launch_sgd(SgdArgs a, const DeviceLists& l, StepIO& io, bool advance_step, bool check,
                      uintptr_t stream, const py::object& alloc) {
  a.count = l.count();
  a.params = l.ptrs[0].data();
  a.grads = const_cast<const float* const*>(l.ptrs[1].data());
  a.momentum_buffers = l.ptrs.size() > 2 ? l.ptrs[2].data() : nullptr;
  a.sizes = l.sizes.data();
  return run("sgd_step", io, a.step, a.lr, cuda::optim_workspace_words(a.count, a.sizes),
             l.arrays(), check, stream, alloc, [&](int64_t* state, int64_t* result, double* ws) {
               cuda::sgd_step(a, state, advance_step, result, ws, reinterpret_cast<cuda::Stream>(stream));
             });
}

py::object launch_adam(AdamArgs a, const DeviceLists& l, StepIO& io, bool advance_step, bool check,
                       uintptr_t stream, const py::object& alloc) {
  a.count = l.count();
  a.params = l.ptrs[0].data();
  a.grads = const_cast<const float* const*>(l.ptrs[1].data());
  a.exp_avg = l.ptrs[2].data();
  a.exp_avg_sq = l.ptrs[3].data();
  a.max_exp_avg_sq = l.ptrs.size() > 4 ? l.ptrs[4].data() : nullptr;
  a.sizes = l.sizes.data();
  return run("adam_step", io, a.step, a.lr, cuda::optim_workspace_words(a.count, a.sizes),
             l.arrays(), check, stream, alloc, [&](int64_t* state, int64_t* result, double* ws) {
               cuda::adam_step(a, state, advance_step, result, ws, reinterpret_cast<cuda::Stream>(stream));
             });
}

py::object sgd_step(py::handle params_obj, py::handle grads_obj, py::handle bufs_obj, double lr,
                    double momentum, double dampening, double weight_decay, bool nesterov,
                    bool maximize, py::handle step_obj, double max_grad_norm, py::handle state_obj,
                    py::handle result_obj, bool advance_step, uintptr_t stream,
                    const py::object& alloc) {
  const SgdArgs a = sgd_hyperparameters(lr, momentum, dampening, weight_decay, nesterov, maximize,
                                        step_obj, max_grad_norm);
  const DeviceLists l = device_lists("sgd_step", params_obj, grads_obj, sgd_states(momentum, bufs_obj));
  StepIO io = step_io("sgd_step", state_obj, result_obj, alloc);
  return launch_sgd(a, l, io, advance_step, true, stream, alloc);
}

py::object adam_step(py::handle params_obj, py::handle grads_obj, py::handle m_obj,
                     py::handle v_obj, py::handle vmax_obj, double lr, double beta1, double beta2,
                     double eps, double weight_decay, bool amsgrad, bool decoupled_weight_decay,
                     bool maximize, py::handle step_obj, double max_grad_norm, py::handle state_obj,
                     py::handle result_obj, bool advance_step, uintptr_t stream,
                     const py::object& alloc) {
  const AdamArgs a = adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad,
                                          decoupled_weight_decay, maximize, step_obj, max_grad_norm);
  const DeviceLists l = device_lists("adam_step", params_obj, grads_obj,
                                   adam_states(m_obj, v_obj, amsgrad, vmax_obj));
  StepIO io = step_io("adam_step", state_obj, result_obj, alloc);
  return launch_adam(a, l, io, advance_step, true, stream, alloc);
}

// The lists of an optimizer, checked once (shapes, memory, device, producers' streams) and kept:
// each step then only checks its hyperparameters and launches. For ember.optim's optimizers,
// whose lists change only when a Parameter is reassigned (they then build a new plan); the plan
// holds references to its arrays, so their memory stays valid (hold=false: it keeps only their
// pointers and sizes, and its owner must drop it before any of the arrays is freed: ember's cache
// of ops.adam_step's lists does, through weak references). Steps run on the stream given to each
// call; arrays written on another stream must be ordered before it by the caller.
class OptimPlan {
 public:
  OptimPlan(py::handle params_obj, py::handle grads_obj, py::handle states_obj, uintptr_t stream,
            bool hold) {
    lists_ = device_lists("OptimPlan", params_obj, grads_obj, plan_states(states_obj, holds_));
    device_phase("OptimPlan", lists_.arrays(), stream);
    if (!hold) {
      holds_.clear();
      release(lists_.lists.params);
      release(lists_.lists.grads);
      for (ArrList& l : lists_.lists.states) release(l);
    }
  }

  int64_t state_lists() const { return lists_.state_lists(); }

  py::object sgd(double lr, double momentum, double dampening, double weight_decay,
                 bool nesterov, bool maximize, py::handle step_obj, double max_grad_norm,
                 py::handle state_obj, py::handle result_obj, bool advance_step, uintptr_t stream,
                 const py::object& alloc) {
    const SgdArgs a = sgd_hyperparameters(lr, momentum, dampening, weight_decay, nesterov,
                                          maximize, step_obj, max_grad_norm);
    expect_states("sgd_step", momentum != 0.0 ? 1 : 0);
    StepIO io = step_io("sgd_step", state_obj, result_obj, alloc);
    return launch_sgd(a, lists_, io, advance_step, false, stream, alloc);
  }

  py::object adam(double lr, double beta1, double beta2, double eps, double weight_decay,
                  bool amsgrad, bool decoupled_weight_decay, bool maximize, py::handle step_obj,
                  double max_grad_norm, py::handle state_obj, py::handle result_obj,
                  bool advance_step, uintptr_t stream, const py::object& alloc) {
    const AdamArgs a = adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad,
                                            decoupled_weight_decay, maximize, step_obj,
                                            max_grad_norm);
    expect_states("adam_step", amsgrad ? 3 : 2);
    StepIO io = step_io("adam_step", state_obj, result_obj, alloc);
    return launch_adam(a, lists_, io, advance_step, false, stream, alloc);
  }

 private:
  void expect_states(const char* fn, int64_t want) const {
    expect_state_lists(fn, state_lists(), want);
  }
  static void release(ArrList& l) {
    for (Arr& a : l.arrays) a.obj = py::object();
  }

  std::vector<py::object> holds_;
  DeviceLists lists_;
};

}  // namespace

void bind_cuda_optim(py::module_& m) {
  py::class_<OptimPlan>(m, "OptimPlan", R"(An optimizer's tensor lists, checked once (see ember.optim).

OptimPlan(params, grads, states, stream, hold=True): states is a list of lists (momentum buffers;
or exp_avgs, exp_avg_sqs[, max_exp_avg_sqs]). .sgd(...) / .adam(...) take sgd_step's /
adam_step's arguments after the lists and do the same step without checking the arrays again.
hold=False: the plan keeps no reference to the arrays (only their pointers); whoever holds it must
drop it before any of them is freed.)")
      .def(py::init<py::handle, py::handle, py::handle, uintptr_t, bool>(), py::arg("params"),
           py::arg("grads"), py::arg("states"), py::arg("stream"), py::arg("hold") = true)
      .def_property_readonly("state_lists", &OptimPlan::state_lists)
      .def("sgd", &OptimPlan::sgd, py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
           py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"), py::arg("step"),
           py::arg("max_grad_norm"), py::arg("state"), py::arg("result"), py::arg("advance_step"),
           py::arg("stream"), py::arg("alloc"))
      .def("adam", &OptimPlan::adam, py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
           py::arg("eps"), py::arg("weight_decay"), py::arg("amsgrad"),
           py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("step"),
           py::arg("max_grad_norm"), py::arg("state"), py::arg("result"), py::arg("advance_step"),
           py::arg("stream"), py::arg("alloc"));
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
        py::arg("nesterov"), py::arg("maximize"), py::arg("step"), py::arg("max_grad_norm"),
        py::arg("state"), py::arg("result"), py::arg("advance_step"), py::arg("stream"),
        py::arg("alloc"),
        R"(One fused SGD step over all params in place, in at most 2 launches (see ember.ops.sgd_step).

state None: returns (grad_norm, skipped) after a stream synchronisation. state given (int64[2]
{step, lr bits}): returns `result` (int64[2] {grad_norm bits, skipped}) without synchronising.)");
  m.def("adam_step", &adam_step, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
        py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("amsgrad"),
        py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("step"),
        py::arg("max_grad_norm"), py::arg("state"), py::arg("result"), py::arg("advance_step"),
        py::arg("stream"), py::arg("alloc"),
        R"(One fused Adam/AdamW step over all params in place, in at most 2 launches (see ember.ops.adam_step).

state / result as for sgd_step.)");
}

}  // namespace ember::bind
