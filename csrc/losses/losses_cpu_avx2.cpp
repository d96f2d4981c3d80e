// The AVX2 + FMA build of the CPU row kernels, chosen at run time by
// best_kernels() on processors that have both.
//
// NOTE: torch's extension builder takes one set of flags for every file, so
// the instruction set is switched on here, before any header, rather than
// with -mavx2 -mfma. Everything this file instantiates lives in namespaces of
// its own (at::vec::AVX2, invfast::losses::avx2), so no AVX2 code is shared
// with the rest of the library through the linker. The condition is the one
// that defines INVFAST_HAVE_AVX2_KERNELS in losses_cpu_rows.h.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
// NOTE: g++ does not define the feature macros for a target pragma, and
// sleef.h and at::vec test them to declare their 256-bit functions.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define INVFAST_MATH_ISA avx2
#include "losses_cpu_kernels.h"
#endif
