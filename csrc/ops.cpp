// The schemas of every invfast operator. Kernels register themselves in their
// own files (TORCH_LIBRARY_IMPL); fake kernels and the warp's autograd formula
// are registered from Python, in invfast/_ops.py, the losses' autograd in
// csrc/losses/losses_autograd.cpp.
#include <torch/library.h>

#ifdef INVFAST_PYTHON_MODULE
#include <Python.h>

#include "losses/losses_cpu_rows.h"

// Importing invfast._C loads this library, which runs the registrations below.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&def);
  if (module == nullptr) {
    return nullptr;
  }
  // What this binary was built from and for; invfast.backend_info() reports it.
  PyModule_AddStringConstant(module, "version", INVFAST_VERSION);
  PyModule_AddStringConstant(module, "torch_version", INVFAST_TORCH_VERSION);
  PyModule_AddStringConstant(module, "cuda_version", INVFAST_CUDA_VERSION);
  // The instruction set of the CPU loss kernels this process runs.
  PyModule_AddStringConstant(module, "cpu_loss_kernels", invfast::losses::cpu::best_kernels().name);
  return module;
}
}
#endif

TORCH_LIBRARY(invfast, m) {
  // Geometric warps.
  // matrices (B, 2|3, 3) give (B, C, H', W'); (K, B, 2|3, 3) give K views,
  // (K, B, C, H', W'), in one pass. fill holds 1 or C values.
  m.def(
      "affine_warp(Tensor images, Tensor matrices, str interpolation, str padding, "
      "bool align_corners, float[] fill, SymInt[2] size, ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "affine_warp_out(Tensor images, Tensor matrices, str interpolation, str padding, "
      "bool align_corners, float[] fill, Tensor(a!) out) -> ()");
  // Returns (d images or an empty tensor, d matrices or an empty tensor); the
  // matrix gradient is computed when images are given.
  m.def(
      "affine_warp_backward(Tensor grad_out, Tensor? images, Tensor matrices, str interpolation, "
      "str padding, bool align_corners, float[] fill, SymInt[2] input_size, bool images_grad) "
      "-> (Tensor, Tensor)");
  // uint8 images in, ((warped / 255) - mean) / std out; fill in pixel units.
  m.def(
      "warp_normalize(Tensor images, Tensor matrices, Tensor mean, Tensor std, "
      "str interpolation, str padding, bool align_corners, float[] fill, SymInt[2] size, "
      "ScalarType out_dtype) -> Tensor");
  m.def(
      "warp_normalize_out(Tensor images, Tensor matrices, Tensor mean, Tensor std, "
      "str interpolation, str padding, bool align_corners, float[] fill, Tensor(a!) out) -> ()");

  // Consistency losses. Each returns the loss and, for every input whose
  // gradient is asked for, d(loss)/d(input) computed in the same pass (an
  // empty tensor otherwise); the autograd formula scales it by the upstream
  // gradient. See invfast/losses.py for the meaning of the arguments.
  m.def(
      "kl_consistency(Tensor student, Tensor teacher, float temperature, "
      "float teacher_temperature, Tensor? mask, str reduction, bool grad_student, "
      "bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  m.def(
      "symmetric_kl(Tensor a, Tensor b, float temperature, Tensor? mask, str reduction, "
      "bool grad_a, bool grad_b) -> (Tensor, Tensor, Tensor)");
  m.def(
      "mse_consistency(Tensor student, Tensor teacher, float temperature, Tensor? mask, "
      "str reduction, bool grad_student, bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  m.def(
      "js_consistency(Tensor[] logits, float[]? weights, float temperature, str reduction, "
      "bool compute_grad) -> (Tensor, Tensor[])");
  // FixMatch returns (loss, kept fraction, gradient of the *sum* of the kept
  // rows' cross-entropies); the normalisation is applied in autograd.
  m.def(
      "fixmatch_loss(Tensor weak, Tensor strong, float threshold, float temperature, "
      "str normalize, bool compute_grad) -> (Tensor, Tensor, Tensor)");

  // RandomAffine's parameter sampling. counter_uniform draws n uniforms per
  // sample (float64, 24 random bits) from a hash of (seed, step, id); seed and
  // step hold one int64 each, on the CPU or on the ids' device.
  m.def("counter_uniform(Tensor sample_ids, Tensor seed, Tensor step, int n) -> Tensor");
  // 14 uniforms per sample (any strides) to (B, 2, 3) float32 matrices; see
  // csrc/augment/augment.h for the layout of params, crop and sizes.
  m.def(
      "random_affine_matrices(Tensor uniforms, float[] params, float[] angles, float[] crop, "
      "SymInt[4] sizes) -> Tensor");
}
