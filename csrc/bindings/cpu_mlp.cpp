// Binding: MlpPlan, one MLP training step per call (ember.nn.Sequential's fast path).
// The plan is built once per batch size: every array is checked then (dtype, shape chain,
// contiguity, writable outputs, no output sharing memory with anything else) and kept alive by
// the plan; a step then checks only its batch and labels.
#include <pybind11/stl.h>

#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "cpu_bindings.h"
#include "ember/cpu.h"

namespace ember::bind {
namespace {

// The plan names an overlapping pair by their lists ("outputs must not share memory with weights").
void no_overlap(const char* fn, const std::pair<Arr, const char*>& out, const Arr& in,
                const char* in_name) {
  if (overlaps(out.first, in)) {
    throw py::value_error(std::string(fn) + ": " + out.second + " must not share memory with " +
                          in_name);
  }
}

class MlpPlan {
 public:
  MlpPlan(int64_t batch, int64_t in_features, const py::list& weights, const py::list& biases,
          const py::list& activations, const py::list& slopes, const py::list& outputs,
          const py::list& preacts, const py::list& grad_weights, const py::list& grad_biases,
          const py::list& grad_inputs, const py::list& workspaces, py::handle loss_grad,
          py::handle class_weight, double label_smoothing, const std::string& reduction,
          bool count_correct, const std::string& loss) {
    const char* fn = "MlpPlan";
    const Call c = cpu_call(fn);
    require(batch >= 1 && in_features >= 1, fn, "batch and in_features must be >= 1");
    const size_t L = weights.size();
    require(L >= 1, fn, "weights must hold at least one layer");
    for (const py::list* l : {&biases, &activations, &slopes, &outputs, &preacts, &grad_weights,
                              &grad_biases, &grad_inputs, &workspaces}) {
      require(l->size() == L, fn, "every per-layer list must have one entry per layer");
    }
    batch_ = batch;
    in_ = in_features;
    layers_.resize(L);
    int64_t in = in_features;
    // Keeps the array alive with the plan; the reference is used at once (a later push_back may
    // move the vector).
    auto keep = [&](Arr a, const char* name, bool output) -> Arr& {
      (output ? outputs_ : inputs_).push_back({std::move(a), name});
      return (output ? outputs_ : inputs_).back().first;
    };
    auto at = [](const char* list, size_t i) {
      return std::string(list) + "[" + std::to_string(i) + "]";
    };
    auto input = [&](py::handle obj, const char* list, size_t i, int ndim) -> const Arr& {
      return keep(array_arg(c, obj, at(list, i), DType::f32, ndim), list, false);
    };
    auto output = [&](py::handle obj, const char* list, size_t i,
                      const std::vector<int64_t>& shape) {
      return keep(out_arg(c, obj, at(list, i), shape), list, true).f32();
    };
    for (size_t i = 0; i < L; ++i) {
      MlpLayer& l = layers_[i];
      const Arr& w = input(weights[i], "weights", i, 2);
      const int64_t out = w.dim(0);
      expect_shape(c, w, {out, in});
      l.in = in;
      l.out = out;
      l.weight = w.cf32();
      l.act = parse_activation(fn, py::cast<std::string>(activations[i]));
      l.act_param = finite_scalar(fn, py::cast<double>(slopes[i]), at("slopes", i).c_str());
      l.y = output(outputs[i], "outputs", i, {batch, out});
      const bool identity = l.act == Activation::identity;
      if (!preacts[i].is_none()) {
        require(!identity, fn, at("preacts", i) + " is given for an identity layer");
        l.preact = output(preacts[i], "preacts", i, {batch, out});
      } else {
        const bool from_output = identity || l.act == Activation::relu ||
                                 (l.act == Activation::leaky_relu && l.act_param >= 0.0f);
        require(from_output, fn,
                at("preacts", i) + " is required unless the activation is identity, relu or "
                "leaky_relu with a slope >= 0");
      }
      l.grad_weight = output(grad_weights[i], "grad_weights", i, {out, in});
      const bool has_bias = !biases[i].is_none();
      require(has_bias == !grad_biases[i].is_none(), fn,
              at("grad_biases", i) + " must be given exactly when biases[i] is");
      if (has_bias) {
        const Arr& b = input(biases[i], "biases", i, 1);
        expect_shape(c, b, {out});
        l.bias = b.cf32();
        l.grad_bias = output(grad_biases[i], "grad_biases", i, {out});
      }
      require(i == 0 ? grad_inputs[i].is_none() : !grad_inputs[i].is_none(), fn,
              "grad_inputs[0] must be None and every other grad_inputs[i] an array");
      if (i > 0) l.grad_input = output(grad_inputs[i], "grad_inputs", i, {batch, in});
      require(identity == workspaces[i].is_none(), fn,
              at("workspaces", i) + " must be given exactly when the layer has an activation");
      if (!identity) l.workspace = output(workspaces[i], "workspaces", i, {batch, out});
      in = out;
    }
    classes_ = in;
    args_.loss.grad = keep(out_arg(c, loss_grad, "loss_grad", {batch, classes_}), "loss_grad",
                           true).f32();
    if (!class_weight.is_none()) {
      const Arr& cw = keep(array_arg(c, class_weight, "class_weight", DType::f32, 1),
                           "class_weight", false);
      expect_shape(c, cw, {classes_});
      const float* w = cw.cf32();
      for (int64_t j = 0; j < classes_; ++j) {
        require(std::isfinite(w[j]) && w[j] >= 0.0f, fn, "class_weight must be finite and >= 0");
      }
      args_.loss.class_weight = w;
    }
    require(label_smoothing >= 0.0 && label_smoothing <= 1.0, fn,
            "label_smoothing must be in [0, 1]");
    args_.loss.label_smoothing = static_cast<float>(label_smoothing);
    args_.loss.reduction = parse_reduction(fn, reduction);
    args_.count_correct = count_correct;
    require(loss == "cross_entropy" || loss == "mse", fn,
            "loss must be 'cross_entropy' or 'mse', got '" + loss + "'");
    args_.mse = loss == "mse";
    require(!args_.mse || (class_weight.is_none() && label_smoothing == 0.0 && !count_correct),
            fn, "loss 'mse' takes no class_weight, label_smoothing or count_correct");
    // Outputs are written while everything else is read: no output may share memory with another
    // array of the plan.
    for (size_t a = 0; a < outputs_.size(); ++a) {
      for (size_t b = a + 1; b < outputs_.size(); ++b) {
        no_overlap(fn, outputs_[a], outputs_[b].first, outputs_[b].second);
      }
      for (const auto& in_arr : inputs_) {
        no_overlap(fn, outputs_[a], in_arr.first, in_arr.second);
      }
    }
    args_.batch = batch;
    args_.layers = static_cast<int64_t>(L);
    args_.layer = layers_.data();
  }

