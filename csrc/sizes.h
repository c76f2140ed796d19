// Size arithmetic on user-given int64 arguments, shared by the CPU and CUDA ops: a product
// or sum that does not fit int64 is a clear error, never a wrapped size that allocates too
// little (a crash) or loops for ever.
#pragma once
#include <c10/util/Exception.h>
#include <cstdint>

namespace snntorch_sparse {

inline int64_t checked_mul(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &r), op, ": ", what, " = ", a, " * ", b,
              " overflows int64");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &r), op, ": ", what, " = ", a, " + ", b,
              " overflows int64");
  return r;
}

}  // namespace snntorch_sparse
