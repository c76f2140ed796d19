// CPU kernel of `nonzero_csc` (math: reference.nonzero_csc): the nonzeros of a row-major
// x [R, n_in] in column-major (CSC) order, without transposing x, reading x once.
//
// Tasks own chunks of consecutive rows, so each streams a contiguous piece of x (column
// blocks would walk x with a row stride: page-crossing reads that the prefetcher drops).
// Pass 1 counts per (chunk, column), notes a nonzero != 1, and lists the chunk's nonzeros
// in row order (found through a bit per element, a word of 32 at a time); a serial prefix in
// column-major order turns the counts into each (chunk, column)'s first slot and colptr;
// pass 2 moves each list into its slots. Chunks are in row order, so rows ascend within a
// column. A chunk denser than the lists are meant for (a dense input, about to be
// refused) stops listing and only counts; pass 2 then walks its rows of x again.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/checks.h"
#include "cpu/sparse_args.h"

namespace snntorch_sparse {
namespace {

using at::Tensor;

// Elements per row chunk at least (amortises a task), and chunks per thread at most (keeps
// the [chunks, n_in] counts small next to x while still balancing the load).
constexpr int64_t kMinChunkElems = 1 << 16;
constexpr int64_t kChunksPerThread = 4;
// A chunk lists at most this share of its elements (above it the input is near the
// densest that is ever kept compact: lists would cost more than a second read of x).
constexpr double kListMaxDensity = 0.25;

// One chunk's nonzeros in row order: their columns and values, and where each row ends.
template <typename T>
struct ChunkList {
  std::vector<int32_t> cols;
  std::vector<T> vals;
  std::vector<int64_t> row_end;
  bool listed = true;  // false: the chunk was too dense, pass 2 reads x
};

// The nonzeros of row `row` as bits (bit j % 32 of words[j / 32]: row[j] != 0), in one
// loop per word that vectorises (per-lane shifts need AVX2, hence the clones); true if a
// nonzero is != 1.
template <typename T>
SNN_VECTOR_CLONES bool nonzero_words(const T* row, int64_t n, uint32_t* words) {
  uint32_t other = 0;
  for (int64_t w0 = 0; w0 < n; w0 += 32) {
    const T* v = row + w0;
    uint32_t word = 0;
    if (n - w0 >= 32) {
      for (int j = 0; j < 32; ++j) {
        word |= static_cast<uint32_t>(v[j] != T(0)) << j;
        other |= static_cast<uint32_t>(v[j] != T(0) && v[j] != T(1));
      }
    } else {
      for (int j = 0; j < n - w0; ++j) {
        word |= static_cast<uint32_t>(v[j] != T(0)) << j;
        other |= static_cast<uint32_t>(v[j] != T(0) && v[j] != T(1));
      }
    }
    words[w0 / 32] = word;
  }
  return other != 0;
}

// Counts row `row`'s nonzeros (its `words`, nonzero_words) into c[0:n] and, when the chunk
// still lists, appends them to `list`: work in the nonzeros, not in n. (No vector-width
// clones: it allocates, and a clone must not throw; see sparse_args.h.)
template <typename T>
void take_row(const T* row, const uint32_t* words, int64_t n, int32_t* c, ChunkList<T>* list) {
  for (int64_t w = 0; w < (n + 31) / 32; ++w) {
    for (uint32_t word = words[w]; word != 0u; word &= word - 1u) {
      const int64_t j = w * 32 + __builtin_ctz(word);
      ++c[j];
      if (list) {
        list->cols.push_back(static_cast<int32_t>(j));
        list->vals.push_back(row[j]);
      }
    }
  }
  if (list) list->row_end.push_back(static_cast<int64_t>(list->cols.size()));
}

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
    std::vector<ChunkList<scalar_t>> lists(chunks);
    const double list_density = std::min(max_density, kListMaxDensity);
    // Pass 1: nonzeros per (chunk, column), listed; whether any nonzero differs from 1.
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      bool other = false;
      std::vector<uint32_t> words((n_in + 31) / 32);
      for (int64_t k = k0; k < k1; ++k) {
        int32_t* c = counts.data() + k * n_in;
        ChunkList<scalar_t>& list = lists[k];
        const int64_t r0 = k * rows_per_chunk, r1 = std::min(R, r0 + rows_per_chunk);
        const double cap = list_density * static_cast<double>((r1 - r0) * n_in);
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = xp + r * n_in;
          other |= nonzero_words(row, n_in, words.data());
          take_row(row, words.data(), n_in, c, list.listed ? &list : nullptr);
          if (list.listed && static_cast<double>(list.cols.size()) > cap) list.listed = false;
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
    // Pass 2: each (chunk, column) appends at its own cursor, from the chunk's list or, for
    // a chunk that stopped listing, from x.
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        int64_t* pos = slot.data() + k * n_in;
        const int64_t r0 = k * rows_per_chunk, r1 = std::min(R, r0 + rows_per_chunk);
        const ChunkList<scalar_t>& list = lists[k];
        if (list.listed) {
          int64_t e = 0;
          for (int64_t r = r0; r < r1; ++r) {
            for (const int64_t end = list.row_end[r - r0]; e < end; ++e) {
              const int32_t j = list.cols[e];
              if (vp != nullptr) vp[pos[j]] = list.vals[e];
              rp[pos[j]++] = static_cast<int32_t>(r);
            }
          }
          continue;
        }
        for (int64_t r = r0; r < r1; ++r) {
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
