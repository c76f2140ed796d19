// Helpers shared by the CPU and CUDA kernels: the surrogate shapes and bit access.
// Expression order follows snntorch.surrogate so float64 results are bit-identical
// (see reference.surrogate_grad).
#pragma once
#include <c10/util/Exception.h>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SNN_HD __host__ __device__ __forceinline__
#else
#define SNN_HD inline
#endif

namespace snntorch_sparse {

enum Shape : int64_t { FAST_SIGMOID = 0, ATAN = 1, SIGMOID = 2, TRIANGULAR = 3, STRAIGHT_THROUGH = 4 };
enum Reset : int64_t { SUBTRACT = 0, ZERO = 1, NONE = 2 };

// grad * g(u). T is the compute type (float for half/bfloat16/float, double for double);
// p is the python-level shape parameter; like PyTorch, python-scalar arithmetic is
// folded in double and rounded to T once when it meets a tensor.
template <typename T>
SNN_HD T surrogate_grad(T grad, T u, int64_t shape, double p_) {
  const T p = T(p_);
  switch (shape) {
    case FAST_SIGMOID: {
      T d = p * (u < T(0) ? -u : u) + T(1);
      return grad / (d * d);
    }
    case ATAN: {
      // (pi/2*alpha) is folded in double first, exactly like python evaluates it.
      T x = T(M_PI / 2 * p_) * u;
      return (T(1) / (x * x + T(1))) * T(p_ / 2) * grad;
    }
    case SIGMOID: {
      T e = exp(-p * u);
      T d = e + T(1);
      return grad * p * e / (d * d);
    }
    case TRIANGULAR: {
      T g = grad * p;
      return u >= T(0) ? -g : g;
    }
    default:  // STRAIGHT_THROUGH
      return grad;
  }
}

// The band half-width of `spike`: > 0, +inf meaning dense (as surrogate._check_b_th; NaN,
// 0, negative and -inf are refused: they would give an empty band or a silently dense one).
inline void check_b_th(double b_th, const char* op) {
  TORCH_CHECK_VALUE(b_th > 0, op, ": `b_th` must be > 0 (+inf: dense), got ", b_th);
}

SNN_HD bool get_bit(const int32_t* bits, int64_t k) {
  return (static_cast<uint32_t>(bits[k >> 5]) >> (k & 31)) & 1u;
}

}  // namespace snntorch_sparse
