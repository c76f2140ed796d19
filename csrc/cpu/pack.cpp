// CPU kernel of `nonzero_csc` (math: reference.nonzero_csc): the nonzeros of a row-major
// x [R, n_in] in column-major (CSC) order, without transposing x.
//
// Tasks own chunks of consecutive rows, so each streams a contiguous piece of x (column
// blocks would walk x with a row stride: page-crossing reads that the prefetcher drops).
// Pass 1 counts per (chunk, column) and notes a nonzero != 1; a serial prefix in column-major
// order turns the counts into each (chunk, column)'s first slot and colptr; pass 2 repeats
// the walk writing rows/values. Chunks are in row order, so rows ascend within a column.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/checks.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Elements per row chunk at least (amortises a task), and chunks per thread at most (keeps
// the [chunks, n_in] counts small next to x while still balancing the load).
constexpr int64_t kMinChunkElems = 1 << 16;
constexpr int64_t kChunksPerThread = 4;

std::tuple<Tensor, Tensor, Tensor> nonzero_csc_cpu(const Tensor& x_in, double max_density) {
  check_float(x_in, "nonzero_csc", "x");
  TORCH_CHECK(x_in.dim() == 2, "nonzero_csc: `x` must be 2-D [R, n_in], got shape ", x_in.sizes());
  TORCH_CHECK(x_in.size(0) <= INT32_MAX, "nonzero_csc: `x` may have at most 2^31 - 1 rows (int32 "
              "row indices), got ", x_in.size(0));
  const Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), n_in = x.size(1), numel = R * n_in;
  const int64_t chunks = std::clamp<int64_t>(
      std::min(numel / kMinChunkElems, kChunksPerThread * at::get_num_threads()), 1,
      std::max<int64_t>(R, 1));
  const int64_t rows_per_chunk = (R + chunks - 1) / chunks;
  // [k * n_in + c]: nonzeros of column c in chunk k (int32: at most R of them, and the
  // narrow type vectorises with float32 compares); then that pair's first slot in rows.
  std::vector<int32_t> counts(chunks * n_in, 0);
  std::vector<int64_t> slot(chunks * n_in);
  Tensor colptr = empty_output({n_in + 1}, x.options().dtype(at::kLong));
  int64_t* cp = colptr.mutable_data_ptr<int64_t>();
  std::atomic<bool> not_binary{false};
  Tensor rows, xvals;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nonzero_csc_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    // Pass 1: nonzeros per (chunk, column); whether any nonzero differs from 1.
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      bool other = false;
      for (int64_t k = k0; k < k1; ++k) {
        int32_t* c = counts.data() + k * n_in;
        const int64_t r1 = std::min(R, (k + 1) * rows_per_chunk);
        for (int64_t r = k * rows_per_chunk; r < r1; ++r) {
          const scalar_t* row = xp + r * n_in;
          int32_t o = 0;  // branch-free so that the loop vectorises
          for (int64_t j = 0; j < n_in; ++j) {
            const scalar_t v = row[j];
            c[j] += v != scalar_t(0);
            o |= (v != scalar_t(0)) & (v != scalar_t(1));
          }
          other |= o != 0;
        }
      }
      if (other) not_binary.store(true, std::memory_order_relaxed);
    });
    int64_t nnz = 0;
    for (int64_t c = 0; c < n_in; ++c) {
      cp[c] = nnz;
      for (int64_t k = 0; k < chunks; ++k) {
        slot[k * n_in + c] = nnz;
        nnz += counts[k * n_in + c];
      }
    }
    cp[n_in] = nnz;
    // Same expression as the reference (python float arithmetic in double).
    if (static_cast<double>(nnz) > max_density * static_cast<double>(numel)) {
      colptr = empty_output({0}, colptr.options());
      rows = empty_output({0}, x.options().dtype(at::kInt));
      xvals = empty_output({0}, x.options());
      return;
    }
    const bool with_vals = not_binary.load();
    rows = empty_output({nnz}, x.options().dtype(at::kInt));
    xvals = empty_output({with_vals ? nnz : 0}, x.options());
    int32_t* rp = rows.mutable_data_ptr<int32_t>();
    scalar_t* vp = with_vals ? xvals.mutable_data_ptr<scalar_t>() : nullptr;
    if (nnz == 0) return;
    // Pass 2: the same walk; each (chunk, column) appends at its own cursor.
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        int64_t* pos = slot.data() + k * n_in;
        const int64_t r1 = std::min(R, (k + 1) * rows_per_chunk);
        for (int64_t r = k * rows_per_chunk; r < r1; ++r) {
          const scalar_t* row = xp + r * n_in;
          for (int64_t j = 0; j < n_in; ++j) {
            if (row[j] == scalar_t(0)) continue;
            if (vp != nullptr) vp[pos[j]] = row[j];
            rp[pos[j]++] = static_cast<int32_t>(r);
          }
        }
      }
    });
  });
  return {colptr, rows, xvals};
}

}  // namespace

TORCH_LIBRARY_IMPL(snntorch_sparse, CPU, m) { m.impl("nonzero_csc", &nonzero_csc_cpu); }

}  // namespace snntorch_sparse
