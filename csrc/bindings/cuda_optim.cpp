// Bindings of the CUDA optimizer family: sgd_step, adam_step (AdamW: decoupled_weight_decay) and
// global_norm on lists of CUDA arrays. Positional arguments as in ember._cpu, then
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
#include "cuda_ops_common.h"
#include "optim_args.h"

namespace ember::bind {
namespace {


// The step's device state and result: the caller's (graph mode) or scratch (host mode).
struct StepIO {
  CudaArray state, result;
  bool device = false;
};

StepIO step_io(const char* fn, py::handle state_obj, py::handle result_obj, const py::object& alloc) {
  StepIO io;
  if (state_obj.is_none()) {
    if (!result_obj.is_none()) throw py::value_error(std::string(fn) + ": result needs state");
    return io;
  }
  io.device = true;
  io.state = cuda_array_arg(fn, state_obj, "state", DType::i64, 1, true);
  expect_shape(fn, io.state, {2});
  io.result = cuda_out_i64(fn, result_obj, "result", {2}, alloc);
  no_overlap(fn, io.result, io.state);
  return io;
}

// Runs `launch(state, result, workspace)` and returns the host or device outcome.
template <class Launch>
py::object run(const char* fn, StepIO& io, int64_t step, double lr, int64_t ws_words,
               std::vector<const CudaArray*> arrays, uintptr_t stream, const py::object& alloc,
               Launch&& launch) {
  if (io.device) {
    arrays.push_back(&io.state);
    arrays.push_back(&io.result);
  }
  device_phase(fn, arrays, stream);
  // Host mode: 2 more words for the state.
  const CudaArray ws = cuda_workspace(fn, ws_words + 2, alloc);
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

std::vector<int64_t> sizes_of(const CudaArrayList& l) {
  std::vector<int64_t> s;
  for (const CudaArray& a : l.arrays) s.push_back(a.size);
  return s;
}

py::object sgd_step(py::handle params_obj, py::handle grads_obj, py::handle bufs_obj, double lr,
                    double momentum, double dampening, double weight_decay, bool nesterov,
                    bool maximize, py::handle step_obj, double max_grad_norm, py::handle state_obj,
                    py::handle result_obj, bool advance_step, uintptr_t stream,
                    const py::object& alloc) {
  const char* fn = "sgd_step";
  SgdArgs a = sgd_hyperparameters(lr, momentum, dampening, weight_decay, nesterov, maximize,
                                    step_obj, max_grad_norm);

  const CudaArrayList params = cuda_array_list(fn, params_obj, "params", true, -1);
  const auto n = static_cast<py::ssize_t>(params.arrays.size());
  const CudaArrayList grads = cuda_array_list(fn, grads_obj, "grads", false, n);
  same_shapes(fn, params, grads);
  std::vector<const CudaArrayList*> all{&params, &grads};
  CudaArrayList bufs;
  if (momentum != 0.0) {
    if (bufs_obj.is_none()) {
      throw py::value_error("sgd_step: momentum_buffers is required when momentum != 0");
    }
    bufs = cuda_array_list(fn, bufs_obj, "momentum_buffers", true, n);
    same_shapes(fn, params, bufs);
    all.push_back(&bufs);
  }
  no_shared_memory(fn, all);
  StepIO io = step_io(fn, state_obj, result_obj, alloc);
  std::vector<const CudaArray*> arrays;
  for (const CudaArrayList* l : all) add_all(arrays, *l);

  const auto p = list_pointers<float*>(params);
  const auto g = list_pointers<const float*>(grads);
  const auto b = list_pointers<float*>(bufs);
  const auto sizes = sizes_of(params);
  a.count = n;
  a.params = p.data();
  a.grads = g.data();
  a.momentum_buffers = b.empty() ? nullptr : b.data();
  a.sizes = sizes.data();
  return run(fn, io, a.step, a.lr, cuda::optim_workspace_words(n, sizes.data()), arrays, stream,
             alloc, [&](int64_t* state, int64_t* result, double* ws) {
               cuda::sgd_step(a, state, advance_step, result, ws, reinterpret_cast<cuda::Stream>(stream));
             });
}

py::object adam_step(py::handle params_obj, py::handle grads_obj, py::handle m_obj,
                     py::handle v_obj, py::handle vmax_obj, double lr, double beta1, double beta2,
                     double eps, double weight_decay, bool amsgrad, bool decoupled_weight_decay,
                     bool maximize, py::handle step_obj, double max_grad_norm, py::handle state_obj,
                     py::handle result_obj, bool advance_step, uintptr_t stream,
                     const py::object& alloc) {
  const char* fn = "adam_step";
  AdamArgs a = adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, amsgrad,
                                      decoupled_weight_decay, maximize, step_obj, max_grad_norm);

  const CudaArrayList params = cuda_array_list(fn, params_obj, "params", true, -1);
  const auto n = static_cast<py::ssize_t>(params.arrays.size());
  const CudaArrayList grads = cuda_array_list(fn, grads_obj, "grads", false, n);
  same_shapes(fn, params, grads);
  const CudaArrayList ms = cuda_array_list(fn, m_obj, "exp_avgs", true, n);
  same_shapes(fn, params, ms);
  const CudaArrayList vs = cuda_array_list(fn, v_obj, "exp_avg_sqs", true, n);
  same_shapes(fn, params, vs);
  std::vector<const CudaArrayList*> all{&params, &grads, &ms, &vs};
  CudaArrayList vmaxs;
  if (amsgrad) {
    if (vmax_obj.is_none()) {
      throw py::value_error("adam_step: max_exp_avg_sqs is required when amsgrad=True");
    }
    vmaxs = cuda_array_list(fn, vmax_obj, "max_exp_avg_sqs", true, n);
    same_shapes(fn, params, vmaxs);
    all.push_back(&vmaxs);
  }
  no_shared_memory(fn, all);
  StepIO io = step_io(fn, state_obj, result_obj, alloc);
  std::vector<const CudaArray*> arrays;
  for (const CudaArrayList* l : all) add_all(arrays, *l);

  const auto p = list_pointers<float*>(params);
  const auto g = list_pointers<const float*>(grads);
  const auto mp = list_pointers<float*>(ms);
  const auto vp = list_pointers<float*>(vs);
  const auto vmp = list_pointers<float*>(vmaxs);
  const auto sizes = sizes_of(params);
  a.count = n;
  a.params = p.data();
  a.grads = g.data();
  a.exp_avg = mp.data();
  a.exp_avg_sq = vp.data();
  a.max_exp_avg_sq = vmp.empty() ? nullptr : vmp.data();
  a.sizes = sizes.data();
  return run(fn, io, a.step, a.lr, cuda::optim_workspace_words(n, sizes.data()), arrays, stream,
             alloc, [&](int64_t* state, int64_t* result, double* ws) {
               cuda::adam_step(a, state, advance_step, result, ws, reinterpret_cast<cuda::Stream>(stream));
             });
}

double global_norm(py::handle arrays_obj, uintptr_t stream, const py::object& alloc) {
  const char* fn = "global_norm";
  const CudaArrayList l = cuda_array_list(fn, arrays_obj, "arrays", false, -1);
  std::vector<const CudaArray*> arrays;
  add_all(arrays, l);
  device_phase(fn, arrays, stream);
  const auto ptrs = list_pointers<const float*>(l);
  const auto sizes = sizes_of(l);
  const auto n = static_cast<int64_t>(ptrs.size());
  const CudaArray ws = cuda_workspace(fn, cuda::optim_workspace_words(n, sizes.data()), alloc);
  cuda::global_norm(n, ptrs.data(), sizes.data(), words(ws), reinterpret_cast<cuda::Stream>(stream));
  return as_double(read_words(words(ws) + 2, 1, stream)[0]);
}

}  // namespace

void bind_cuda_optim(py::module_& m) {
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
  m.def("global_norm", &global_norm, py::arg("arrays"), py::arg("stream"), py::arg("alloc"),
        R"(L2 norm of all elements of all arrays (double, deterministic; synchronises the stream).)");
}

}  // namespace ember::bind
