// Argument checks shared by the CPU kernels: every error names the op and the argument.
#pragma once
#include <ATen/ATen.h>

namespace snntorch_sparse {

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": `", name, "` must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `", name,
              "` must be float32 or float64, got ", t.scalar_type());
}

}  // namespace snntorch_sparse
