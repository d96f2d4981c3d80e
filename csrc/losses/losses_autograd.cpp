// Autograd of the consistency losses, one formula for every device.
//
// Each loss op returns, next to the loss, d(loss)/d(input) for every input
// whose gradient was asked for (computed in the forward pass, already
// multiplied by the mask and the reduction's 1/N), or an empty tensor. Those
// are the only (N, C) buffers kept for backward, which multiplies them by the
// upstream gradient: per row for reduction "none", by a scalar otherwise.
//
// NOTE: these formulas are C++ autograd functions rather than Python ones
// (torch.library.register_autograd): on CPU-sized batches the Python
// plumbing of a call and its backward cost as much as the kernel itself.
#include <ATen/ATen.h>
#include <ATen/SavedTensorHooks.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "losses.h"

namespace invfast {
namespace losses {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What forward returns for a gradient buffer it saves: another tensor on the
// same memory, so that backward can tell whether the op's caller still
// holds it (see scale_in_place).
at::Tensor shared(const at::Tensor& saved) { return saved.variable_data(); }

// Whether backward may scale a saved gradient in place and hand the buffer on
// as the input's gradient, saving an (N, C) allocation and a pass.
// NOTE: only when nothing can see the buffer again: the graph is not retained
// (retain_graph=True would let a second backward read it); the op's caller
// no longer holds the tensor forward returned on the same memory
// (invfast.losses drops it at once); no saved-tensor hooks were active in
// forward (`hooked`: what their unpack hook hands back may be a buffer of
// theirs, an activation pool's, that they reuse); and the tensor is a plain
// one with no mode active (under torch.compile's tracing, tensors are fakes
// or functional wrappers, and the traced graph should hold the out-of-place
// product).
bool scale_in_place(const at::Tensor& saved, bool hooked) {
  if (hooked || torch::autograd::get_current_graph_task_keep_graph() ||
      c10::impl::TorchDispatchModeTLS::any_modes_set()) {
    return false;
  }
  const c10::DispatchKeySet wrapped =
      c10::python_ks |
      c10::DispatchKeySet({c10::DispatchKey::Functionalize, c10::DispatchKey::FuncTorchGradWrapper,
                           c10::DispatchKey::FuncTorchBatched});
  return !saved.key_set().has_any(wrapped) && saved.has_storage() &&
         saved.storage().use_count() == 1;
}

// The saved d(loss)/d(input) times the upstream gradient (0-dim, or one value per row).
at::Tensor scale_saved(const at::Tensor& saved, const at::Tensor& grad, bool per_row, bool hooked) {
  const at::Tensor g = per_row ? grad.unsqueeze(1) : grad;
  if (scale_in_place(saved, hooked)) {
    // NOTE: x * 1 is x exactly, so a loss whose upstream gradient is 1 (it
    // was backward()'s root, or a term of a plain sum) hands its buffer on
    // untouched. Only a 0-dim CPU gradient is looked at: reading one on a
    // GPU would wait for the device.
    if (!per_row && g.device().is_cpu() && g.numel() == 1 && g.item<double>() == 1.0) {
      return saved;
    }
    return saved.mul_(g);
  }
  return saved * g.to(saved.scalar_type());
}

// The gradients backward returns, as they may leave it.
// NOTE: the formulas here are first derivatives only. Under create_graph
// (a gradient penalty, an inner optimisation loop) the gradients pass
// through a node that raises if anything differentiates them again, rather
// than leaving them as constants whose second-order terms would silently be
// zero; first-order uses of create_graph work as before.
variable_list first_order_only(const char* op, variable_list out) {
  if (!at::GradMode::is_enabled()) {
    return out;
  }
  variable_list defined;
  std::vector<size_t> where;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i].defined()) {
      defined.push_back(out[i].detach().requires_grad_());
      where.push_back(i);
    }
  }
  if (defined.empty()) {
    return out;
  }
  torch::autograd::DelayedError error(
      std::string("invfast::") + op +
          " has no second derivative; differentiate the plain-PyTorch version in "
          "invfast.reference instead",
      static_cast<int64_t>(defined.size()));
  variable_list wrapped = error.apply(std::move(defined));
  for (size_t k = 0; k < where.size(); ++k) {
    out[where[k]] = wrapped[k];
  }
  return out;
}

// Whether saved-tensor hooks are active, so that they, not autograd, keep
// what forward saves. Read in forward and kept for backward.
bool saved_tensor_hooks_active() {
  return at::SavedTensorDefaultHooks::get_hooks(/*ignore_is_tracing=*/true).has_value();
}

void check_wanted(bool wanted, const char* op, const char* name, const char* flag) {
  TORCH_CHECK(wanted, "invfast::", op, ": a gradient for ", name, " is needed but the op ran with ",
              flag, "=False; call it through invfast.losses, which sets the flag");
}

bool needs_grad(const at::Tensor& x) { return at::GradMode::is_enabled() && x.requires_grad(); }

// ---------------------------------------------------------------------------
// kl_consistency, symmetric_kl, mse_consistency.

