// The AVX-512 build of the CPU row kernels, chosen at run time by
// best_kernels() on processors with AVX-512 F, BW, VL and DQ (the set ATen's
// own AVX512 kernels need), unless ATEN_CPU_CAPABILITY asks for less.
//
// As in losses_cpu_avx2.cpp, the instruction set is switched on here, before
// any header, and everything this file instantiates lives in namespaces of
// its own (at::vec::AVX512, invfast::losses::avx512).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
// NOTE: g++ does not define the feature macros for a target pragma, and
// sleef.h and at::vec test them to declare their 512-bit functions.
#ifndef __AVX512F__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define INVFAST_MATH_ISA avx512
#include "losses_cpu_kernels.h"
#endif
