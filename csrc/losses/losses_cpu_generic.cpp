// The portable build of the CPU row kernels: at::vec's generic Vectorized,
// which the compiler vectorises for the baseline instruction set.
#define INVFAST_MATH_ISA generic
#include "losses_cpu_kernels.h"