using PairKernel = PairResult(const at::Tensor&, const at::Tensor&, double, double,
                              const c10::optional<at::Tensor>&, c10::string_view, bool, bool);

// The op's kernel below autograd, seen with kl_consistency's signature.
PairResult call_pair(Pair kind, const at::Tensor& a, const at::Tensor& b, double ta, double tb,
                     const c10::optional<at::Tensor>& mask, c10::string_view reduction, bool grad_a,
                     bool grad_b) {
  using Pair7 = PairResult(const at::Tensor&, const at::Tensor&, double,
                           const c10::optional<at::Tensor>&, c10::string_view, bool, bool);
  static const auto kl = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("invfast::kl_consistency", "")
                             .typed<PairKernel>();
  static const auto sym =
      c10::Dispatcher::singleton().findSchemaOrThrow("invfast::symmetric_kl", "").typed<Pair7>();
  static const auto mse =
      c10::Dispatcher::singleton().findSchemaOrThrow("invfast::mse_consistency", "").typed<Pair7>();
  switch (kind) {
    case Pair::KL:
      return kl.call(a, b, ta, tb, mask, reduction, grad_a, grad_b);
    case Pair::SymmetricKL:
      return sym.call(a, b, ta, mask, reduction, grad_a, grad_b);
    default:
      return mse.call(a, b, ta, mask, reduction, grad_a, grad_b);
  }
}

struct PairFunction : public torch::autograd::Function<PairFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                               const c10::optional<at::Tensor>& mask, Pair kind, double ta,
                               double tb, c10::string_view reduction, bool grad_a, bool grad_b) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, ga, gb] = call_pair(kind, a, b, ta, tb, mask, reduction, grad_a, grad_b);
    at::Tensor out_a = shared(ga), out_b = shared(gb);
    ctx->mark_non_differentiable({out_a, out_b});
    // NOTE: the gradient outputs get no gradient; without this autograd
    // would fill two (N, C) buffers of zeros for them on every backward.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({ga, gb});
    ctx->saved_data["kind"] = static_cast<int64_t>(kind);
    ctx->saved_data["hooked"] = saved_tensor_hooks_active();
    ctx->saved_data["per_row"] = reduction == "none";
    ctx->saved_data["grad_a"] = grad_a;
    ctx->saved_data["grad_b"] = grad_b;
    return {loss, out_a, out_b};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One entry per argument of forward: a, b, mask, then the options.
    variable_list out(9);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) {
      return out;
    }
    const variable_list saved = ctx->get_saved_variables();
    const auto kind = static_cast<Pair>(ctx->saved_data["kind"].toInt());
    const bool sym = kind == Pair::SymmetricKL;
    const char* op = kind == Pair::KL ? "kl_consistency" : sym ? "symmetric_kl" : "mse_consistency";
    const bool per_row = ctx->saved_data["per_row"].toBool();
    const bool wanted[2] = {ctx->saved_data["grad_a"].toBool(), ctx->saved_data["grad_b"].toBool()};
    const char* names[2] = {sym ? "a" : "student", sym ? "b" : "teacher"};
    const char* flags[2] = {sym ? "grad_a" : "grad_student", sym ? "grad_b" : "grad_teacher"};
    for (int i = 0; i < 2; ++i) {
      if (ctx->needs_input_grad(i)) {
        check_wanted(wanted[i], op, names[i], flags[i]);
        out[i] = scale_saved(saved[i], grad, per_row, ctx->saved_data["hooked"].toBool());
      }
    }
    return first_order_only(op, std::move(out));
  }
};

PairResult pair_autograd(const char* /*op*/, Pair kind, const at::Tensor& a, const at::Tensor& b,
                         double ta, double tb, const c10::optional<at::Tensor>& mask,
                         c10::string_view reduction, bool grad_a, bool grad_b) {
  if (!needs_grad(a) && !needs_grad(b)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_pair(kind, a, b, ta, tb, mask, reduction, grad_a, grad_b);
  }
  variable_list out = PairFunction::apply(a, b, mask, kind, ta, tb, reduction, grad_a, grad_b);
  return std::make_tuple(out[0], out[1], out[2]);
}

// ---------------------------------------------------------------------------
// js_consistency.

using JsResult = std::tuple<at::Tensor, std::vector<at::Tensor>>;

JsResult call_js(at::TensorList logits, c10::optional<at::ArrayRef<double>> weights,
                 double temperature, c10::string_view reduction, bool compute_grad) {
  static const auto js = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("invfast::js_consistency", "")
                             .typed<JsResult(at::TensorList, c10::optional<at::ArrayRef<double>>,
                                             double, c10::string_view, bool)>();
  return js.call(logits, weights, temperature, reduction, compute_grad);
}

