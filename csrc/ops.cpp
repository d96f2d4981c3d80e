// The schemas of every invfast operator. Kernels register themselves in their
// own files (TORCH_LIBRARY_IMPL); fake kernels and autograd formulas are
// registered from Python, in invfast/_ops.py.
#include <torch/library.h>

#ifdef INVFAST_PYTHON_MODULE
#include <Python.h>

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
  return module;
}
}
#endif

TORCH_LIBRARY(invfast, m) {
  // Geometric warps.
  m.def(
      "affine_warp(Tensor images, Tensor matrices, str interpolation, str padding, "
      "bool align_corners, float fill, SymInt[2] size) -> Tensor");
  m.def(
      "affine_warp_out(Tensor images, Tensor matrices, str interpolation, str padding, "
      "bool align_corners, float fill, Tensor(a!) out) -> ()");
  m.def(
      "affine_warp_backward(Tensor grad_out, Tensor matrices, str interpolation, str padding, "
      "bool align_corners, SymInt[2] input_size) -> Tensor");

  // Consistency losses.
}