  // y: int64 class labels (batch,) for cross-entropy; float32 targets (batch, classes) for mse.
  // layer_done(i), a Python callable or None: called (holding the GIL) as soon as layer i's
  // backward has written its gradients. Its first exception stops the calls and is raised once
  // the step is over (the step itself always completes: the gradients stay consistent).
  py::tuple step(py::handle x_obj, py::handle y_obj, py::handle layer_done) {
    const char* fn = "MlpPlan.step";
    const Call c = cpu_call(fn);
    const Arr x = array_arg(c, x_obj, "x", DType::f32, 2);
    expect_shape(c, x, {batch_, in_});
    Arr y;
    if (args_.mse) {
      y = array_arg(c, y_obj, "targets", DType::f32, 2);
      expect_shape(c, y, {batch_, classes_});
    } else {
      y = labels_arg(c, y_obj, batch_, classes_);
    }
    for (const auto& o : outputs_) {
      no_overlap(fn, o, x, "x");
      no_overlap(fn, o, y, args_.mse ? "targets" : "labels");
    }
    MlpStepArgs a = args_;
    a.x = x.cf32();
    if (args_.mse) {
      a.target = y.cf32();
    } else {
      a.labels = y.ci64();
    }
    struct Hook {
      py::handle fn;
      std::exception_ptr error;
      static void call(void* context, int64_t layer) {
        auto* h = static_cast<Hook*>(context);
        if (h->error) return;
        py::gil_scoped_acquire gil;
        try {
          h->fn(layer);
        } catch (...) {
          h->error = std::current_exception();
        }
      }
    } hook{layer_done, nullptr};
    if (!layer_done.is_none()) {
      a.layer_done = &Hook::call;
      a.layer_done_context = &hook;
    }
    MlpStepResult r;
    {
      py::gil_scoped_release release;
      r = cpu::mlp_train_step(a);
    }
    if (hook.error) std::rethrow_exception(hook.error);
    return py::make_tuple(r.loss, r.correct);
  }

 private:
  int64_t batch_ = 0, in_ = 0, classes_ = 0;
  std::vector<MlpLayer> layers_;
  MlpStepArgs args_;
  std::vector<std::pair<Arr, const char*>> outputs_, inputs_;
};

}  // namespace

void bind_mlp(py::module_& m) {
  py::class_<MlpPlan>(m, "MlpPlan", R"(One MLP training step per call: forward through Linear
layers with fused activations, softmax cross-entropy (and correct count) or mean squared error,
backward into the gradient arrays. Built once per batch size by ember.nn.Sequential (its
training fast path); the same kernels in the same order as the layer-by-layer path, so the same
bits.)")
      .def(py::init<int64_t, int64_t, const py::list&, const py::list&, const py::list&,
                    const py::list&, const py::list&, const py::list&, const py::list&,
                    const py::list&, const py::list&, const py::list&, py::handle, py::handle,
                    double, const std::string&, bool, const std::string&>(),
           py::arg("batch"), py::arg("in_features"), py::arg("weights"), py::arg("biases"),
           py::arg("activations"), py::arg("slopes"), py::arg("outputs"), py::arg("preacts"),
           py::arg("grad_weights"), py::arg("grad_biases"), py::arg("grad_inputs"),
           py::arg("workspaces"), py::arg("loss_grad"), py::arg("class_weight"),
           py::arg("label_smoothing"), py::arg("reduction"), py::arg("count_correct"),
           py::arg("loss") = "cross_entropy")
      .def("step", &MlpPlan::step, py::arg("x"), py::arg("y"), py::arg("layer_done") = py::none(),
           R"(Train on one batch (y: int64 labels for cross-entropy, float32 (batch, outputs)
targets for mse): returns (loss, correct) (correct is 0 unless counted). layer_done, when given,
is called with each layer's index as soon as that layer's backward has written its gradients
(last layer first); an exception it raises is raised after the step.)");
}

}  // namespace ember::bind