struct JsFunction : public torch::autograd::Function<JsFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList logits,
                               c10::optional<at::ArrayRef<double>> weights, double temperature,
                               c10::string_view reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grads] = call_js(logits, weights, temperature, reduction, compute_grad);
    variable_list out{loss};
    for (const at::Tensor& g : grads) {
      out.push_back(shared(g));
    }
    ctx->mark_non_differentiable(variable_list(out.begin() + 1, out.end()));
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(grads);
    ctx->saved_data["views"] = static_cast<int64_t>(logits.size());
    ctx->saved_data["hooked"] = saved_tensor_hooks_active();
    ctx->saved_data["per_row"] = reduction == "none";
    ctx->saved_data["compute_grad"] = compute_grad;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One entry per view, then weights, temperature, reduction, compute_grad.
    const int64_t K = ctx->saved_data["views"].toInt();
    variable_list out(K + 4);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) {
      return out;
    }
    check_wanted(ctx->saved_data["compute_grad"].toBool(), "js_consistency", "logits",
                 "compute_grad");
    const variable_list saved = ctx->get_saved_variables();
    const bool per_row = ctx->saved_data["per_row"].toBool();
    for (int64_t k = 0; k < K; ++k) {
      if (ctx->needs_input_grad(k)) {
        out[k] = scale_saved(saved[k], grad, per_row, ctx->saved_data["hooked"].toBool());
      }
    }
    return first_order_only("js_consistency", std::move(out));
  }
};

JsResult js_consistency_autograd(at::TensorList logits, c10::optional<at::ArrayRef<double>> weights,
                                 double temperature, c10::string_view reduction,
                                 bool compute_grad) {
  bool any = false;
  for (const at::Tensor& x : logits) {
    any = any || needs_grad(x);
  }
  if (!any) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_js(logits, weights, temperature, reduction, compute_grad);
  }
  variable_list out = JsFunction::apply(logits, weights, temperature, reduction, compute_grad);
  return std::make_tuple(out[0], std::vector<at::Tensor>(out.begin() + 1, out.end()));
}

// ---------------------------------------------------------------------------
// fixmatch_loss: the op's gradient is that of the kept rows' sum; backward
// divides by the normaliser, with tensor arithmetic (no read-back).

using FixResult3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

FixResult3 call_fixmatch(const at::Tensor& weak, const at::Tensor& strong, double threshold,
                         double temperature, c10::string_view normalize, bool compute_grad) {
  static const auto fix = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("invfast::fixmatch_loss", "")
                              .typed<FixResult3(const at::Tensor&, const at::Tensor&, double,
                                                double, c10::string_view, bool)>();
  return fix.call(weak, strong, threshold, temperature, normalize, compute_grad);
}

struct FixMatchFunction : public torch::autograd::Function<FixMatchFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weak,
                               const at::Tensor& strong, double threshold, double temperature,
                               c10::string_view normalize, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, kept, grad] =
        call_fixmatch(weak, strong, threshold, temperature, normalize, compute_grad);
    at::Tensor out_grad = shared(grad);
    ctx->mark_non_differentiable({kept, out_grad});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({grad, kept});
    // The number of rows, symbolic under torch.compile's dynamic shapes.
    ctx->saved_data["rows"] = (weak.sym_numel() / weak.sym_size(1)).max(1);
    ctx->saved_data["by_kept"] = normalize == "kept";
    ctx->saved_data["hooked"] = saved_tensor_hooks_active();
    ctx->saved_data["compute_grad"] = compute_grad;
    return {loss, kept, out_grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // weak, strong, threshold, temperature, normalize, compute_grad.
    variable_list out(6);
    const at::Tensor& grad = grads[0];
    if (!grad.defined() || !ctx->needs_input_grad(1)) {
      return out;
    }
    check_wanted(ctx->saved_data["compute_grad"].toBool(), "fixmatch_loss", "strong",
                 "compute_grad");
    const variable_list saved = ctx->get_saved_variables();
    const at::Scalar rows(ctx->saved_data["rows"].toSymInt());
    at::Tensor scale;
    if (ctx->saved_data["by_kept"].toBool()) {
      scale = grad / at::round(saved[1] * rows).clamp_min(1.0);
    } else {
      scale = grad / rows;
    }
    out[1] = scale_saved(saved[0], scale, false, ctx->saved_data["hooked"].toBool());
    return first_order_only("fixmatch_loss", std::move(out));
  }
};

FixResult3 fixmatch_loss_autograd(const at::Tensor& weak, const at::Tensor& strong,
                                  double threshold, double temperature, c10::string_view normalize,
                                  bool compute_grad) {
  if (!needs_grad(weak) && !needs_grad(strong)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_fixmatch(weak, strong, threshold, temperature, normalize, compute_grad);
  }
  variable_list out =
      FixMatchFunction::apply(weak, strong, threshold, temperature, normalize, compute_grad);
  return std::make_tuple(out[0], out[1], out[2]);
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, Autograd, m) {
  using Ops = PairOps<&pair_autograd>;
  m.impl("kl_consistency", &Ops::kl_consistency);
  m.impl("symmetric_kl", &Ops::symmetric_kl);
  m.impl("mse_consistency", &Ops::mse_consistency);
  m.impl("js_consistency", &js_consistency_autograd);
  m.impl("fixmatch_loss", &fixmatch_loss_autograd);
}

}  // namespace losses
}  // namespace invfast
