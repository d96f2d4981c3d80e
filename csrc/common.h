// Definitions shared by every invfast kernel, on the host and on the device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define INVFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INVFAST_HOST_DEVICE inline
#endif

namespace invfast {

// Accumulation type of a storage type: fp32 for fp32 and narrower, fp64 for fp64.
template <typename T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};
template <typename T>
using acc_t = typename acc_type<T>::type;

}  // namespace invfast
