# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
Compiled CPU loops for the fast hardmax kernels, built on first use with `torch.utils.cpp_extension` for the machine's
own instruction set (a C++ compiler and ninja are needed, about a minute once; without them the kernels run their
PyTorch code, with the same labels up to the rounding of the scores, and less speed).

- `nearest_keys(query, key)`: for each query row the first index of its largest dot product with the keys,
  `argmax_j query_i . key_j`, without the `(n, k)` scores: rows are taken a vector register at a time (8 float32 or
  4 float64 with AVX2, twice that with AVX-512), each key's score is accumulated in coordinate order, and the best so far is kept in registers.
  With at most four registers of keys (k <= 32 float32 with AVX2) the keys lie across the lanes instead, a few rows
  at a time, with the same scores and labels.
  Groups of rows run in parallel on PyTorch's intra-op threads; the result does not depend on their number.
  `nearest_values(query, key, values)` returns each row's maximiser's value row instead.
- `segment_sums(values, codes, visible, num_codes)`: per group, `sums[j] = Σ_{i visible, code_i = j} values_i` and
  the counts. Rows are summed in order within fixed blocks of rows, blocks in parallel, and the blocks' partial sums
  are added in order: the result does not depend on the number of threads. The sums are accumulated in double for
  float32 and float64 values alike (returned as float64). Strided rows (the point slice of the compact tokens) are
  read in place.

- `membership_sums(query, key, dim, ...)`: one pass of a weighted assignment (soft, gmm, fuzzy): per tile of rows the
  scores of every key (the loop of `nearest_keys`), the weights by the assign block's rule (softmax with a vectorised
  exponential, or fuzzy c-means on the squared differences) and the update's weighted sums, without the `(n, k)`
  weights.

In eager code the module's functions are called directly; while `torch.compile` traces, the custom operators.

Set `KMEANS_TRANSFORMER_CPU_KERNELS=0` to use the PyTorch code only. The first use waits at most
`KMEANS_TRANSFORMER_BUILD_TIMEOUT` seconds (default 600) for the build, then runs the PyTorch code with a warning; a
build lock left by a killed build is cleared (see `_load`).
"""

import contextlib
import hashlib
import logging
import math
import os
import platform
import shutil
import sysconfig
import threading
import time
import warnings

import torch


try:
    import fcntl
except ImportError:  # not POSIX: torch's own build lock alone
    fcntl = None

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// Vectors of query rows: one register of the machine's widest vectors, 64 bytes with AVX-512 (16 floats or 8
// doubles), else 32 (8 or 4: a 64-byte vector would take two AVX2 registers, and the key loop's accumulators would
// no longer fit in the 16), and their labels. Every row's arithmetic is the same whatever the width.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
typedef float FloatVec __attribute__((vector_size(kVectorBytes)));
typedef int32_t FloatIndex __attribute__((vector_size(kVectorBytes)));
typedef double DoubleVec __attribute__((vector_size(kVectorBytes)));
typedef int64_t DoubleIndex __attribute__((vector_size(kVectorBytes)));
template <typename T> struct Lanes;
template <> struct Lanes<float> {
  using vec = FloatVec; using index = FloatIndex; using label = int32_t; static constexpr int value = kVectorBytes / 4;
};
template <> struct Lanes<double> {
  using vec = DoubleVec; using index = DoubleIndex; using label = int64_t; static constexpr int value = kVectorBytes / 8;
};
template <typename T> using Vec = typename Lanes<T>::vec;
template <typename T> using Index = typename Lanes<T>::index;

// Labels of a tile of up to `kTileVectors * Lanes` rows. The rows are transposed into `columns`, one column vector
// per coordinate for each vector of rows (`columns[v * e + c]`; a full vector of 8 float rows 8 coordinates at a
// time in registers, `transpose_block`). Then, a few keys and vectors of rows at a time (`tile_scores`), every row
// accumulates each key's score `Σ_e q_ie key_je` in coordinate order and compares it with its best so far, the keys
// in increasing order (strictly greater wins, so the first maximiser is kept). The tile reuses each block of keys for
// all its rows while the block is in L1: k = 1024 keys of 129 floats (528 KB) stream from memory once per tile, not
// once per vector of rows. A row's scores and comparisons are the same whatever the tile.
constexpr int kTileVectors = 16;

#if defined(__AVX__) && !defined(__AVX512F__)
#include <immintrin.h>
// 8 coordinates of 8 float rows (`ldq` apart) into 8 column vectors `out[c * 8 + r] = rows[r * ldq + c]`, in registers.
static inline void transpose_block(const float* rows, int64_t ldq, float* out) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + i * ldq);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * 8, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * 8, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}
#endif

// A tile's rows transposed into `columns` (`columns[v * e + c]`, lane r: row v * L + r; the lanes past `count` 0);
// returns the number of vectors of rows.
template <typename T>
static int64_t transpose_tile(const T* rows, int64_t count, int64_t ldq, int64_t e, std::vector<Vec<T>>& columns) {
  constexpr int L = Lanes<T>::value;
  const int64_t vectors = (count + L - 1) / L;
  T* lanes = reinterpret_cast<T*>(columns.data());  // lane r of vector (v, c) is lanes[(v * e + c) * L + r]
  for (int64_t v = 0; v < vectors; ++v) {
    const int64_t in_vector = std::min<int64_t>(L, count - v * L);
    T* block = lanes + v * e * L;
    int64_t done = 0;  // coordinates already transposed
#if defined(__AVX__) && !defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value && L == 8) {
      if (in_vector == L) for (; done + 8 <= e; done += 8) transpose_block(rows + v * L * ldq + done, ldq, block + done * L);
    }
#endif
    if (in_vector < L) std::fill(block, block + e * L, T(0));
    for (int64_t r = 0; r < in_vector; ++r) {
      const T* row = rows + (v * L + r) * ldq;
      for (int64_t c = done; c < e; ++c) block[c * L + r] = row[c];
    }
  }
  return vectors;
}

// Every score of a transposed tile's rows with every key, handed to `sink(score, v, j)` (a vector of rows' scores
// with key j): `Σ_c q_ic key_jc`, or with `Differences` the squared distance `Σ_c (q_ic - key_jc)^2`, accumulated in
// coordinate order. A register tile of `kScoreVectors` vectors of rows by `kScoreKeys` keys at a time (12 sums, the
// row vectors and a broadcast key coordinate in AVX2's 16 registers): per coordinate 8 loads for 12 multiply-adds,
// and 12 independent sums to cover the multiply-add's latency. Each row meets the keys in increasing order.
constexpr int kScoreVectors = 2, kScoreKeys = 6;

template <typename T, bool Differences, int VR, int KR, typename Sink>
static inline void score_block(const Vec<T>* x, int64_t e, const T* k0, int64_t v, int64_t j, Sink& sink) {
  Vec<T> s[VR][KR] = {};
  for (int64_t c = 0; c < e; ++c) {
    Vec<T> xs[VR];
    for (int r = 0; r < VR; ++r) xs[r] = x[r * e + c];
    for (int t = 0; t < KR; ++t) {
      const T key = k0[t * e + c];
      for (int r = 0; r < VR; ++r) {
        if constexpr (Differences) { const Vec<T> difference = xs[r] - key; s[r][t] += difference * difference; }
        else s[r][t] += xs[r] * key;
      }
    }
  }
  for (int r = 0; r < VR; ++r)
    for (int t = 0; t < KR; ++t) sink(s[r][t], v + r, j + t);
}

template <typename T, bool Differences, int KR, typename Sink>
static inline void score_keys(const std::vector<Vec<T>>& columns, int64_t vectors, const T* k0, int64_t j, int64_t e,
                              Sink& sink) {
  int64_t v = 0;
  for (; v + kScoreVectors <= vectors; v += kScoreVectors)
    score_block<T, Differences, kScoreVectors, KR>(columns.data() + v * e, e, k0, v, j, sink);
  for (; v < vectors; ++v) score_block<T, Differences, 1, KR>(columns.data() + v * e, e, k0, v, j, sink);
}

template <typename T, bool Differences = false, typename Sink>
static void tile_scores(const std::vector<Vec<T>>& columns, int64_t vectors, const T* keys, int64_t k, int64_t e,
                        Sink&& sink) {
  int64_t j = 0;
  for (; j + kScoreKeys <= k; j += kScoreKeys)
    score_keys<T, Differences, kScoreKeys>(columns, vectors, keys + j * e, j, e, sink);
  static_assert(kScoreKeys <= 6, "the remainder below");
  switch (k - j) {
    case 5: score_keys<T, Differences, 5>(columns, vectors, keys + j * e, j, e, sink); break;
    case 4: score_keys<T, Differences, 4>(columns, vectors, keys + j * e, j, e, sink); break;
    case 3: score_keys<T, Differences, 3>(columns, vectors, keys + j * e, j, e, sink); break;
    case 2: score_keys<T, Differences, 2>(columns, vectors, keys + j * e, j, e, sink); break;
    case 1: score_keys<T, Differences, 1>(columns, vectors, keys + j * e, j, e, sink); break;
    default: break;
  }
}

// Small k (at most kPanelVectors vectors of keys): the keys are transposed once into a panel (`panel[c * V + t]`,
// lane l: key t * L + l; 0 past k) and the rows are read as they lie, a few at a time: each coordinate of
// a row, broadcast, meets the V vectors of keys, so that every register holds L of the row's scores, each
// accumulated `Σ_c q_ic key_jc` in coordinate order (the numbers of `tile_scores`). A row's label is then found
// across its lanes: m, the largest of its scores that are not NaN (-inf past k), and the first key whose score equals
// m, or 0 where m is -inf: the first strict maximiser, as the tile's running comparison finds. `kPanelRows[V - 1]`
// rows at a time keep their R × V sums, the V vectors of keys and a broadcast coordinate in AVX2's 16 registers (R
// = 8, 5, 3, 2: measured), and the rows `kPanelAhead` bytes on are prefetched.
constexpr int kPanelVectors = 4, kPanelRows[kPanelVectors] = {8, 5, 3, 2};
constexpr int64_t kPanelAhead = 4096;

// A thread's workspace for `nearest_group`: a tile's transposed rows, or the panel of the keys at `panel_keys`.
template <typename T>
struct Scoring {
  std::vector<Vec<T>> columns, panel;
  const T* panel_keys = nullptr;
  explicit Scoring(int64_t e) : columns(e * kTileVectors) {}
};

template <typename T>
static inline T largest_lane(const Vec<T>& x) {
#if defined(__AVX__) && !defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    const __m256 v = (__m256)x;
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  } else {
    const __m256d v = (__m256d)x;
    const __m128d h = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
  }
#else
  T m = x[0];
  for (int l = 1; l < Lanes<T>::value; ++l) m = x[l] > m ? x[l] : m;
  return m;
#endif
}

// Bit l set where lane l of `x` equals `value`.
template <typename T>
static inline uint64_t equal_lanes(const Vec<T>& x, T value) {
  const Index<T> equal = x == (Vec<T>{} + value);
#if defined(__AVX__) && !defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) return static_cast<uint64_t>(_mm256_movemask_ps((__m256)equal));
  else return static_cast<uint64_t>(_mm256_movemask_pd((__m256d)equal));
#else
  uint64_t bits = 0;
  for (int l = 0; l < Lanes<T>::value; ++l) bits |= static_cast<uint64_t>(equal[l] != 0) << l;
  return bits;
#endif
}

template <typename T, int V, int R>
static inline void panel_rows(const T* rows, int64_t ldq, const Vec<T>* panel, const Index<T>& past_k, int64_t e,
                              int64_t* out) {
  constexpr int L = Lanes<T>::value;
  const T lowest = -std::numeric_limits<T>::infinity();
  Vec<T> s[R][V] = {};
  for (int64_t c = 0; c < e; ++c) {
    const Vec<T>* p = panel + c * V;
    for (int r = 0; r < R; ++r) {
      const T x = rows[r * ldq + c];
      for (int t = 0; t < V; ++t) s[r][t] += p[t] * x;
    }
  }
  for (int r = 0; r < R; ++r) {
    s[r][V - 1] = past_k ? Vec<T>{} + lowest : s[r][V - 1];
    Vec<T> largest = Vec<T>{} + lowest;  // per lane, NaN never larger
    for (int t = 0; t < V; ++t) largest = s[r][t] > largest ? s[r][t] : largest;
    const T m = largest_lane<T>(largest);
    uint64_t bits = 0;
    for (int t = 0; t < V; ++t) bits |= equal_lanes<T>(s[r][t], m) << (t * L);
    out[r] = m > lowest ? __builtin_ctzll(bits) : 0;
  }
}

template <typename T, int V>
static void panel_group(const T* rows, int64_t count, int64_t ldq, const Vec<T>* panel, int64_t k, int64_t e,
                        int64_t* out) {
  constexpr int L = Lanes<T>::value, R = kPanelRows[V - 1];
  Index<T> past_k;
  for (int l = 0; l < L; ++l) past_k[l] = (V - 1) * L + l >= k ? -1 : 0;
  const int64_t span = R * ldq * static_cast<int64_t>(sizeof(T));
  int64_t i = 0;
  for (; i + R <= count; i += R) {
    const char* ahead = reinterpret_cast<const char*>(rows + i * ldq) + kPanelAhead;
    for (int64_t b = 0; b < span; b += 64) __builtin_prefetch(ahead + b);
    panel_rows<T, V, R>(rows + i * ldq, ldq, panel, past_k, e, out + i);
  }
  for (; i < count; ++i) panel_rows<T, V, 1>(rows + i * ldq, ldq, panel, past_k, e, out + i);
}

template <typename T>
static void nearest_group(const T* rows, int64_t count, int64_t ldq, const T* keys, int64_t k, int64_t e,
                          Scoring<T>& ws, int64_t* out) {
  constexpr int L = Lanes<T>::value;
  if (k > 0 && k <= kPanelVectors * L) {
    const int64_t vectors = (k + L - 1) / L;
    if (ws.panel_keys != keys) {
      ws.panel.assign(e * vectors, Vec<T>{});
      T* lanes = reinterpret_cast<T*>(ws.panel.data());
      for (int64_t j = 0; j < k; ++j)
        for (int64_t c = 0; c < e; ++c) lanes[(c * vectors + j / L) * L + j % L] = keys[j * e + c];
      ws.panel_keys = keys;
    }
    const Vec<T>* panel = ws.panel.data();
    if (vectors == 1) panel_group<T, 1>(rows, count, ldq, panel, k, e, out);
    else if (vectors == 2) panel_group<T, 2>(rows, count, ldq, panel, k, e, out);
    else if (vectors == 3) panel_group<T, 3>(rows, count, ldq, panel, k, e, out);
    else panel_group<T, 4>(rows, count, ldq, panel, k, e, out);
    return;
  }
  const int64_t vectors = transpose_tile(rows, count, ldq, e, ws.columns);
  Vec<T> best[kTileVectors];
  Index<T> best_index[kTileVectors];
  for (int64_t v = 0; v < vectors; ++v) {
    best_index[v] = Index<T>{};
    for (int r = 0; r < L; ++r) best[v][r] = -std::numeric_limits<T>::infinity();
  }
  tile_scores<T>(ws.columns, vectors, keys, k, e, [&](const Vec<T>& score, int64_t v, int64_t j) {
    auto better = score > best[v];
    best[v] = better ? score : best[v];
    best_index[v] = better ? Index<T>{} + (typename Lanes<T>::label)j : best_index[v];
  });
  for (int64_t r = 0; r < count; ++r) out[r] = best_index[r / L][r % L];
}

template <typename scalar_t>
static void nearest_keys_impl(const at::Tensor& query, const at::Tensor& key, at::Tensor& labels, int64_t block_rows) {
  constexpr int L = Lanes<scalar_t>::value * kTileVectors;
  const int64_t groups = query.size(0), n = query.size(1), e = query.size(2), k = key.size(1);
  const int64_t lane_groups = (n + L - 1) / L;
  const scalar_t* q = query.data_ptr<scalar_t>();
  const scalar_t* keys = key.data_ptr<scalar_t>();
  int64_t* out = labels.data_ptr<int64_t>();
  const int64_t ldq = query.stride(1), group_stride = query.stride(0);
  const int64_t grain = std::max<int64_t>(1, block_rows / L);
  at::parallel_for(0, groups * lane_groups, grain, [&](int64_t begin, int64_t end) {
    Scoring<scalar_t> scoring(e);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task / lane_groups, start = (task % lane_groups) * L;
      nearest_group<scalar_t>(q + group * group_stride + start * ldq, std::min<int64_t>(L, n - start), ldq,
                              keys + group * k * e, k, e, scoring, out + group * n + start);
    }
  });
}

at::Tensor nearest_keys(at::Tensor query, at::Tensor key, int64_t block_rows) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && query.size(0) == key.size(0) && query.size(2) == key.size(2),
              "nearest_keys: query (groups, n, e) and key (groups, k, e)");
  TORCH_CHECK(query.stride(2) == 1 && query.stride(1) >= query.size(2) && key.is_contiguous() &&
              query.scalar_type() == key.scalar_type(),
              "nearest_keys: rows of query and key must be contiguous, of one dtype");
  auto labels = at::empty({query.size(0), query.size(1)}, query.options().dtype(at::kLong));
  if (query.scalar_type() == at::kFloat) nearest_keys_impl<float>(query, key, labels, block_rows);
  else if (query.scalar_type() == at::kDouble) nearest_keys_impl<double>(query, key, labels, block_rows);
  else TORCH_CHECK(false, "nearest_keys: float32 or float64 only");
  return labels;
}

// Rows are summed in blocks of kSumRows, each block into its own partial sums (in parallel), and the partial sums of
// a group are then added block after block: the order of every addition is fixed by the shapes alone.
constexpr int64_t kSumRows = 1 << 15;

// The value row of each row's maximiser: out[g, i] = values[g, labels[g, i]], rows of `row_bytes` bytes.
at::Tensor nearest_values(at::Tensor query, at::Tensor key, at::Tensor values, int64_t block_rows) {
  TORCH_CHECK(values.dim() == 3 && values.is_contiguous() && values.size(0) == key.size(0) &&
              values.size(1) == key.size(1), "nearest_values: contiguous values (groups, k, width)");
  const at::Tensor labels = nearest_keys(query, key, block_rows);
  const int64_t groups = labels.size(0), n = labels.size(1), k = values.size(1);
  auto out = at::empty({groups, n, values.size(2)}, values.options());
  const int64_t row_bytes = values.size(2) * values.element_size();
  const char* source = static_cast<const char*>(values.data_ptr());
  char* target = static_cast<char*>(out.data_ptr());
  const int64_t* label = labels.data_ptr<int64_t>();
  at::parallel_for(0, groups * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin / n, i = begin; i < end; ++group) {  // row i of `group`, without a division per row
      const char* group_source = source + group * k * row_bytes;
      const int64_t stop = std::min(end, (group + 1) * n);
      if (row_bytes == 8) {  // one int64 or double per row (the labels' codes): a plain copy, not a memcpy call
        const int64_t* from = reinterpret_cast<const int64_t*>(group_source);
        int64_t* to = reinterpret_cast<int64_t*>(target);
        for (; i < stop; ++i) to[i] = from[label[i]];
      } else {
        for (; i < stop; ++i) std::memcpy(target + i * row_bytes, group_source + label[i] * row_bytes, row_bytes);
      }
    }
  });
  return out;
}

// The sums are accumulated in double whatever the input type (`sums` is a double tensor): float rows are widened as
// they are added, so a float mean of many points keeps its digits; double rows are summed as before.
// Rows may be strided (`values.stride(1)`, `values.stride(0)`: a slice of the compact tokens, read in place); a width
// up to 4 is a compile-time constant (`Width`, 0 for any other), so that a row's additions are unrolled.
template <typename scalar_t, int Width>
static void segment_sums_impl(const at::Tensor& values, const at::Tensor& codes, const at::Tensor& visible,
                              at::Tensor& sums, at::Tensor& counts) {
  const int64_t groups = values.size(0), rows = values.size(1), num_codes = sums.size(1);
  const int64_t width = Width > 0 ? Width : values.size(2);
  const int64_t row_stride = values.stride(1), group_stride = values.stride(0);
  const int64_t blocks = (rows + kSumRows - 1) / kSumRows;
  const scalar_t* v = values.data_ptr<scalar_t>();
  const int64_t* code = codes.data_ptr<int64_t>();
  const bool* seen = visible.defined() ? visible.data_ptr<bool>() : nullptr;
  auto partial = blocks == 1 ? sums : at::zeros({groups * blocks, num_codes, width}, sums.options());
  auto partial_counts = blocks == 1 ? counts : at::zeros({groups * blocks, num_codes}, counts.options());
  double* ps = partial.data_ptr<double>();
  int64_t* pc = partial_counts.data_ptr<int64_t>();
  at::parallel_for(0, groups * blocks, std::max<int64_t>(1, kSumRows / std::max<int64_t>(1, rows * width)), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task / blocks, start = group * rows + (task % blocks) * kSumRows;
      const int64_t stop = std::min(start + kSumRows, (group + 1) * rows);
      double* __restrict__ task_sums = ps + task * num_codes * width;
      int64_t* __restrict__ task_counts = pc + task * num_codes;
      const scalar_t* group_rows = v + group * group_stride;
      for (int64_t i = start; i < stop; ++i) {
        const int64_t bin = code[i];
        if (bin < 0 || bin >= num_codes || (seen && !seen[i])) continue;
        const scalar_t* __restrict__ row = group_rows + (i - group * rows) * row_stride;
        double* __restrict__ total = task_sums + bin * width;
        for (int64_t column = 0; column < width; ++column) total[column] += static_cast<double>(row[column]);
        task_counts[bin] += 1;
      }
    }
  });
  if (blocks == 1) return;
  double* s = sums.data_ptr<double>();
  int64_t* c = counts.data_ptr<int64_t>();
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t task = group * blocks + block;
        for (int64_t j = 0; j < num_codes * width; ++j) s[group * num_codes * width + j] += ps[task * num_codes * width + j];
        for (int64_t j = 0; j < num_codes; ++j) c[group * num_codes + j] += pc[task * num_codes + j];
      }
    }
  });
}

std::vector<at::Tensor> segment_sums(at::Tensor values, at::Tensor codes, c10::optional<at::Tensor> visible,
                                     int64_t num_codes) {
  TORCH_CHECK(values.dim() == 3 && values.stride(2) == 1 && codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == at::kLong && codes.size(0) == values.size(0) && codes.size(1) == values.size(1),
              "segment_sums: values (groups, rows, width) with contiguous rows and int64 codes (groups, rows)");
  at::Tensor mask;
  if (visible.has_value()) {
    mask = visible->contiguous();
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.sizes() == codes.sizes(), "segment_sums: bool visible (groups, rows)");
  }
  auto sums = at::zeros({values.size(0), num_codes, values.size(2)}, values.options().dtype(at::kDouble));
  auto counts = at::zeros({values.size(0), num_codes}, codes.options());
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, "segment_sums: float32 or float64 only");
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "segment_sums", [&] {
    switch (values.size(2)) {
      case 1: segment_sums_impl<scalar_t, 1>(values, codes, mask, sums, counts); break;
      case 2: segment_sums_impl<scalar_t, 2>(values, codes, mask, sums, counts); break;
      case 3: segment_sums_impl<scalar_t, 3>(values, codes, mask, sums, counts); break;
      case 4: segment_sums_impl<scalar_t, 4>(values, codes, mask, sums, counts); break;
      default: segment_sums_impl<scalar_t, 0>(values, codes, mask, sums, counts);
    }
  });
  return {sums, counts};
}

// ===========================================================================================================// Member-based updates (sparse, k-medoids): each cluster's members, grouped by a counting sort of the labels, then one
// task per cluster (sparsemax) or per block of candidate members (medoid costs), in parallel.
// A member: a row whose code is in [0, num_codes) and whose weight (when given) is > 0; members keep point order.
// ==================================================================================================================

template <typename scalar_t>
static void group_members(const int64_t* code, const scalar_t* weight, int64_t n, int64_t num_codes,
                          int64_t* starts, int64_t* members) {
  std::fill(starts, starts + num_codes + 1, int64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = code[i];
    if (c >= 0 && c < num_codes && (!weight || weight[i] > 0)) ++starts[c + 1];
  }
  for (int64_t c = 0; c < num_codes; ++c) starts[c + 1] += starts[c];
  std::vector<int64_t> next(starts, starts + num_codes);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = code[i];
    if (c >= 0 && c < num_codes && (!weight || weight[i] > 0)) members[next[c]++] = i;
  }
}

// Sparsemax over each cluster's members of z_i = scaling * ((Σ_e 2c_e x_ie - |x_i|^2) - |c|^2) (the token kernel's
// score [2c ; -1 ; -|c|^2] . [x ; |x|^2 ; 1]), the projection of `kmeans_sparsemax` (sorted decreasingly, running sums
// in double rounded to the dtype, support = the number of ranks r with 1 + W_r z_(r) > C_r), then Σ_i p_i x_i in
// double in point order, and the members' mass. Three passes: the scores in point order, one threshold per cluster,
// the weighted sums in point order. No contraction into fused multiply-adds: each step rounds as torch's.
template <typename scalar_t>
__attribute__((optimize("fp-contract=off")))
static scalar_t sparsemax_norm(const scalar_t* centre, int64_t d) {
  scalar_t cc = 0;
  for (int64_t e = 0; e < d; ++e) cc = cc + centre[e] * centre[e];
  return cc;
}

// `Rows` rows' scores side by side (2 Rows independent running sums, not two chains of additions one after the
// other), in scalar code (vectorised across the rows, the compiler's shuffles cost more); `twice` holds 2 c, exactly,
// for every centre.
template <typename scalar_t, int Rows>
__attribute__((optimize("fp-contract=off", "no-tree-slp-vectorize", "no-tree-loop-vectorize")))
static inline void sparsemax_row_scores(const scalar_t* x, int64_t ldx, const int64_t* code, const int64_t* rows,
                                        const scalar_t* twice, const scalar_t* norms, int64_t d, scalar_t scaling,
                                        scalar_t* z) {
  const scalar_t* row[Rows];
  const scalar_t* centre[Rows];
  scalar_t dot[Rows], xx[Rows];
  for (int r = 0; r < Rows; ++r) {
    row[r] = x + rows[r] * ldx;
    centre[r] = twice + code[rows[r]] * d;
    dot[r] = 0;
    xx[r] = 0;
  }
  for (int64_t e = 0; e < d; ++e)  // each row's two sums in coordinate order
    for (int r = 0; r < Rows; ++r) {
      dot[r] = dot[r] + centre[r][e] * row[r][e];
      xx[r] = xx[r] + row[r][e] * row[r][e];
    }
  for (int r = 0; r < Rows; ++r) z[rows[r]] = ((dot[r] - xx[r]) - norms[code[rows[r]]]) * scaling;
}

template <typename scalar_t>
static void sparsemax_scores(const scalar_t* x, int64_t ldx, const int64_t* code, int64_t begin, int64_t end,
                             const scalar_t* twice, const scalar_t* norms, int64_t k, int64_t d, scalar_t scaling,
                             scalar_t* z) {
  constexpr int kRows = 4;
  int64_t rows[kRows];
  int count = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t c = code[i];
    if (c < 0 || c >= k) continue;
    rows[count++] = i;
    if (count == kRows) {
      sparsemax_row_scores<scalar_t, kRows>(x, ldx, code, rows, twice, norms, d, scaling, z);
      count = 0;
    }
  }
  for (int r = 0; r < count; ++r)
    sparsemax_row_scores<scalar_t, 1>(x, ldx, code, rows + r, twice, norms, d, scaling, z);
}

// The positions [0, m) of `keys` in increasing order of key, ties in position order: a stable radix sort a byte at a
// time from the lowest (a byte that all keys share is skipped), or `std::sort` on (key, position) for a few keys.
template <typename U>
static void stable_key_order(const std::vector<U>& keys, std::vector<int64_t>& order) {
  const int64_t m = static_cast<int64_t>(keys.size());
  order.resize(m);
  if (m < 256) {
    std::vector<std::pair<U, int64_t>> pairs(m);
    for (int64_t t = 0; t < m; ++t) pairs[t] = {keys[t], t};
    std::sort(pairs.begin(), pairs.end());
    for (int64_t t = 0; t < m; ++t) order[t] = pairs[t].second;
    return;
  }
  constexpr int kBytes = sizeof(U);
  std::vector<int64_t> counts(kBytes * 256, 0);
  for (int64_t t = 0; t < m; ++t)
    for (int b = 0; b < kBytes; ++b) ++counts[b * 256 + ((keys[t] >> (8 * b)) & 0xff)];
  std::vector<U> key(keys), next_key(m);
  std::vector<int64_t> next(m);
  for (int64_t t = 0; t < m; ++t) order[t] = t;
  for (int b = 0; b < kBytes; ++b) {
    int64_t* count = counts.data() + b * 256;
    if (count[(key[0] >> (8 * b)) & 0xff] == m) continue;
    int64_t offset = 0;
    for (int v = 0; v < 256; ++v) { const int64_t c = count[v]; count[v] = offset; offset += c; }
    for (int64_t t = 0; t < m; ++t) {
      const int64_t slot = count[(key[t] >> (8 * b)) & 0xff]++;
      next_key[slot] = key[t];
      next[slot] = order[t];
    }
    key.swap(next_key);
    order.swap(next);
  }
}

template <typename scalar_t>
__attribute__((optimize("fp-contract=off")))
static scalar_t sparsemax_threshold(const scalar_t* z, const int64_t* members, int64_t m, const scalar_t* weight) {
  // The members by decreasing score, ties in member order: the score's bits made to decrease with it (-0 taken as +0,
  // which it equals) sorted as unsigned keys, stably.
  using Bits = typename std::conditional<std::is_same<scalar_t, float>::value, uint32_t, uint64_t>::type;
  constexpr Bits sign = Bits(1) << (8 * sizeof(Bits) - 1);
  std::vector<std::pair<scalar_t, int64_t>> ordered(m);
  std::vector<Bits> keys(m);
  for (int64_t t = 0; t < m; ++t) {
    const scalar_t value = z[members[t]] + scalar_t(0);
    Bits bits;
    std::memcpy(&bits, &value, sizeof(bits));
    keys[t] = ~((bits & sign) ? ~bits : (bits | sign));  // increasing with the value, then inverted
  }
  std::vector<int64_t> order;
  stable_key_order<Bits>(keys, order);
  for (int64_t r = 0; r < m; ++r) ordered[r] = {z[members[order[r]]], order[r]};
  double running = 0, running_mass = 0;
  int64_t support = 0;
  scalar_t cumulative_at = 0, mass_at = 1;
  for (int64_t r = 0; r < m; ++r) {
    const scalar_t value = ordered[r].first;
    const scalar_t w = weight ? weight[members[ordered[r].second]] : scalar_t(1);
    running += static_cast<double>(weight ? w * value : value);
    running_mass += static_cast<double>(w);
    const scalar_t cumulative = static_cast<scalar_t>(running);
    const scalar_t mass = weight ? static_cast<scalar_t>(running_mass) : static_cast<scalar_t>(r + 1);
    if (scalar_t(1) + mass * value > cumulative) ++support;
  }
  support = std::max<int64_t>(support, 1);
  running = 0, running_mass = 0;
  for (int64_t r = 0; r < support; ++r) {  // the running sums at rank `support`, as rounded above
    const scalar_t w = weight ? weight[members[ordered[r].second]] : scalar_t(1);
    running += static_cast<double>(weight ? w * ordered[r].first : ordered[r].first);
    running_mass += static_cast<double>(w);
  }
  cumulative_at = static_cast<scalar_t>(running);
  mass_at = weight ? static_cast<scalar_t>(running_mass) : static_cast<scalar_t>(support);
  return (cumulative_at - scalar_t(1)) / mass_at;
}

// The weights may be of the points' type (the forward pass) or float64 (points mode's sample weights): a member has
// w_i > 0, its p_i is rounded to the points' type, and its mass is w_i in double. A member of p_i = 0 adds nothing to
// the sums (finite points), and is skipped.
template <typename scalar_t, typename weight_t>
__attribute__((optimize("fp-contract=off")))
static void sparsemax_sums(const scalar_t* x, int64_t ldx, const int64_t* code, int64_t n, const weight_t* weight,
                           const scalar_t* z, const scalar_t* thresholds, int64_t k, int64_t d, double* sums, double* masses) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = code[i];
    if (c < 0 || c >= k || (weight && !(weight[i] > 0))) continue;
    scalar_t p = std::max(z[i] - thresholds[c], scalar_t(0));
    if (weight) p = p * static_cast<scalar_t>(weight[i]);
    masses[c] += weight ? static_cast<double>(weight[i]) : 1.0;
    if (p == scalar_t(0)) continue;
    const scalar_t* row = x + i * ldx;
    double* total = sums + c * d;
    for (int64_t e = 0; e < d; ++e) total[e] += static_cast<double>(p) * static_cast<double>(row[e]);
  }
}

// Every row's score z_i for its cluster (rows without one are left as they are), in parallel over blocks of rows.
template <typename scalar_t>
static void sparsemax_all_scores(const at::Tensor& points, const int64_t* code, const scalar_t* c, int64_t k,
                                 scalar_t scaling, scalar_t* z) {
  const int64_t groups = points.size(0), n = points.size(1), d = points.size(2);
  const scalar_t* x = points.data_ptr<scalar_t>();
  const int64_t gx = points.stride(0), ldx = points.stride(1);
  std::vector<scalar_t> norms(groups * k), twice(groups * k * d);
  for (int64_t j = 0; j < groups * k; ++j) norms[j] = sparsemax_norm<scalar_t>(c + j * d, d);
  for (int64_t j = 0; j < groups * k * d; ++j) twice[j] = scalar_t(2) * c[j];
  const int64_t blocks = (n + 4095) / 4096;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, first = (task % blocks) * 4096;
      sparsemax_scores<scalar_t>(x + g * gx, ldx, code + g * n, first, std::min(n, first + 4096), &twice[g * k * d],
                                 &norms[g * k], k, d, scaling, z + g * n);
    }
  });
}

std::vector<at::Tensor> sparsemax_update(at::Tensor points, at::Tensor codes, at::Tensor centroids,
                                         c10::optional<at::Tensor> weights, double scaling) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == at::kLong && centroids.dim() == 3 && centroids.is_contiguous() &&
              codes.size(0) == points.size(0) && codes.size(1) == points.size(1) &&
              centroids.size(0) == points.size(0) && centroids.size(2) == points.size(2) &&
              centroids.scalar_type() == points.scalar_type(),
              "sparsemax_update: points (groups, n, d) with contiguous rows, int64 codes (groups, n), centroids (groups, k, d)");
  at::Tensor w;
  if (weights.has_value()) {
    w = weights->contiguous();
    TORCH_CHECK(w.scalar_type() == points.scalar_type() && w.sizes() == codes.sizes(), "sparsemax_update: weights (groups, n)");
  }
  const int64_t groups = points.size(0), n = points.size(1), d = points.size(2), k = centroids.size(1);
  auto sums = at::zeros({groups, k, d}, points.options().dtype(at::kDouble));
  auto masses = at::zeros({groups, k}, points.options().dtype(at::kDouble));
  std::vector<int64_t> starts(groups * (k + 1)), members(groups * n);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "sparsemax_update", [&] {
    const scalar_t* x = points.data_ptr<scalar_t>();
    const scalar_t* c = centroids.data_ptr<scalar_t>();
    const scalar_t* wt = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* code = codes.data_ptr<int64_t>();
    const int64_t gx = points.stride(0), ldx = points.stride(1);
    std::vector<scalar_t> z(groups * n), thresholds(groups * k);
    sparsemax_all_scores<scalar_t>(points, code, c, k, static_cast<scalar_t>(scaling), z.data());
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        group_members<scalar_t>(code + g * n, wt ? wt + g * n : nullptr, n, k, &starts[g * (k + 1)], &members[g * n]);
    });
    at::parallel_for(0, groups * k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / k, j = task % k;
        const int64_t start = starts[g * (k + 1) + j], stop = starts[g * (k + 1) + j + 1];
        if (stop > start)
          thresholds[task] = sparsemax_threshold<scalar_t>(&z[g * n], &members[g * n] + start, stop - start,
                                                           wt ? wt + g * n : nullptr);
      }
    });
    double* s = sums.data_ptr<double>();
    double* ms = masses.data_ptr<double>();
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        sparsemax_sums<scalar_t, scalar_t>(x + g * gx, ldx, code + g * n, n, wt ? wt + g * n : nullptr, &z[g * n],
                                 &thresholds[g * k], k, d, s + g * k * d, ms + g * k);
    });
  });
  return {sums, masses};
}

// Points mode's sparsemax (`points._sharded_sparsemax`), the update above split at its thresholds: the scores alone;
// one process's members grouped by cluster, the rounds of the thresholds' bisection over them, and their sums below
// the thresholds found; the weighted sums from given thresholds.
at::Tensor member_scores(at::Tensor points, at::Tensor codes, at::Tensor centroids, double scaling) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == at::kLong && centroids.dim() == 3 && centroids.is_contiguous() &&
              codes.size(0) == points.size(0) && codes.size(1) == points.size(1) &&
              centroids.size(0) == points.size(0) && centroids.size(2) == points.size(2) &&
              centroids.scalar_type() == points.scalar_type(),
              "member_scores: points (groups, n, d) with contiguous rows, int64 codes (groups, n), centroids (groups, k, d)");
  auto z = at::zeros({points.size(0), points.size(1)}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "member_scores", [&] {
    sparsemax_all_scores<scalar_t>(points, codes.data_ptr<int64_t>(), centroids.data_ptr<scalar_t>(), centroids.size(1),
                                   static_cast<scalar_t>(scaling), z.data_ptr<scalar_t>());
  });
  return z;
}

std::vector<at::Tensor> thresholded_sums(at::Tensor points, at::Tensor codes, at::Tensor scores, at::Tensor thresholds,
                                         c10::optional<at::Tensor> weights) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == at::kLong && codes.size(0) == points.size(0) && codes.size(1) == points.size(1) &&
              scores.is_contiguous() && scores.sizes() == codes.sizes() && scores.scalar_type() == points.scalar_type() &&
              thresholds.dim() == 2 && thresholds.is_contiguous() && thresholds.size(0) == points.size(0) &&
              thresholds.scalar_type() == points.scalar_type(),
              "thresholded_sums: points (groups, n, d), int64 codes and scores (groups, n), thresholds (groups, k)");
  at::Tensor w;
  if (weights.has_value()) {
    w = weights->contiguous();
    TORCH_CHECK(w.scalar_type() == at::kDouble && w.sizes() == codes.sizes(), "thresholded_sums: float64 weights (groups, n)");
  }
  const int64_t groups = points.size(0), n = points.size(1), d = points.size(2), k = thresholds.size(1);
  auto sums = at::zeros({groups, k, d}, points.options().dtype(at::kDouble));
  auto masses = at::zeros({groups, k}, points.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "thresholded_sums", [&] {
    const scalar_t* x = points.data_ptr<scalar_t>();
    const double* wt = w.defined() ? w.data_ptr<double>() : nullptr;
    const int64_t gx = points.stride(0), ldx = points.stride(1);
    double* s = sums.data_ptr<double>();
    double* ms = masses.data_ptr<double>();
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        sparsemax_sums<scalar_t, double>(x + g * gx, ldx, codes.data_ptr<int64_t>() + g * n, n, wt ? wt + g * n : nullptr,
                                         scores.data_ptr<scalar_t>() + g * n, thresholds.data_ptr<scalar_t>() + g * k,
                                         k, d, s + g * k * d, ms + g * k);
    });
  });
  return {sums, masses};
}

// The members (code in [0, k), float64 weight > 0 if given) grouped by cluster in point order: u_i = 0 - s_i (in the
// scores' type: +0 for a score of -0) and w_i (1 without weights), float64 (m,) each, and each cluster's start
// (k + 1,). A counting sort: one pass counts, one writes.
std::vector<at::Tensor> sparsemax_members(at::Tensor codes, at::Tensor scores, c10::optional<at::Tensor> weights,
                                          int64_t k) {
  TORCH_CHECK(codes.dim() == 1 && codes.is_contiguous() && codes.scalar_type() == at::kLong &&
              scores.sizes() == codes.sizes() && scores.is_contiguous() &&
              (!weights.has_value() || (weights->sizes() == codes.sizes() && weights->is_contiguous() &&
                                        weights->scalar_type() == at::kDouble)),
              "sparsemax_members: int64 codes, scores and float64 weights (n,)");
  const int64_t n = codes.size(0);
  const int64_t* code = codes.data_ptr<int64_t>();
  const double* weight = weights.has_value() ? weights->data_ptr<double>() : nullptr;
  auto starts = at::zeros({k + 1}, codes.options());
  int64_t* start = starts.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (code[i] >= 0 && code[i] < k && (!weight || weight[i] > 0)) ++start[code[i] + 1];
  for (int64_t j = 0; j < k; ++j) start[j + 1] += start[j];
  auto u = at::empty({start[k]}, scores.options().dtype(at::kDouble));
  auto w = at::empty({start[k]}, scores.options().dtype(at::kDouble));
  double* pu = u.data_ptr<double>();
  double* pw = w.data_ptr<double>();
  std::vector<int64_t> next(start, start + k);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "sparsemax_members", [&] {
    const scalar_t* score = scores.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = code[i];
      if (c < 0 || c >= k || (weight && !(weight[i] > 0))) continue;
      const int64_t t = next[c]++;
      pu[t] = static_cast<double>(scalar_t(0) - score[i]);
      pw[t] = weight ? weight[i] : 1.0;
    }
  });
  return {u, w, starts};
}

// One round of the bisection for each searching cluster j. Its members inside the bracket are the range [lower_j,
// upper_j) of (u, w), in point order: the previous round's decision is applied first (`keep_j` -1: only those with
// u < previous_j stay, +1: u > previous_j, 0: all), the members that stay written in order to the same range of
// (into_u, into_w) (the same tensors as (u, w) after the first round, compacted in place) and `upper_j` moved to
// their end; then their sums at the candidate v_j are returned (4, k): Σ_{u < v} w (v - u), Σ_{u <= v} w, and the
// numbers of members below and above v_j, in double in point order (zeros where not searching).
at::Tensor sparsemax_round(at::Tensor u, at::Tensor w, at::Tensor into_u, at::Tensor into_w, at::Tensor lower,
                           at::Tensor upper, at::Tensor previous, at::Tensor keep, at::Tensor candidate,
                           at::Tensor searching) {
  for (const auto& t : {u, w, into_u, into_w, previous, candidate})
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kDouble && t.dim() == 1, "sparsemax_round: float64 vectors");
  for (const auto& t : {lower, upper, keep})
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kLong && t.dim() == 1, "sparsemax_round: int64 vectors");
  const int64_t k = lower.size(0);
  TORCH_CHECK(searching.is_contiguous() && searching.scalar_type() == at::kBool && searching.size(0) == k &&
              upper.size(0) == k && previous.size(0) == k && keep.size(0) == k && candidate.size(0) == k &&
              w.size(0) == u.size(0) && into_u.size(0) == u.size(0) && into_w.size(0) == u.size(0),
              "sparsemax_round: (m,) members and (k,) clusters");
  auto sums = at::zeros({4, k}, u.options());
  const double* pu = u.data_ptr<double>();
  const double* pw = w.data_ptr<double>();
  double* qu = into_u.data_ptr<double>();
  double* qw = into_w.data_ptr<double>();
  const int64_t* lo = lower.data_ptr<int64_t>();
  int64_t* hi = upper.data_ptr<int64_t>();
  const double* before = previous.data_ptr<double>();
  const int64_t* side = keep.data_ptr<int64_t>();
  const double* v = candidate.data_ptr<double>();
  const bool* on = searching.data_ptr<bool>();
  double* out = sums.data_ptr<double>();
  at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (!on[j]) continue;
      const double value = v[j], cut = before[j];
      const int64_t stop = hi[j];
      double excess = 0, at_or_below = 0;
      int64_t below = 0, above = 0, next = lo[j];
      const auto scan = [&](auto stays) {
        for (int64_t i = lo[j]; i < stop; ++i) {
          const double x = pu[i], y = pw[i];
          if (!stays(x)) continue;
          qu[next] = x, qw[next] = y, ++next;
          const bool under = x < value, over = x > value;
          excess += under ? y * (value - x) : 0.0;
          at_or_below += over ? 0.0 : y;
          below += under, above += over;
        }
      };
      if (side[j] < 0) scan([cut](double x) { return x < cut; });
      else if (side[j] > 0) scan([cut](double x) { return x > cut; });
      else scan([](double) { return true; });
      hi[j] = next;
      out[j] = excess, out[k + j] = at_or_below;
      out[2 * k + j] = static_cast<double>(below), out[3 * k + j] = static_cast<double>(above);
    }
  });
  return sums;
}

// Σ w_i s_i (= -w_i u_i) and Σ w_i over each cluster's members with u_i < bounds_j, (2, k).
at::Tensor sparsemax_support_sums(at::Tensor u, at::Tensor w, at::Tensor starts, at::Tensor bounds) {
  TORCH_CHECK(u.is_contiguous() && w.is_contiguous() && u.scalar_type() == at::kDouble && w.scalar_type() == at::kDouble &&
              starts.is_contiguous() && starts.scalar_type() == at::kLong && bounds.is_contiguous() &&
              bounds.scalar_type() == at::kDouble && starts.size(0) == bounds.size(0) + 1,
              "sparsemax_support_sums: float64 u, w (m,), int64 starts (k + 1,), float64 bounds (k,)");
  const int64_t k = bounds.size(0);
  auto sums = at::zeros({2, k}, u.options());
  const double* pu = u.data_ptr<double>();
  const double* pw = w.data_ptr<double>();
  const int64_t* start = starts.data_ptr<int64_t>();
  const double* bound = bounds.data_ptr<double>();
  double* out = sums.data_ptr<double>();
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = start[j]; t < start[j + 1]; ++t)
      if (pu[t] < bound[j]) out[j] += pw[t] * -pu[t], out[k + j] += pw[t];
  return sums;
}

// k-medoids: cost_i = Σ_{i' members} w_i' |x_i - x_i'| for every member i (distances in the dtype, their weighted sum
// in double, in point order), then each cluster's first member of least cost. Candidates are taken a vector register
// at a time (one vector of floats or doubles, transposed into columns), each task a block of candidates of one cluster.
template <typename T>
__attribute__((optimize("no-math-errno")))
static void medoid_costs_block(const T* points, int64_t ldx, const int64_t* members, int64_t m, int64_t first,
                               int64_t count, const T* weight, int64_t d, std::vector<Vec<T>>& columns, double* cost) {
  constexpr int L = Lanes<T>::value;
  T* lanes = reinterpret_cast<T*>(columns.data());
  std::fill(lanes, lanes + d * L, T(0));
  for (int64_t r = 0; r < count; ++r) {
    const T* row = points + members[first + r] * ldx;
    for (int64_t e = 0; e < d; ++e) lanes[e * L + r] = row[e];
  }
  double total[L] = {};
  T distance[L];
  for (int64_t t = 0; t < m; ++t) {
    const T* x = points + members[t] * ldx;
    Vec<T> acc = {};
    for (int64_t e = 0; e < d; ++e) {
      const Vec<T> difference = columns[e] - x[e];
      acc += difference * difference;
    }
    for (int r = 0; r < L; ++r) distance[r] = std::sqrt(acc[r]);
    const double w = weight ? static_cast<double>(weight[members[t]]) : 1.0;
    for (int r = 0; r < L; ++r) total[r] += w * static_cast<double>(distance[r]);
  }
  for (int64_t r = 0; r < count; ++r) cost[r] = total[r];
}

std::vector<at::Tensor> medoid_update(at::Tensor points, at::Tensor codes, int64_t num_codes, c10::optional<at::Tensor> weights) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == at::kLong && codes.size(0) == points.size(0) && codes.size(1) == points.size(1),
              "medoid_update: points (groups, n, d) with contiguous rows and int64 codes (groups, n)");
  at::Tensor w;
  if (weights.has_value()) {
    w = weights->contiguous();
    TORCH_CHECK(w.scalar_type() == points.scalar_type() && w.sizes() == codes.sizes(), "medoid_update: weights (groups, n)");
  }
  const int64_t groups = points.size(0), n = points.size(1), d = points.size(2), k = num_codes;
  auto chosen = at::full({groups, k}, -1, codes.options());
  auto masses = at::zeros({groups, k}, points.options().dtype(at::kDouble));
  std::vector<int64_t> starts(groups * (k + 1)), members(groups * n);
  std::vector<double> costs(groups * n);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "medoid_update", [&] {
    constexpr int L = Lanes<scalar_t>::value;
    const scalar_t* x = points.data_ptr<scalar_t>();
    const scalar_t* wt = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* code = codes.data_ptr<int64_t>();
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        group_members<scalar_t>(code + g * n, wt ? wt + g * n : nullptr, n, k, &starts[g * (k + 1)], &members[g * n]);
    });
    std::vector<int64_t> task_start(groups * k + 1, 0);  // blocks of L candidates per cluster, numbered in order
    for (int64_t c = 0; c < groups * k; ++c) {
      const int64_t g = c / k, j = c % k;
      const int64_t size = starts[g * (k + 1) + j + 1] - starts[g * (k + 1) + j];
      task_start[c + 1] = task_start[c] + (size + L - 1) / L;
    }
    at::parallel_for(0, task_start[groups * k], 1, [&](int64_t begin, int64_t end) {
      std::vector<Vec<scalar_t>> columns(d);
      int64_t c = std::upper_bound(task_start.begin(), task_start.end(), begin) - task_start.begin() - 1;
      for (int64_t task = begin; task < end; ++task) {
        while (task_start[c + 1] <= task) ++c;
        const int64_t g = c / k, j = c % k;
        const int64_t start = starts[g * (k + 1) + j], size = starts[g * (k + 1) + j + 1] - start;
        const int64_t first = (task - task_start[c]) * L;
        medoid_costs_block<scalar_t>(x + g * points.stride(0), points.stride(1), &members[g * n] + start, size, first,
                                     std::min<int64_t>(L, size - first), wt ? wt + g * n : nullptr, d, columns,
                                     &costs[g * n + start + first]);
      }
    });
    int64_t* out = chosen.data_ptr<int64_t>();
    double* ms = masses.data_ptr<double>();
    at::parallel_for(0, groups * k, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t g = c / k, j = c % k;
        const int64_t start = starts[g * (k + 1) + j], stop = starts[g * (k + 1) + j + 1];
        double mass = 0;
        for (int64_t t = start; t < stop; ++t) {
          mass += wt ? static_cast<double>(wt[g * n + members[g * n + t]]) : 1.0;
          if (out[c] < 0 || costs[g * n + t] < costs[g * n + out[c]]) out[c] = t;  // the first least cost
        }
        ms[c] = mass;
      }
    });
    for (int64_t c = 0; c < groups * k; ++c)  // positions in the member list -> point indices
      if (out[c] >= 0) out[c] = members[(c / k) * n + out[c]];
  });
  return {chosen, masses};
}

// ---- order_statistics: chosen order statistics of each cluster's members -------------------------------------
// Per group and code j: the members (code j, in point order, by the counting sort `group_members`) copied out, and
// for each requested rank r (from 0, clamped to the members) the r-th smallest value by `std::nth_element`: O(n)
// expected per rank, no sort. Exact: an order statistic is one of the values, whatever finds it.
at::Tensor order_statistics(at::Tensor values, at::Tensor codes, int64_t num_codes, at::Tensor ranks) {
  TORCH_CHECK(values.dim() == 2 && codes.sizes() == values.sizes() && codes.scalar_type() == at::kLong &&
              ranks.dim() == 3 && ranks.size(0) == values.size(0) && ranks.size(1) == num_codes &&
              ranks.scalar_type() == at::kLong,
              "order_statistics: values (groups, n), int64 codes (groups, n), int64 ranks (groups, k, r)");
  const at::Tensor v = values.contiguous(), c = codes.contiguous(), r = ranks.contiguous();
  const int64_t groups = v.size(0), n = v.size(1), k = num_codes, count = r.size(2);
  auto out = at::zeros({groups, k, count}, v.options());
  std::vector<int64_t> starts(groups * (k + 1)), members(groups * n);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "order_statistics", [&] {
    const scalar_t* x = v.data_ptr<scalar_t>();
    const int64_t* code = c.data_ptr<int64_t>();
    const int64_t* rank = r.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        group_members<scalar_t>(code + g * n, nullptr, n, k, &starts[g * (k + 1)], &members[g * n]);
    });
    at::parallel_for(0, groups * k, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buffer;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / k, j = task % k;
        const int64_t start = starts[g * (k + 1) + j], size = starts[g * (k + 1) + j + 1] - start;
        if (size == 0) continue;
        buffer.resize(size);
        for (int64_t t = 0; t < size; ++t) buffer[t] = x[g * n + members[g * n + start + t]];
        for (int64_t s = 0; s < count; ++s) {
          const int64_t q = std::min(std::max<int64_t>(rank[task * count + s], 0), size - 1);
          std::nth_element(buffer.begin(), buffer.begin() + q, buffer.end());
          o[task * count + s] = buffer[q];
        }
      }
    });
  });
  return out;
}
// ---- end of order_statistics -----------------------------------------------------------------------------------

// ---- lloyd_step: one Lloyd iteration of a batch of problems, in place on the compact tokens -------------------
// Per problem: the labels of `nearest_group` (those of `nearest_keys`), the float64 sums of the point tokens
// [x_i ; 1] per label in the order of `segment_sums` (row after row within blocks of kSumRows, the blocks' sums added
// block after block), then c_j = (float) (Σ x_i / |S_j|) where |S_j| > 0, else c_j kept: the numbers of
// nearest_keys, segment_sums and the update's finalize, without leaving the loop between them. Each tile of rows is
// added to its labels' sums as soon as it is labelled, while it is in cache, into bins a whole number of cache lines
// apart (a bin's vectors then never straddle two lines). With at least as many problems as threads the threads share
// the problems, each summing its blocks into one set of bins; with fewer, they share the rows (`share_rows`), each
// block summed into its own bins, then the blocks' bins added block after block.

// Rows [start, stop) of one problem (`start` a multiple of the tile) labelled tile by tile (-1 where `seen` is
// false), `after(first, last)` called on each tile's rows [first, last) once they are labelled, while in cache.
template <typename scalar_t, typename After>
static void label_tiles(const scalar_t* rows, int64_t ldq, const scalar_t* keys, int64_t k, int64_t width,
                        const bool* seen, int64_t start, int64_t stop, Scoring<scalar_t>& scoring, int64_t* label,
                        const After& after) {
  constexpr int L = Lanes<scalar_t>::value * kTileVectors;
  for (int64_t first = start; first < stop; first += L) {
    const int64_t last = std::min<int64_t>(stop, first + L);
    nearest_group<scalar_t>(rows + first * ldq, last - first, ldq, keys, k, width, scoring, label + first);
    if (seen) for (int64_t i = first; i < last; ++i) if (!seen[i]) label[i] = -1;
    after(first, last);
  }
}

// The rows of `groups` problems of n rows each shared among the threads when there are fewer problems than threads,
// in the order of the blocks of kSumRows rows that the serial loops sum one after another: the tiles of all the
// problems cut into one run of whole tiles per thread, each run's rows visited block by block,
// `piece(scoring, g, block, start, stop, first)` (`first`: the piece begins its block, whose sum is then this run's
// to make, row after row); where a run ends inside a block, `rest(g, block, start, stop)` adds the block's remaining
// rows (labelled by the next runs) after all the runs, in parallel over the blocks. Every block is then summed in
// row order by one thread: the numbers of the serial loop, whatever the number of threads.
template <typename scalar_t, typename Piece, typename Rest>
static void share_rows(int64_t groups, int64_t n, int64_t width, int64_t threads, const Piece& piece,
                       const Rest& rest) {
  constexpr int L = Lanes<scalar_t>::value * kTileVectors;
  static_assert(kSumRows % L == 0, "a block of the sums is whole tiles");
  const int64_t tiles = (n + L - 1) / L, block_tiles = kSumRows / L, blocks = (n + kSumRows - 1) / kSumRows;
  const int64_t runs = std::min(threads, groups * tiles);
  std::vector<int64_t> summed_to(groups * blocks);  // each block's rows [its start, summed_to) are summed
  at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
    Scoring<scalar_t> scoring(width);
    for (int64_t run = begin; run < end; ++run) {
      const int64_t last = (run + 1) * groups * tiles / runs;
      for (int64_t tile = run * groups * tiles / runs; tile < last;) {
        const int64_t g = tile / tiles, block = tile % tiles / block_tiles;
        const int64_t stop = std::min(last, g * tiles + std::min(tiles, (block + 1) * block_tiles));
        const bool first = tile % tiles % block_tiles == 0;
        const int64_t stop_row = std::min(n, (stop - g * tiles) * L);
        piece(scoring, g, block, tile % tiles * L, stop_row, first);
        if (first) summed_to[g * blocks + block] = stop_row;
        tile = stop;
      }
    }
  });
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, block = task % blocks, stop = std::min(n, (block + 1) * kSumRows);
      if (summed_to[task] < stop) rest(g, block, summed_to[task], stop);
    }
  });
}

// Rows [start, stop) of one problem added to their labels' bins (rows without a label skipped).
template <typename scalar_t>
static inline void add_to_bins(const scalar_t* rows, int64_t ldq, const int64_t* label, int64_t start, int64_t stop,
                               int64_t width, double* __restrict__ bins, int64_t bin_stride) {
  for (int64_t i = start; i < stop; ++i) {
    if (label[i] < 0) continue;
    const scalar_t* __restrict__ row = rows + i * ldq;
    double* __restrict__ bin = bins + label[i] * bin_stride;
    for (int64_t c = 0; c < width; ++c) bin[c] += static_cast<double>(row[c]);
  }
}

// A cluster's centroid row from its sums [Σ x_i ; |S_j|] (kept where |S_j| = 0, the sum of ones being exact).
template <typename scalar_t>
static inline void update_centroid(const double* sums, int64_t width, scalar_t* centroid) {
  const double count = sums[width - 1];
  if (!(count > 0)) return;
  for (int64_t c = 0; c + 1 < width; ++c) centroid[c] = static_cast<scalar_t>(sums[c] / count);
}

// Zeroed doubles, 64-byte aligned.
struct AlignedDoubles {
  std::vector<double> storage;
  double* data;
  explicit AlignedDoubles(int64_t count) : storage(count + 8) {
    data = storage.data() + (8 - reinterpret_cast<uintptr_t>(storage.data()) / 8 % 8) % 8;
  }
};

template <typename scalar_t>
static void lloyd_step_impl(at::Tensor& tokens, const at::Tensor& key, const bool* seen, at::Tensor& labels,
                            at::Tensor& statistics, int64_t n) {
  const int64_t groups = tokens.size(0), width = tokens.size(2), k = key.size(1);
  const int64_t ldq = tokens.stride(1), group_stride = tokens.stride(0);
  const int64_t bin_stride = (width + 7) / 8 * 8, bins_size = k * bin_stride;
  scalar_t* t = tokens.data_ptr<scalar_t>();
  const scalar_t* keys = key.data_ptr<scalar_t>();
  int64_t* out = labels.data_ptr<int64_t>();
  double* stats = statistics.data_ptr<double>();
  const int64_t threads = at::get_num_threads();
  if (groups >= threads || n == 0) {
    at::parallel_for(0, groups, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n * k)), [&](int64_t begin, int64_t end) {
      Scoring<scalar_t> scoring(width);
      AlignedDoubles aligned(bins_size);
      double* __restrict__ bins = aligned.data;
      for (int64_t g = begin; g < end; ++g) {
        scalar_t* rows = t + g * group_stride;
        int64_t* label = out + g * n;
        double* __restrict__ sums = stats + g * k * width;
        for (int64_t start = 0; start < n; start += kSumRows) {
          std::fill(bins, bins + bins_size, 0.0);
          label_tiles<scalar_t>(rows, ldq, keys + g * k * width, k, width, seen ? seen + g * n : nullptr, start,
                                std::min(n, start + kSumRows), scoring, label, [&](int64_t first, int64_t last) {
                                  add_to_bins<scalar_t>(rows, ldq, label, first, last, width, bins, bin_stride);
                                });
          for (int64_t j = 0; j < k; ++j)
            for (int64_t c = 0; c < width; ++c) sums[j * width + c] += bins[j * bin_stride + c];
        }
        for (int64_t j = 0; j < k; ++j) update_centroid<scalar_t>(sums + j * width, width, rows + (n + j) * ldq);
      }
    });
    return;
  }
  const int64_t blocks = (n + kSumRows - 1) / kSumRows;
  AlignedDoubles partials(groups * blocks * bins_size);  // each block's bins
  share_rows<scalar_t>(groups, n, width, threads,
    [&](Scoring<scalar_t>& scoring, int64_t g, int64_t block, int64_t start, int64_t stop, bool first) {
      const scalar_t* rows = t + g * group_stride;
      int64_t* label = out + g * n;
      double* bins = partials.data + (g * blocks + block) * bins_size;
      label_tiles<scalar_t>(rows, ldq, keys + g * k * width, k, width, seen ? seen + g * n : nullptr, start, stop,
                            scoring, label, [&](int64_t a, int64_t b) {
                              if (first) add_to_bins<scalar_t>(rows, ldq, label, a, b, width, bins, bin_stride);
                            });
    },
    [&](int64_t g, int64_t block, int64_t start, int64_t stop) {
      add_to_bins<scalar_t>(t + g * group_stride, ldq, out + g * n, start, stop, width,
                            partials.data + (g * blocks + block) * bins_size, bin_stride);
    });
  at::parallel_for(0, groups * k, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, blocks * width)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // the blocks' sums added block after block, from zero
      const int64_t g = row / k, j = row % k;
      double* __restrict__ sums = stats + row * width;
      for (int64_t block = 0; block < blocks; ++block) {
        const double* bin = partials.data + (g * blocks + block) * bins_size + j * bin_stride;
        for (int64_t c = 0; c < width; ++c) sums[c] += bin[c];
      }
      update_centroid<scalar_t>(sums, width, t + g * group_stride + (n + j) * ldq);
    }
  });
}

// tokens (groups, n + k, d + 1) contiguous, [x_i ; 1] then [c_j ; 1], updated in place; key (groups, k, d + 1), the
// assign block's [2 c_j ; -|c_j|^2]. Returns the labels (groups, n) (-1 where `visible` is false) and the
// statistics [Σ_{a(i)=j} x_i ; |S_j|] (groups, k, d + 1) in float64.
std::vector<at::Tensor> lloyd_step(at::Tensor tokens, at::Tensor key, c10::optional<at::Tensor> visible) {
  TORCH_CHECK(tokens.dim() == 3 && key.dim() == 3 && tokens.is_contiguous() && key.is_contiguous() &&
              key.size(0) == tokens.size(0) && key.size(2) == tokens.size(2) && key.size(1) <= tokens.size(1) &&
              key.scalar_type() == tokens.scalar_type(),
              "lloyd_step: contiguous tokens (groups, n + k, e) and key (groups, k, e) of one dtype");
  const int64_t k = key.size(1), n = tokens.size(1) - k;
  const bool* seen = nullptr;
  at::Tensor mask;
  if (visible.has_value()) {
    mask = visible->contiguous();
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == tokens.size(0) && mask.size(1) == n,
                "lloyd_step: bool visible (groups, n)");
    seen = mask.data_ptr<bool>();
  }
  auto labels = at::empty({tokens.size(0), n}, tokens.options().dtype(at::kLong));
  auto statistics = at::zeros({tokens.size(0), k, tokens.size(2)}, tokens.options().dtype(at::kDouble));
  if (tokens.scalar_type() == at::kFloat) lloyd_step_impl<float>(tokens, key, seen, labels, statistics, n);
  else if (tokens.scalar_type() == at::kDouble) lloyd_step_impl<double>(tokens, key, seen, labels, statistics, n);
  else TORCH_CHECK(false, "lloyd_step: float32 or float64 only");
  return {labels, statistics};
}
// ---- end of lloyd_step -----------------------------------------------------------------------------------------

// ---- membership_sums: one pass of a weighted assignment (soft, gmm, fuzzy) without the (n, k) weights -----------
// `exp(x)` of a vector with x <= 0 (-inf included): x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts, Cody and
// Waite), e^r by its Taylor polynomial (degree 7 for float, 13 for double: truncation under 0.1 ulp), times 2^n made
// from its bits as 2^(n + 64) 2^-64 so that results down to 2^-1074 (2^-149) are subnormal, not 0. Within 2 ulp.
template <typename T>
static inline Vec<T> exp_nonpositive(Vec<T> x) {
  using I = Index<T>;
  constexpr bool single = std::is_same<T, float>::value;
  constexpr T lowest = single ? T(-110) : T(-750);  // exp is 0 below, in the dtype
  constexpr T log2e = T(1.4426950408889634), shifter = single ? T(12582912.0) : T(6755399441055744.0);  // 1.5 2^23, 1.5 2^52
  constexpr T ln2_hi = single ? T(0.693359375) : T(6.93147180369123816490e-01);
  constexpr T ln2_lo = single ? T(-2.12194440e-4) : T(1.90821492927058770002e-10);
  x = x < lowest ? Vec<T>{} + lowest : x;
  const Vec<T> t = x * log2e + shifter;
  const Vec<T> n = t - shifter;  // round(x / ln2)
  const Vec<T> r = (x - n * ln2_hi) - n * ln2_lo;
  constexpr int degree = single ? 7 : 13;
  static constexpr double inverse_factorial[14] = {
      1.0, 1.0, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
      1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
  Vec<T> p = Vec<T>{} + T(inverse_factorial[degree]);
  for (int i = degree - 1; i >= 0; --i) p = p * r + T(inverse_factorial[i]);  // Horner on Σ_i r^i / i!
  const I offset = (I)t - (I)(Vec<T>{} + shifter);  // n as an integer, from the low bits of t
  constexpr int mantissa = single ? 23 : 52, bias = single ? 127 : 1023;
  const Vec<T> scale = (Vec<T>)((offset + (bias + 64)) << mantissa);
  return p * scale * T(5.421010862427522e-20);  // 2^-64
}

// A vector held in a register from here on (an empty asm statement that may change it): its load is not repeated as
// an operand of each multiply-add that reads it.
template <typename V>
static inline void in_register(V& v) {
#if defined(__AVX__)
  __asm__("" : "+x"(v));
#endif
}

// `Lanes<A>` lanes from `p` as a vector of A: floats widened to doubles, or as they are.
typedef float FloatHalf __attribute__((vector_size(kVectorBytes / 2)));
template <typename A, typename T>
static inline Vec<A> widen(const T* p) {
  if constexpr (std::is_same<A, T>::value) { Vec<A> h; std::memcpy(&h, p, sizeof(h)); return h; }
  else { FloatHalf h; std::memcpy(&h, p, sizeof(h)); return __builtin_convertvector(h, DoubleVec); }
}

// `|x|^2` of `Lanes<A>` rows as a vector of A, column c of the rows at `p + c * stride`: each summed in double in
// coordinate order, then rounded once to A.
template <typename A, typename T>
static inline Vec<A> square_norms(const T* p, int64_t stride, int64_t dim) {
  if constexpr (std::is_same<A, double>::value) {
    Vec<A> norm = {};
    for (int64_t c = 0; c < dim; ++c) { const Vec<A> x = widen<A>(p + c * stride); norm += x * x; }
    return norm;
  } else {
    constexpr int half = Lanes<double>::value;
    DoubleVec low = {}, high = {};
    for (int64_t c = 0; c < dim; ++c) {
      const DoubleVec x = widen<double>(p + c * stride), y = widen<double>(p + c * stride + half);
      low += x * x;
      high += y * y;
    }
    const FloatHalf halves[2] = {__builtin_convertvector(low, FloatHalf), __builtin_convertvector(high, FloatHalf)};
    Vec<A> norm;
    std::memcpy(&norm, halves, sizeof(norm));
    return norm;
  }
}

enum MembershipKind : int64_t { kSoftmax = 0, kFuzzy = 1 };
struct MembershipRule {
  int64_t kind;       // kSoftmax: softmax_j(scaling q_i.key_j); kFuzzy: fuzzy c-means on |q_i - key_j|^2
  double scaling;     // the softmax's factor on the scores (applied in the dtype when != 1)
  double exponent;    // fuzzy: the ratios' power 1/(m-1)
  double power;       // the sums' power of the weights, max(w, 0)^power (1: w itself)
  bool square_norm;   // the sums' rows [x ; |x|^2 ; 1] instead of [x ; 1]
  bool sums;          // whether the sums are wanted (else only the labels or the weights)
};
constexpr int kMemberVectors = 16;       // vectors of rows per tile
constexpr int kMemberKeys = 4, kMemberColumns = 3;  // the sums' register tile (written out in `membership_tile`)
constexpr int64_t kMemberTiles = 64;     // tiles per block of partial sums
constexpr int64_t kMemberWave = 32;      // blocks whose partial sums are held at once

template <typename T, typename A>
struct MemberWorkspace {
  std::vector<Vec<T>> columns, scores;   // the tile's query columns; its (k, vectors) scores, then weights
  std::vector<Vec<A>> rows, powers;      // the sums' rows, transposed and widened (column-major); a key block's weights^power
  std::vector<double> block_sums;        // the block's sums so far, column-major: block_sums[c * keys + j]
};

// `out[t] += Σ_lanes a_t` for four vectors of A (four keys' partial sums of one column), each a float64 sum of its
// lanes in a fixed order: float lanes widened, lane r and lane r + L/2 added while more than 4 remain, then
// (l0 + l1) + (l2 + l3). With AVX2, 2 horizontal additions and a permutation for the four.
template <typename A>
static inline void add_lane_sums(const Vec<A>& a0, const Vec<A>& a1, const Vec<A>& a2, const Vec<A>& a3, double* out) {
#if defined(__AVX__) && !defined(__AVX512F__)
  auto pairs = [](const Vec<A>& a) -> __m256d {
    if constexpr (std::is_same<A, float>::value) {
      const __m256 v = (__m256)a;
      return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    } else return (__m256d)a;
  };
  const __m256d h01 = _mm256_hadd_pd(pairs(a0), pairs(a1)), h23 = _mm256_hadd_pd(pairs(a2), pairs(a3));
  const __m256d total = _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20), _mm256_permute2f128_pd(h01, h23, 0x31));
  _mm256_storeu_pd(out, _mm256_add_pd(_mm256_loadu_pd(out), total));
#else
  const Vec<A>* a[4] = {&a0, &a1, &a2, &a3};
  for (int t = 0; t < 4; ++t) {
    double lanes[Lanes<A>::value];
    for (int r = 0; r < Lanes<A>::value; ++r) lanes[r] = static_cast<double>((*a[t])[r]);
    int count = Lanes<A>::value;
    for (; count > 4; count /= 2)
      for (int r = 0; r < count / 2; ++r) lanes[r] += lanes[r + count / 2];
    out[t] += count == 4 ? (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) : count == 2 ? lanes[0] + lanes[1] : lanes[0];
  }
#endif
}

// The weights of one tile (rows [0, count) of `q`), into `ws.scores` (`scores[j * kMemberVectors + v]`), 0 in the
// lanes of rows that are padding or past `count`; their labels (first largest weight, -1 where it is not > 0) and
// the weights themselves (row-major into `kept`) when asked; then their sums into `ws.block_sums`.
template <typename T, typename A>
static void membership_tile(const T* q, int64_t ldq, int64_t eq, const T* keys, int64_t k, int64_t dim, const T* s, const bool* seen, int64_t count, const MembershipRule& rule,
                            int64_t* labels, T* kept, MemberWorkspace<T, A>& ws) {
  constexpr int L = Lanes<T>::value, LA = Lanes<A>::value, V = kMemberVectors;
  const int64_t vectors = transpose_tile(q, count, ldq, eq, ws.columns);
  Vec<T>* S = ws.scores.data();
  Vec<T> extreme[V];  // each row's largest score (softmax) or least distance (fuzzy), kept as the scores are stored
  if (rule.kind == kFuzzy) {
    for (int u = 0; u < V; ++u) extreme[u] = Vec<T>{} + std::numeric_limits<T>::infinity();
    tile_scores<T, true>(ws.columns, vectors, keys, k, eq, [&](const Vec<T>& d2, int64_t u, int64_t j) {
      S[j * V + u] = d2;
      extreme[u] = d2 < extreme[u] ? d2 : extreme[u];
    });
  } else {
    const T scaling = static_cast<T>(rule.scaling);
    for (int u = 0; u < V; ++u) extreme[u] = Vec<T>{} - std::numeric_limits<T>::infinity();
    tile_scores<T>(ws.columns, vectors, keys, k, eq, [&](const Vec<T>& x, int64_t u, int64_t j) {
      const Vec<T> score = rule.scaling == 1.0 ? x : x * scaling;
      S[j * V + u] = score;
      extreme[u] = score > extreme[u] ? score : extreme[u];
    });
  }
  // The weights key by key (j outer, the tile's vectors of rows inner): `scores` is read in the order it lies, one
  // 512-byte row of a key at a time, not 64 bytes from each key's row (which share a few of L1's sets). Each row's
  // values are the same: its terms are taken in the same order of j.
  const Vec<T> zero = {};
  using Mask = decltype(zero > zero);
  Mask live[V];     // the lanes of real rows; the others' weights are 0 (whatever their scores)
  Vec<T> total[V];  // Σ_j of each row's unnormalised weights, then its inverse
  for (int64_t u = 0; u < vectors; ++u) {
    Vec<T> real = zero;
    for (int r = 0; r < L; ++r) real[r] = (u * L + r < count && (!seen || seen[u * L + r])) ? T(1) : T(0);
    live[u] = real > zero;
    total[u] = zero;
  }
  if (rule.kind == kSoftmax) {  // softmax_j: exp(s_j - max) times 1 / Σ_j' exp(s_j' - max), as torch.softmax
    for (int64_t j = 0; j < k; ++j) {
      Vec<T>* row = S + j * V;
      for (int64_t u = 0; u < vectors; ++u) { row[u] = exp_nonpositive<T>(row[u] - extreme[u]); total[u] += row[u]; }
    }
    for (int64_t u = 0; u < vectors; ++u) total[u] = T(1) / total[u];
    for (int64_t j = 0; j < k; ++j) {
      Vec<T>* row = S + j * V;
      for (int64_t u = 0; u < vectors; ++u) row[u] = live[u] ? row[u] * total[u] : zero;
    }
  } else {  // fuzzy c-means: (δ / D_j)^q / Σ_j' (δ / D_j')^q, δ = min_j D_j; δ = 0: shared among the zero distances
    for (int64_t j = 0; j < k; ++j) {
      Vec<T>* row = S + j * V;
      for (int64_t u = 0; u < vectors; ++u) {
        Vec<T> ratio = extreme[u] / row[u];
        if (rule.exponent != 1.0)
          for (int r = 0; r < L; ++r) ratio[r] = std::pow(ratio[r], static_cast<T>(rule.exponent));
        const Vec<T> exact = row[u] == zero ? zero + T(1) : zero;
        row[u] = extreme[u] == zero ? exact : ratio;
        total[u] += row[u];
      }
    }
    const T tiny = std::numeric_limits<T>::min();
    for (int64_t u = 0; u < vectors; ++u) total[u] = total[u] < tiny ? zero + tiny : total[u];
    for (int64_t j = 0; j < k; ++j) {
      Vec<T>* row = S + j * V;
      for (int64_t u = 0; u < vectors; ++u) row[u] = live[u] ? row[u] / total[u] : zero;
    }
  }
  if (labels) {  // the first largest weight, as `max` finds it
    Vec<T> best[V];
    Index<T> index[V];
    for (int64_t u = 0; u < vectors; ++u) { best[u] = S[u]; index[u] = Index<T>{}; }
    for (int64_t j = 1; j < k; ++j) {
      const Vec<T>* row = S + j * V;
      const Index<T> key = Index<T>{} + (typename Lanes<T>::label)j;
      for (int64_t u = 0; u < vectors; ++u) {
        const auto better = row[u] > best[u];
        best[u] = better ? row[u] : best[u];
        index[u] = better ? key : index[u];
      }
    }
    for (int64_t u = 0; u < vectors; ++u)
      for (int r = 0; r < L && u * L + r < count; ++r)
        labels[u * L + r] = (live[u][r] && best[u][r] > 0) ? index[u][r] : -1;
  }
  if (kept)
    for (int64_t u = 0; u < vectors; ++u)
      for (int r = 0; r < L && u * L + r < count; ++r)
        for (int64_t j = 0; j < k; ++j) kept[(u * L + r) * k + j] = S[j * V + u][r];
  if (!rule.sums) return;
  for (int64_t u = vectors; u < V; ++u) for (int64_t j = 0; j < k; ++j) S[j * V + u] = zero;
  // The sums Σ_i w_ij^power s_i row_ic (w = max(w, 0) when power != 1), each term w^power * (s_i row_ic) in A, over the tile's rows in A's lanes,
  // each lane's partial sum added to the block's double sums (`block_sums`, `add_lane_sums`). The rows [x ; (|x|^2 ;) 1] are the query's first `dim` columns,
  // widened once per tile (|x|^2 summed in double in coordinate order and rounded once to A), times s_i; where they are the tile's columns
  // as they are (float sums of float rows, or double of double, and no s_i), the whole column blocks of x are read in
  // place (`direct` columns) and only the others are copied.
  const int64_t out_width = dim + 1 + (rule.square_norm ? 1 : 0);
  const int64_t padded_columns = (out_width + kMemberColumns - 1) / kMemberColumns * kMemberColumns;
  constexpr int64_t R = L * V, U = R / LA, H = L / LA;  // rows per tile; double vectors per column, per vector of rows
  const int64_t direct = std::is_same<A, T>::value && !s ? dim / kMemberColumns * kMemberColumns : 0;
  Vec<A>* Xw = ws.rows.data();  // column c >= direct's vectors of rows: Xw[(c - direct) * U + a]
  const T* lanes = reinterpret_cast<const T*>(ws.columns.data());  // lane r of (u, c): lanes[(u * eq + c) * L + r]
  T scales[R];
  if (s) for (int64_t i = 0; i < R; ++i) scales[i] = i < count ? s[i] : T(0);
  const Vec<A> none = {}, one = none + A(1);
  for (int64_t a = 0; a < U; ++a) {
    const int64_t u = a / H, h = a % H;
    if (u >= vectors) { for (int64_t c = direct; c < padded_columns; ++c) Xw[(c - direct) * U + a] = none; continue; }
    const Vec<A> scale = s ? widen<A>(scales + a * LA) : one;
    for (int64_t c = direct; c < dim; ++c) {
      const Vec<A> x = widen<A>(lanes + (u * eq + c) * L + h * LA);
      Xw[(c - direct) * U + a] = s ? scale * x : x;
    }
    if (rule.square_norm) {
      const Vec<A> norm = square_norms<A>(lanes + u * eq * L + h * LA, L, dim);
      Xw[(dim - direct) * U + a] = s ? scale * norm : norm;
    }
    Xw[(out_width - 1 - direct) * U + a] = scale;
    for (int64_t c = out_width; c < padded_columns; ++c) Xw[(c - direct) * U + a] = none;
  }
  const T* weights = reinterpret_cast<const T*>(S);  // weight of row i with key j: weights[(j * V) * L + i]
  A* P = reinterpret_cast<A*>(ws.powers.data());
  // Weights in the sums' type and power 1: read in place (the keys past k are zero rows of `scores`).
  const bool in_place = std::is_same<A, T>::value && rule.power == 1.0;
  const int64_t key_slots = (k + kMemberKeys - 1) / kMemberKeys * kMemberKeys;
  for (int64_t j0 = 0; j0 < k; j0 += kMemberKeys) {
    const Vec<A>* Pv = in_place ? reinterpret_cast<const Vec<A>*>(S + j0 * V) : ws.powers.data();  // key j0 + t's: Pv[t * U + a]
    for (int t = 0; t < kMemberKeys && !in_place; ++t) {
      A* p = P + t * R;
      if (j0 + t >= k) { std::fill(p, p + R, A(0)); continue; }
      const T* w = weights + (j0 + t) * V * L;
      Vec<A>* pv = ws.powers.data() + t * U;
      if (rule.power == 1.0) for (int64_t a = 0; a < U; ++a) pv[a] = widen<A>(w + a * LA);
      else if (rule.power == 2.0)
        for (int64_t a = 0; a < U; ++a) { const Vec<A> x = widen<A>(w + a * LA), positive = x > none ? x : none; pv[a] = positive * positive; }
      else for (int64_t i = 0; i < R; ++i) p[i] = std::pow(std::max(static_cast<A>(w[i]), A(0)), static_cast<A>(rule.power));
    }
    for (int64_t c0 = 0; c0 < padded_columns; c0 += kMemberColumns) {
      Vec<A> a00 = {}, a01 = {}, a02 = {}, a10 = {}, a11 = {}, a12 = {}, a20 = {}, a21 = {}, a22 = {}, a30 = {}, a31 = {}, a32 = {};
      // column c0 + i of vector a: x0[a * step + i * gap], in place (the columns of vector a are e apart; the rows
      // past the tile's are finite leftovers, whose weights are 0) or copied
      const bool in_columns = c0 < direct;
      const Vec<A>* x0 = in_columns ? reinterpret_cast<const Vec<A>*>(ws.columns.data()) + c0 : Xw + (c0 - direct) * U;
      const int64_t step = in_columns ? eq : 1, gap = in_columns ? 1 : U;
      for (int64_t a = 0; a < U; ++a, x0 += step) {
        // 12 accumulators, the 3 columns and one key's weights at a time: the 16 registers of AVX2, so that each
        // column and weight is loaded once (else the compiler reloads them as operands of the multiply-adds)
        Vec<A> y0 = x0[0], y1 = x0[gap], y2 = x0[2 * gap];
        in_register(y0); in_register(y1); in_register(y2);
        Vec<A> w = Pv[a];
        in_register(w); a00 += w * y0; a01 += w * y1; a02 += w * y2;
        w = Pv[U + a];
        in_register(w); a10 += w * y0; a11 += w * y1; a12 += w * y2;
        w = Pv[2 * U + a];
        in_register(w); a20 += w * y0; a21 += w * y1; a22 += w * y2;
        w = Pv[3 * U + a];
        in_register(w); a30 += w * y0; a31 += w * y1; a32 += w * y2;
      }
      // keys past k and columns past out_width add 0 (zero weights, zero rows) into the padding of `block_sums`
      double* column = ws.block_sums.data() + c0 * key_slots + j0;
      add_lane_sums<A>(a00, a10, a20, a30, column);
      add_lane_sums<A>(a01, a11, a21, a31, column + key_slots);
      add_lane_sums<A>(a02, a12, a22, a32, column + 2 * key_slots);
    }
  }
}

template <typename T, typename A>
static void membership_sums_impl(const at::Tensor& query, const at::Tensor& key, int64_t dim, const at::Tensor& s, const at::Tensor& seen, const MembershipRule& rule,
                                 at::Tensor& sums, at::Tensor& labels, at::Tensor& kept) {
  constexpr int64_t R = Lanes<T>::value * kMemberVectors, block_rows = R * kMemberTiles;
  const int64_t groups = query.size(0), n = query.size(1), eq = query.size(2), k = key.size(1);
  const int64_t out_width = sums.size(2), sum_keys = sums.size(1);  // sum_keys: k, or 0 when no sums are wanted
  const int64_t blocks = (n + block_rows - 1) / block_rows, tasks = groups * blocks;
  const T* qd = query.data_ptr<T>();
  const T* kd = key.data_ptr<T>();
  const T* sd = s.defined() ? s.data_ptr<T>() : nullptr;
  const bool* md = seen.defined() ? seen.data_ptr<bool>() : nullptr;
  int64_t* ld = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  T* kd_out = kept.defined() ? kept.data_ptr<T>() : nullptr;
  double* total = sums.data_ptr<double>();
  const int64_t padded_columns = (out_width + kMemberColumns - 1) / kMemberColumns * kMemberColumns;
  const int64_t key_slots = (k + kMemberKeys - 1) / kMemberKeys * kMemberKeys;
  // Blocks of rows in waves: each block's sums into its own partial sums (in parallel), then added to its group's
  // sums block after block, so the order of every addition is fixed by the shapes alone, whatever the threads.
  std::vector<double> partial(std::min(tasks, kMemberWave) * sum_keys * out_width);
  for (int64_t first = 0; first < tasks; first += kMemberWave) {
    const int64_t last = std::min(tasks, first + kMemberWave);
    std::fill(partial.begin(), partial.end(), 0.0);
    at::parallel_for(first, last, 1, [&](int64_t begin, int64_t end) {
      MemberWorkspace<T, A> ws;
      ws.columns.resize(eq * kMemberVectors);
      ws.scores.resize((k + kMemberKeys) * kMemberVectors);  // zero rows past k (read by the sums' last key block)
      ws.rows.resize(padded_columns * R / Lanes<A>::value);
      ws.powers.resize(kMemberKeys * R / Lanes<A>::value);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / blocks, start = (task % blocks) * block_rows, stop = std::min(n, start + block_rows);
        ws.block_sums.assign(sum_keys ? key_slots * padded_columns : 0, 0.0);
        for (int64_t i = start; i < stop; i += R) {
          const int64_t row = g * n + i;
          membership_tile<T, A>(qd + g * query.stride(0) + i * query.stride(1), query.stride(1), eq, kd + g * k * eq, k,
                             dim, sd ? sd + row : nullptr, md ? md + row : nullptr, std::min(R, stop - i), rule,
                             ld ? ld + row : nullptr, kd_out ? kd_out + row * k : nullptr, ws);
        }
        double* out = partial.data() + (task - first) * sum_keys * out_width;  // the block's sums, row-major
        for (int64_t j = 0; j < sum_keys; ++j)
          for (int64_t c = 0; c < out_width; ++c) out[j * out_width + c] = ws.block_sums[c * key_slots + j];
      }
    });
    for (int64_t task = first; task < last; ++task) {
      const double* p = partial.data() + (task - first) * sum_keys * out_width;
      double* t = total + (task / blocks) * sum_keys * out_width;
      for (int64_t c = 0; c < sum_keys * out_width; ++c) t[c] += p[c];
    }
  }
}

// query (groups, n, e) and key (groups, k, e) of the rule's scores, whose first `dim` query coordinates are the
// point x; sample_weight (groups, n) or none; seen (groups, n) bool or none (False: padding, weight 0 and label -1).
// Returns the float64 sums (groups, k, dim + 1 (+ 1)) of the rows [x ; (|x|^2 ;) 1] (k = 0 unless `want_sums`),
// the labels (groups, n) when asked, and fills `kept` (groups, n, k) with the weights when given. Float32 rows are
// summed in float32 lanes (16 rows each, then in float64), or with `float64_products` every product in float64.
std::vector<at::Tensor> membership_sums(at::Tensor query, at::Tensor key, int64_t dim,
                                        c10::optional<at::Tensor> sample_weight, c10::optional<at::Tensor> seen,
                                        int64_t kind, double scaling, double exponent, double power, bool square_norm,
                                        bool float64_products, bool want_sums, bool want_labels, c10::optional<at::Tensor> kept) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && query.size(0) == key.size(0) && query.size(2) == key.size(2) &&
              query.stride(2) == 1 && key.is_contiguous() && query.scalar_type() == key.scalar_type() &&
              key.size(1) > 0 && dim >= 0 && dim <= query.size(2),
              "membership_sums: query (groups, n, e) and key (groups, k, e) of one dtype, contiguous rows, dim <= e");
  TORCH_CHECK(kind == kSoftmax || kind == kFuzzy, "membership_sums: unknown rule");
  const int64_t groups = query.size(0), n = query.size(1), k = key.size(1);
  const auto dtype = query.scalar_type();
  at::Tensor s, m, labels, out;
  if (sample_weight.has_value()) {
    s = sample_weight->to(dtype).contiguous();
    TORCH_CHECK(s.dim() == 2 && s.size(0) == groups && s.size(1) == n, "membership_sums: sample_weight (groups, n)");
  }
  if (seen.has_value()) {
    m = seen->to(at::kBool).contiguous();
    TORCH_CHECK(m.dim() == 2 && m.size(0) == groups && m.size(1) == n, "membership_sums: seen (groups, n)");
  }
  if (kept.has_value()) {
    out = *kept;
    TORCH_CHECK(out.is_contiguous() && out.scalar_type() == dtype && out.dim() == 3 && out.size(0) == groups &&
                out.size(1) == n && out.size(2) == k, "membership_sums: kept (groups, n, k)");
  }
  if (want_labels) labels = at::empty({groups, n}, query.options().dtype(at::kLong));
  const MembershipRule rule{kind, scaling, exponent, power, square_norm, want_sums};
  auto sums = at::zeros({groups, want_sums ? k : 0, dim + 1 + (square_norm ? 1 : 0)}, query.options().dtype(at::kDouble));
  if (dtype == at::kFloat && !float64_products) membership_sums_impl<float, float>(query, key, dim, s, m, rule, sums, labels, out);
  else if (dtype == at::kFloat) membership_sums_impl<float, double>(query, key, dim, s, m, rule, sums, labels, out);
  else if (dtype == at::kDouble) membership_sums_impl<double, double>(query, key, dim, s, m, rule, sums, labels, out);
  else TORCH_CHECK(false, "membership_sums: float32 or float64 only");
  return want_labels ? std::vector<at::Tensor>{sums, labels} : std::vector<at::Tensor>{sums};
}
// ---- end of membership_sums ------------------------------------------------------------------------------------

// ---- batch_costs: a call's passes over the data: compact tokens, inertia (with the head), largest magnitudes ----
#include <cstdlib>
#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif
// A tensor of `sizes` whose memory, when it spans several huge pages, is advised for transparent huge pages
// (`MADV_HUGEPAGE`, as PyTorch's allocator does under THP_MEM_ALLOC_ENABLE=1): a fresh allocation above glibc's
// mmap threshold (32 MiB at most) otherwise takes a page fault every 4 KiB on its first write, which costs more than
// the copy that fills it. Where huge pages are not enabled the advice does nothing.
static at::Tensor huge_page_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(MADV_HUGEPAGE)
  constexpr size_t kHugePage = size_t(2) << 20;
  size_t bytes = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  for (const int64_t size : sizes) bytes *= static_cast<size_t>(size);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* data = nullptr;
  if (bytes >= 4 * kHugePage && posix_memalign(&data, kHugePage, rounded) == 0) {
    madvise(data, rounded, MADV_HUGEPAGE);
    return at::from_blob(data, sizes, [](void* pointer) { std::free(pointer); }, options);
  }
#endif
  return at::empty(sizes, options);
}

// tokens (groups, n + k, d + 1): [x_i ; 1] for the points (groups, n, d) (rows contiguous, any strides between
// them), then [c_j ; 1] for the contiguous centroids (groups, k, d), row after row: each group is read and written
// once. With an origin o (groups, d), contiguous, [x_i - o ; 1] and [c_j - o ; 1], each difference rounded once.
// The same numbers whatever the threads.
at::Tensor compact_tokens(at::Tensor points, at::Tensor centroids, c10::optional<at::Tensor> origin) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && centroids.dim() == 3 && centroids.is_contiguous() &&
              centroids.size(0) == points.size(0) && centroids.size(2) == points.size(2) &&
              centroids.scalar_type() == points.scalar_type(),
              "compact_tokens: points (groups, n, d) with contiguous rows and contiguous centroids (groups, k, d) of one dtype");
  TORCH_CHECK(!origin.has_value() || (origin->dim() == 2 && origin->is_contiguous() && origin->size(0) == points.size(0) &&
                                      origin->size(1) == points.size(2) && origin->scalar_type() == points.scalar_type()),
              "compact_tokens: a contiguous origin (groups, d) of the points' dtype");
  const int64_t groups = points.size(0), n = points.size(1), k = centroids.size(1), d = points.size(2);
  auto tokens = huge_page_tensor({groups, n + k, d + 1}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "compact_tokens", [&] {
    const scalar_t* x = points.data_ptr<scalar_t>();
    const scalar_t* c = centroids.data_ptr<scalar_t>();
    scalar_t* t = tokens.data_ptr<scalar_t>();
    const scalar_t* o = origin.has_value() ? origin->data_ptr<scalar_t>() : nullptr;
    const int64_t ldx = points.stride(1), gx = points.stride(0), width = d + 1;
    // Rows of all groups in parallel (a single problem's too), token row r = g * (n + k) + i.
    at::parallel_for(0, groups * (n + k), std::max<int64_t>(1, (1 << 16) / width), [&](int64_t begin, int64_t end) {
      for (int64_t g = begin / (n + k), r = begin; r < end; ++g) {  // without a division per row
        for (const int64_t stop = std::min(end, (g + 1) * (n + k)); r < stop; ++r) {
          const int64_t i = r - g * (n + k);
          const scalar_t* row = i < n ? x + g * gx + i * ldx : c + (g * k + i - n) * d;
          if (o == nullptr) {
            std::memcpy(t + r * width, row, d * sizeof(scalar_t));
          } else {
            const scalar_t* shift = o + g * d;
            for (int64_t e = 0; e < d; ++e) t[r * width + e] = row[e] - shift[e];
          }
          t[r * width + d] = scalar_t(1);
        }
      }
    });
  });
  return tokens;
}

// Σ_i w_i |x_i - c_a(i)|^2 per group over the points whose label a(i) is in [0, k) (w_i = 1 without weights), or
// with `distances` each point's |x_i - c_a(i)|^2 written there (c_0 where a(i) is not in [0, k)): each
// point's squared distance in the dtype, its squares added in coordinate order (each square rounded, no fused
// multiply-add), then widened to double, times w_i in double, and summed in point order within blocks of kSumRows
// points, the blocks' totals added in order: the same numbers whatever the threads. Points are taken a vector
// register of rows at a time (float rows with AVX2: their differences 8 coordinates at a time, `transpose_block`).
template <typename T>
__attribute__((optimize("fp-contract=off")))
static double inertia_block(const T* x, int64_t ldx, const T* centres, int64_t ldc, const int64_t* label,
                            const double* weight, int64_t first, int64_t stop, int64_t k, int64_t d, double total,
                            T* distances = nullptr) {
  constexpr int L = Lanes<T>::value;
  for (int64_t start = first; start < stop; start += L) {
    const int64_t count = std::min<int64_t>(L, stop - start);
    const T* row[L];
    const T* centre[L];
    for (int r = 0; r < L; ++r) {
      const int64_t i = start + std::min<int64_t>(r, count - 1);
      const int64_t j = label[i];
      row[r] = x + i * ldx;
      centre[r] = centres + (j >= 0 && j < k ? j : 0) * ldc;
    }
    Vec<T> squares = {};
    int64_t c = 0;
#if defined(__AVX__) && !defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value && L == 8) {  // 8 coordinates of the 8 rows' differences at a time
      alignas(32) float differences[64], columns[64];
      for (; c + 8 <= d; c += 8) {
        for (int r = 0; r < 8; ++r) {  // whole-vector loads and stores, which the transposition's loads forward
          Vec<T> point, nearest;
          std::memcpy(&point, row[r] + c, sizeof(point));
          std::memcpy(&nearest, centre[r] + c, sizeof(nearest));
          const Vec<T> difference = point - nearest;
          std::memcpy(differences + r * 8, &difference, sizeof(difference));
        }
        transpose_block(differences, 8, columns);
        for (int e = 0; e < 8; ++e) {
          Vec<T> difference;
          std::memcpy(&difference, columns + e * 8, sizeof(difference));
          squares = squares + difference * difference;
        }
      }
    }
#endif
    for (; c < d; ++c) {
      Vec<T> difference;
      for (int r = 0; r < L; ++r) difference[r] = row[r][c] - centre[r][c];
      squares = squares + difference * difference;
    }
    if (distances) {  // each point's own squared distance instead of the total (to centroid 0 where unlabelled)
      for (int64_t r = 0; r < count; ++r) distances[start + r] = squares[r];
      continue;
    }
    for (int64_t r = 0; r < count; ++r) {
      const int64_t j = label[start + r];
      if (j < 0 || j >= k) continue;
      const double square = static_cast<double>(squares[r]);
      total += weight ? square * weight[start + r] : square;
    }
  }
  return total;
}

// points (groups, n, d) with contiguous rows, centroids (groups, k, d), int64 labels (groups, n), float64 weights
// (groups, n) or none -> the float64 totals (groups).
at::Tensor labelled_inertia(at::Tensor points, at::Tensor centroids, at::Tensor labels, c10::optional<at::Tensor> weights) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && centroids.dim() == 3 && centroids.is_contiguous() &&
              centroids.size(0) == points.size(0) && centroids.size(2) == points.size(2) &&
              centroids.scalar_type() == points.scalar_type() && labels.dim() == 2 && labels.is_contiguous() &&
              labels.scalar_type() == at::kLong && labels.size(0) == points.size(0) && labels.size(1) == points.size(1),
              "labelled_inertia: points (groups, n, d) with contiguous rows, centroids (groups, k, d), int64 labels (groups, n)");
  at::Tensor w;
  if (weights.has_value()) {
    w = weights->contiguous();
    TORCH_CHECK(w.scalar_type() == at::kDouble && w.sizes() == labels.sizes(), "labelled_inertia: float64 weights (groups, n)");
  }
  const int64_t groups = points.size(0), n = points.size(1), k = centroids.size(1), d = points.size(2);
  const int64_t blocks = std::max<int64_t>(1, (n + kSumRows - 1) / kSumRows);
  std::vector<double> partial(groups * blocks, 0.0);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "labelled_inertia", [&] {
    const scalar_t* x = points.data_ptr<scalar_t>();
    const scalar_t* c = centroids.data_ptr<scalar_t>();
    const int64_t* label = labels.data_ptr<int64_t>();
    const double* wt = w.defined() ? w.data_ptr<double>() : nullptr;
    const int64_t gx = points.stride(0), ldx = points.stride(1);
    const int64_t rows = std::min(n, kSumRows);
    at::parallel_for(0, groups * blocks, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, rows * d)), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / blocks, first = (task % blocks) * kSumRows;
        partial[task] = inertia_block<scalar_t>(x + g * gx, ldx, c + g * k * d, d, label + g * n, wt ? wt + g * n : nullptr,
                                                first, std::min(n, first + kSumRows), k, d, 0.0);
      }
    });
  });
  auto totals = at::zeros({groups}, points.options().dtype(at::kDouble));
  double* out = totals.data_ptr<double>();
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t block = 0; block < blocks; ++block) out[g] += partial[g * blocks + block];
  return totals;
}
// points (groups, n, d) with contiguous rows, centroids (groups, k, d), int64 labels (groups, n) -> each point's
// squared distance to its labelled centroid (groups, n) in the points' dtype, as `labelled_inertia` takes it.
at::Tensor labelled_distances(at::Tensor points, at::Tensor centroids, at::Tensor labels) {
  TORCH_CHECK(points.dim() == 3 && points.stride(2) == 1 && centroids.dim() == 3 && centroids.is_contiguous() &&
              centroids.size(0) == points.size(0) && centroids.size(2) == points.size(2) && centroids.size(1) > 0 &&
              centroids.scalar_type() == points.scalar_type() && labels.dim() == 2 && labels.is_contiguous() &&
              labels.scalar_type() == at::kLong && labels.size(0) == points.size(0) && labels.size(1) == points.size(1),
              "labelled_distances: points (groups, n, d) with contiguous rows, centroids (groups, k > 0, d), int64 labels (groups, n)");
  const int64_t groups = points.size(0), n = points.size(1), k = centroids.size(1), d = points.size(2);
  auto distances = at::empty({groups, n}, points.options());
  const int64_t blocks = std::max<int64_t>(1, (n + kSumRows - 1) / kSumRows);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "labelled_distances", [&] {
    const scalar_t* x = points.data_ptr<scalar_t>();
    const scalar_t* c = centroids.data_ptr<scalar_t>();
    const int64_t* label = labels.data_ptr<int64_t>();
    scalar_t* out = distances.data_ptr<scalar_t>();
    const int64_t gx = points.stride(0), ldx = points.stride(1);
    const int64_t rows = std::min(n, kSumRows);
    at::parallel_for(0, groups * blocks, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, rows * d)), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / blocks, first = (task % blocks) * kSumRows;
        inertia_block<scalar_t>(x + g * gx, ldx, c + g * k * d, d, label + g * n, nullptr, first,
                                std::min(n, first + kSumRows), k, d, 0.0, out + g * n);
      }
    });
  });
  return distances;
}

// The assignment head and the inertia in one pass over the compact tokens (groups, n + k, d + 1), [x_i ; 1] then
// [c_j ; 1], with the assign block's keys [2 c_j ; -|c_j|^2] (groups, k, d + 1): each tile of rows gets the labels of
// `nearest_group` (those of `nearest_keys`; -1 where `visible` is false), then its squared distances to the labelled
// centroids are added while its rows are in cache, in the order of `labelled_inertia` (points in order within blocks
// of kSumRows, a multiple of the tile, the blocks' totals added in order). The threads share the problems, or, with
// fewer problems than threads, the rows (`share_rows`, as `lloyd_step`). Returns the labels (groups, n) and the
// float64 inertia (groups).
template <typename scalar_t>
static void nearest_inertia_impl(const at::Tensor& tokens, const at::Tensor& key, const bool* seen, const double* weight,
                                 at::Tensor& labels, at::Tensor& totals, int64_t n) {
  const int64_t groups = tokens.size(0), width = tokens.size(2), k = key.size(1);
  const int64_t ldq = tokens.stride(1), group_stride = tokens.stride(0);
  const scalar_t* t = tokens.data_ptr<scalar_t>();
  const scalar_t* keys = key.data_ptr<scalar_t>();
  int64_t* out = labels.data_ptr<int64_t>();
  double* total = totals.data_ptr<double>();
  // Rows [start, stop) of problem g added to `block`, a block's running total.
  const auto add_inertia = [&](int64_t g, int64_t start, int64_t stop, double block) {
    const scalar_t* rows = t + g * group_stride;
    return inertia_block<scalar_t>(rows, ldq, rows + n * ldq, ldq, out + g * n, weight ? weight + g * n : nullptr,
                                   start, stop, k, width - 1, block);
  };
  const int64_t threads = at::get_num_threads();
  if (groups >= threads || n == 0) {
    at::parallel_for(0, groups, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n * k)), [&](int64_t begin, int64_t end) {
      Scoring<scalar_t> scoring(width);
      for (int64_t g = begin; g < end; ++g) {
        double sum = 0;
        for (int64_t start = 0; start < n; start += kSumRows) {
          double block = 0;
          label_tiles<scalar_t>(t + g * group_stride, ldq, keys + g * k * width, k, width,
                                seen ? seen + g * n : nullptr, start, std::min(n, start + kSumRows), scoring,
                                out + g * n, [&](int64_t a, int64_t b) { block = add_inertia(g, a, b, block); });
          sum += block;
        }
        total[g] = sum;
      }
    });
    return;
  }
  const int64_t blocks = (n + kSumRows - 1) / kSumRows;
  std::vector<double> partials(groups * blocks);  // each block's total
  share_rows<scalar_t>(groups, n, width, threads,
    [&](Scoring<scalar_t>& scoring, int64_t g, int64_t block, int64_t start, int64_t stop, bool first) {
      double& sum = partials[g * blocks + block];
      label_tiles<scalar_t>(t + g * group_stride, ldq, keys + g * k * width, k, width, seen ? seen + g * n : nullptr,
                            start, stop, scoring, out + g * n, [&](int64_t a, int64_t b) {
                              if (first) sum = add_inertia(g, a, b, sum);
                            });
    },
    [&](int64_t g, int64_t block, int64_t start, int64_t stop) {
      partials[g * blocks + block] = add_inertia(g, start, stop, partials[g * blocks + block]);
    });
  for (int64_t g = 0; g < groups; ++g) {
    double sum = 0;
    for (int64_t block = 0; block < blocks; ++block) sum += partials[g * blocks + block];
    total[g] = sum;
  }
}

std::vector<at::Tensor> nearest_inertia(at::Tensor tokens, at::Tensor key, c10::optional<at::Tensor> visible,
                                        c10::optional<at::Tensor> weights) {
  TORCH_CHECK(tokens.dim() == 3 && key.dim() == 3 && tokens.is_contiguous() && key.is_contiguous() &&
              key.size(0) == tokens.size(0) && key.size(2) == tokens.size(2) && key.size(1) <= tokens.size(1) &&
              key.scalar_type() == tokens.scalar_type(),
              "nearest_inertia: contiguous tokens (groups, n + k, e) and key (groups, k, e) of one dtype");
  const int64_t k = key.size(1), n = tokens.size(1) - k;
  at::Tensor mask, w;
  if (visible.has_value()) {
    mask = visible->contiguous();
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == tokens.size(0) && mask.size(1) == n,
                "nearest_inertia: bool visible (groups, n)");
  }
  if (weights.has_value()) {
    w = weights->contiguous();
    TORCH_CHECK(w.scalar_type() == at::kDouble && w.dim() == 2 && w.size(0) == tokens.size(0) && w.size(1) == n,
                "nearest_inertia: float64 weights (groups, n)");
  }
  const bool* seen = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const double* weight = w.defined() ? w.data_ptr<double>() : nullptr;
  auto labels = at::empty({tokens.size(0), n}, tokens.options().dtype(at::kLong));
  auto totals = at::zeros({tokens.size(0)}, tokens.options().dtype(at::kDouble));
  if (tokens.scalar_type() == at::kFloat) nearest_inertia_impl<float>(tokens, key, seen, weight, labels, totals, n);
  else if (tokens.scalar_type() == at::kDouble) nearest_inertia_impl<double>(tokens, key, seen, weight, labels, totals, n);
  else TORCH_CHECK(false, "nearest_inertia: float32 or float64 only");
  return {labels, totals};
}

// The largest |v| of each group of values (groups, n, d) (rows contiguous), in the dtype: NaN where a value is NaN
// (inf where one is infinite and none is NaN). Blocks of kSumRows rows in parallel (a single problem's too), each
// block's largest kept, then the largest of a group's blocks: a maximum is one of the values, exact in any order.
template <typename T>
static T largest_magnitude(const T* x, int64_t ldx, int64_t rows, int64_t d, bool& nan_found) {
  constexpr int L = Lanes<T>::value;
  const int64_t length = ldx == d ? rows * d : d;  // contiguous rows are one long row
  if (ldx == d) rows = 1;
  Vec<T> largest = {}, nan = {};
  T tail = 0;
  bool tail_nan = false;
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = x + i * ldx;
    int64_t c = 0;
    for (; c + L <= length; c += L) {
      Vec<T> v;
      std::memcpy(&v, row + c, sizeof(v));
      const Vec<T> magnitude = v < 0 ? -v : v;
      largest = magnitude > largest ? magnitude : largest;
      nan = v != v ? nan + 1 : nan;
    }
    for (; c < length; ++c) {
      const T magnitude = std::fabs(row[c]);
      tail = magnitude > tail ? magnitude : tail;
      tail_nan = tail_nan || row[c] != row[c];
    }
  }
  for (int r = 0; r < L; ++r) {
    tail = largest[r] > tail ? largest[r] : tail;
    tail_nan = tail_nan || nan[r] != 0;
  }
  nan_found = tail_nan;
  return tail;
}

at::Tensor largest_magnitudes(at::Tensor values) {
  TORCH_CHECK(values.dim() == 3 && values.stride(2) == 1, "largest_magnitudes: values (groups, n, d) with contiguous rows");
  const int64_t groups = values.size(0), n = values.size(1), d = values.size(2);
  const int64_t blocks = std::max<int64_t>(1, (n + kSumRows - 1) / kSumRows);
  auto out = at::empty({groups}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "largest_magnitudes", [&] {
    const scalar_t* x = values.data_ptr<scalar_t>();
    const int64_t gx = values.stride(0), ldx = values.stride(1);
    std::vector<scalar_t> largest(groups * blocks, scalar_t(0));
    std::vector<char> nan(groups * blocks, 0);
    const int64_t rows = std::min(n, kSumRows);
    at::parallel_for(0, groups * blocks, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, rows * d)), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / blocks, first = (task % blocks) * kSumRows;
        bool found = false;
        largest[task] = largest_magnitude<scalar_t>(x + g * gx + first * ldx, ldx, std::min(n, first + kSumRows) - first, d, found);
        nan[task] = found;
      }
    });
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t g = 0; g < groups; ++g) {
      scalar_t m = 0;
      bool found = false;
      for (int64_t task = g * blocks; task < (g + 1) * blocks; ++task) {
        m = largest[task] > m ? largest[task] : m;
        found = found || nan[task];
      }
      o[g] = found ? std::numeric_limits<scalar_t>::quiet_NaN() : m;
    }
  });
  return out;
}
// ---- end of batch_costs ----------------------------------------------------------------------------------------

// The loops touch no Python object: they run without the GIL, so that another Python thread (points mode's
// read-ahead decoding the next chunk) goes on meanwhile.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto released = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("nearest_keys", &nearest_keys, "nearest_keys", released);
  m.def("nearest_values", &nearest_values, "nearest_values", released);
  m.def("segment_sums", &segment_sums, "segment_sums", released);
  m.def("sparsemax_update", &sparsemax_update, "sparsemax_update", released);
  m.def("member_scores", &member_scores, "member_scores", released);
  m.def("thresholded_sums", &thresholded_sums, "thresholded_sums", released);
  m.def("sparsemax_members", &sparsemax_members, "sparsemax_members", released);
  m.def("sparsemax_round", &sparsemax_round, "sparsemax_round", released);
  m.def("sparsemax_support_sums", &sparsemax_support_sums, "sparsemax_support_sums", released);
  m.def("medoid_update", &medoid_update, "medoid_update", released);
  m.def("lloyd_step", &lloyd_step, "lloyd_step", released);
  m.def("order_statistics", &order_statistics, "order_statistics", released);
  m.def("membership_sums", &membership_sums, "membership_sums", released);
  m.def("compact_tokens", &compact_tokens, "compact_tokens", released);
  m.def("labelled_inertia", &labelled_inertia, "labelled_inertia", released);
  m.def("labelled_distances", &labelled_distances, "labelled_distances", released);
  m.def("largest_magnitudes", &largest_magnitudes, "largest_magnitudes", released);
  m.def("nearest_inertia", &nearest_inertia, "nearest_inertia", released);
}
"""

_module = None
_failed = False

# The first load (waiting for another process's build, then building or loading) gives up after this many seconds
# (default 10 minutes): the PyTorch code runs instead, with one warning. A build takes a minute or two.
_BUILD_TIMEOUT_VARIABLE = "KMEANS_TRANSFORMER_BUILD_TIMEOUT"
_DEFAULT_BUILD_TIMEOUT = 600.0
# Our lock in the build directory: an `fcntl.flock`, which the kernel releases when its holder dies, so it is never
# stale. Every build of ours holds it around torch's own build; torch's `lock` file (a `FileBaton`, left behind by a
# killed build, on which every later build would wait forever) is cleared under it when its owner is gone.
_LOCK_NAME = "kmeans_transformer.lock"
_TORCH_LOCK_NAME = "lock"
_POLL_SECONDS = 0.2
_load_lock = threading.Lock()  # one loader at a time in this process
_builder = None  # (thread, outcome, deadline, timeout) of the load under way, kept if the caller is interrupted
_logger = logging.getLogger(__name__)


class _BuildTimeout(Exception):
    pass


def _ninja() -> str | None:
    """The ninja the build runs: the one installed beside this interpreter (the `ninja` dependency) when there is one,
    else the first on PATH. `_load` puts its directory first on PATH, so the same environment always builds with the
    same ninja, however it was reached (an activated environment or a path to its console script)."""
    beside = shutil.which("ninja", path=sysconfig.get_path("scripts"))
    return beside or shutil.which("ninja")


# The loops' own flags: this machine's instructions; hot loops at the start of a 64-byte line (their timing otherwise
# moved by 10-20% with the code placed before them).
_CFLAGS = ("-O3", "-march=native", "-falign-loops=64", "-fopenmp")


def _toolchain() -> str:
    """What the build depends on besides the source: torch's build and location, Python's headers, the compiler and
    ninja actually found (resolved paths), and the header and library paths torch writes into the build file as this
    process sees them (an environment reached through a symbolic link names other paths there, so torch would rebuild
    over the other route's build at every switch), so that every environment keeps its own build and never rebuilds
    another's."""
    from torch.utils.cpp_extension import include_paths, library_paths

    compiler = os.environ.get("CXX") or shutil.which("c++") or "c++"
    ninja = _ninja()
    parts = [
        torch.__version__,
        str(torch.version.git_version),
        os.path.dirname(os.path.realpath(torch.__file__)),
        sysconfig.get_path("include"),
        os.path.realpath(shutil.which(compiler) or compiler),
        os.path.realpath(ninja) if ninja else "no ninja",
        *include_paths(),
        *library_paths(),
    ]
    return "\n".join(parts)


def _build_tag() -> str:
    """A hash of the source and its compiler flags, of this CPU's model and flags and of the toolchain (`_toolchain`): a
    build for one CPU or one environment is never loaded, nor rebuilt over, by another."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = "".join(line for line in info if line.startswith(("model name", "flags")))
    except OSError:
        pass
    return hashlib.sha1((_SOURCE + " ".join(_CFLAGS) + cpu + _toolchain()).encode()).hexdigest()[:12]


def _build_timeout() -> float:
    """Seconds from `KMEANS_TRANSFORMER_BUILD_TIMEOUT` (a positive, finite number), else 600 (with a warning if set)."""
    value = os.environ.get(_BUILD_TIMEOUT_VARIABLE)
    if value is None or not value.strip():
        return _DEFAULT_BUILD_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        warnings.warn(
            f"kmeans_transformer: {_BUILD_TIMEOUT_VARIABLE}={value!r} is not a positive number of seconds; "
            f"waiting at most {_DEFAULT_BUILD_TIMEOUT:g} s for the compiled CPU kernels.",
            RuntimeWarning,
            stacklevel=4,
        )
        return _DEFAULT_BUILD_TIMEOUT
    return seconds


def _build_directory(name: str) -> str:
    """The directory torch builds `name` in (under `TORCH_EXTENSIONS_DIR`), created if missing."""
    try:
        from torch.utils.cpp_extension import _get_build_directory
    except ImportError:  # a torch without the private helper: its documented layout, one folder per extension
        from torch.utils.cpp_extension import get_default_build_root

        directory = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), name)
        os.makedirs(directory, exist_ok=True)
        return directory
    return _get_build_directory(name, verbose=False)


def _held_open(path: str) -> bool | None:
    """Whether a live process has `path` open (torch's builder keeps its lock file open), None where /proc can't tell."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    target = os.path.realpath(path)
    try:
        processes = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    for process in processes:
        directory = f"/proc/{process}/fd"
        try:
            descriptors = os.listdir(directory)
        except OSError:  # gone, or another user's
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"{directory}/{descriptor}") == target:
                    return True
            except OSError:
                continue
    return False


def _lock_exclusively(handle, deadline: float) -> None:
    """Take our flock on the open `handle`, polling until the deadline (another process of ours may be building)."""
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _BuildTimeout(f"another process is building them (it holds {handle.name})") from None
            time.sleep(_POLL_SECONDS)


def _clear_stale_torch_lock(directory: str, deadline: float) -> None:
    """
    With our flock held: remove torch's `lock` file once its owner is gone. Every builder of ours holds our flock
    first, so the file can only be stale, or held by a process that does not take our lock (an older
    kmeans_transformer sharing the build directory): while /proc shows a live process with it open, wait.
    """
    path = os.path.join(directory, _TORCH_LOCK_NAME)
    while os.path.exists(path):
        if not _held_open(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            else:
                _logger.warning("kmeans_transformer: removed a stale build lock left by a killed build: %s", path)
            return
        if time.monotonic() >= deadline:
            raise _BuildTimeout(f"a running process that does not take our lock holds {path}")
        time.sleep(_POLL_SECONDS)


def _build(deadline: float, timeout: float):
    """The compiled module, built (or loaded) by torch under our lock in its build directory."""
    from torch.utils.cpp_extension import LIB_EXT, load_inline

    name = f"kmeans_transformer_cpu_kernels_{_build_tag()}"
    directory = _build_directory(name)
    with contextlib.ExitStack() as stack:
        if fcntl is not None:  # POSIX; elsewhere torch's own lock alone
            handle = stack.enter_context(open(os.path.join(directory, _LOCK_NAME), "a"))
            _lock_exclusively(handle, deadline)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
            _clear_stale_torch_lock(directory, deadline)
        building = not os.path.exists(os.path.join(directory, name + LIB_EXT))
        if building:
            _logger.warning(
                "kmeans_transformer: building the compiled CPU kernels for this machine and environment in %s "
                "(once, about a minute; `kmeans-transformer build-kernels` does it ahead of time)",
                directory,
            )
        started = time.monotonic()
        module = load_inline(
            name=name,
            cpp_sources=[_SOURCE],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=directory,
            verbose=False,
        )
        if building:
            _logger.warning("kmeans_transformer: built the compiled CPU kernels in %.0f s", time.monotonic() - started)
        return module


def build_kernels() -> str | None:
    """Build (or find) the compiled loops now, waiting as long as the build takes; the path of the built library, or
    None when they cannot be built here (the reason is warned) or are turned off with KMEANS_TRANSFORMER_CPU_KERNELS=0."""
    os.environ.setdefault(_BUILD_TIMEOUT_VARIABLE, "3600")
    module = _load()
    return None if module is None else module.__file__


def _run_build(outcome: dict, deadline: float, timeout: float) -> None:
    try:
        outcome["module"] = _build(deadline, timeout)
    except BaseException as error:  # handed to the waiting caller
        outcome["error"] = error


def _fall_back(reason: str) -> None:
    global _failed
    _failed = True
    warnings.warn(
        f"kmeans_transformer: the compiled CPU kernels {reason}; the fast path runs its PyTorch code instead "
        "(same results, slower).",
        RuntimeWarning,
        stacklevel=4,
    )


def _load():
    """
    The compiled module, built once per machine (cached by torch under `TORCH_EXTENSIONS_DIR`), or None.

    The build runs in a helper thread under our lock in the build directory (see `_LOCK_NAME`), and the caller waits
    at most `KMEANS_TRANSFORMER_BUILD_TIMEOUT` seconds (default 600) for it: past that, or if the build fails, the
    PyTorch code runs instead for the rest of the process, with one warning. A build still running then goes on in
    the background and is cached for the next process.
    """
    global _module, _failed, _builder
    if _module is not None or _failed:
        return _module
    with _load_lock:
        if _module is not None or _failed:
            return _module
        if os.environ.get("KMEANS_TRANSFORMER_CPU_KERNELS", "1") == "0":
            _failed = True
            return None
        ninja = _ninja()
        if ninja is not None and shutil.which("ninja") != ninja:  # see `_ninja`
            os.environ["PATH"] = os.pathsep.join([os.path.dirname(ninja), os.environ.get("PATH", "")])
        if _builder is None or not (_builder[0].is_alive() or _builder[1]):  # none yet, or a forked child's copy
            timeout = _build_timeout()
            outcome, deadline = {}, time.monotonic() + timeout
            thread = threading.Thread(
                target=_run_build,
                args=(outcome, deadline, timeout),
                name="kmeans_transformer-cpu-kernels-build",
                daemon=True,
            )
            thread.start()
            _builder = (thread, outcome, deadline, timeout)
        thread, outcome, deadline, timeout = _builder
        # The thread gives up waiting for a lock at the deadline itself (a second more lets it say why); a
        # KeyboardInterrupt here leaves the build to a later call.
        thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if thread.is_alive() or isinstance(outcome.get("error"), _BuildTimeout):
            why = outcome["error"] if "error" in outcome else "the build is still running, and goes on in the background"
            _fall_back(f"were not ready within {timeout:g} s: {why}; set {_BUILD_TIMEOUT_VARIABLE} to wait longer")
            return None
        _builder = None
        if "module" not in outcome:  # no compiler, no ninja, no BLAS symbols: the PyTorch code stands in
            error = outcome.get("error")
            message = str(error).strip()
            _fall_back(f"could not be built ({type(error).__name__}: {message.splitlines()[-1] if message else ''})")
            return None
        _module = outcome["module"]
    return _module


def _loaded():
    """
    `_load()`, read from the module's globals once decided, so that Dynamo traces the call (no lock, no thread). A
    model traced before the loops were loaded (by any eager call, or `build_kernels()`) traces the PyTorch code.
    """
    if _module is not None or _failed:
        return _module
    return None if torch.compiler.is_compiling() else _load()


# The compiled loops as torch custom operators (`torch.ops.kmeans_transformer.*`), each with a fake implementation
# that gives the output's shape and dtype, so that `torch.compile` and `torch.export` trace through them. Registered
# once per process: a checkpoint's copy of this file loaded with `trust_remote_code` finds them registered.
_OPS = "kmeans_transformer"


def _register_operators() -> None:
    if hasattr(getattr(torch.ops, _OPS), "segment_sums"):
        return

    @torch.library.custom_op(f"{_OPS}::nearest_keys", mutates_args=())
    def nearest_keys_op(query: torch.Tensor, key: torch.Tensor, block_rows: int) -> torch.Tensor:
        return _load().nearest_keys(query, key, block_rows)

    @nearest_keys_op.register_fake
    def _(query, key, block_rows):
        return query.new_empty(query.shape[:2], dtype=torch.int64)

    @torch.library.custom_op(f"{_OPS}::nearest_values", mutates_args=())
    def nearest_values_op(
        query: torch.Tensor, key: torch.Tensor, values: torch.Tensor, block_rows: int
    ) -> torch.Tensor:
        return _load().nearest_values(query, key, values, block_rows)

    @nearest_values_op.register_fake
    def _(query, key, values, block_rows):
        return values.new_empty(query.shape[0], query.shape[1], values.shape[2])

    @torch.library.custom_op(f"{_OPS}::segment_sums", mutates_args=())
    def segment_sums_op(
        values: torch.Tensor, codes: torch.Tensor, visible: torch.Tensor | None, num_codes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sums, counts = _load().segment_sums(values, codes, visible, num_codes)
        return sums, counts

    @segment_sums_op.register_fake
    def _(values, codes, visible, num_codes):
        sums = values.new_empty(values.shape[0], num_codes, values.shape[2], dtype=torch.float64)
        return sums, codes.new_empty(values.shape[0], num_codes)


_register_operators()


def _usable(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad for t in tensors)


def _for_scores(query: torch.Tensor, key: torch.Tensor):
    """The compiled module when it can score these queries and keys, else None."""
    if not _usable(query, key) or key.shape[1] == 0 or max(query.shape[1], key.shape[1], query.shape[2]) >= 2**31:
        return None
    return _loaded()


def _operators(module):
    """
    Where the loops are called from: the module itself in eager code (no dispatch through the operator's wrappers,
    which costs about as much as the loops on a small batch), the custom operators while `torch.compile` traces.
    """
    return torch.ops.kmeans_transformer if torch.compiler.is_compiling() else module


def nearest_keys(query: torch.Tensor, key: torch.Tensor, block_rows: int) -> torch.LongTensor | None:
    """`argmax_j query_i . key_j` (first maximiser) for `(groups, n, e)` queries and `(groups, k, e)` keys, or None."""
    module = _for_scores(query, key)
    if module is None:
        return None
    return _operators(module).nearest_keys(_contiguous_rows(query), key.contiguous(), max(1, block_rows))


def _contiguous_rows(query: torch.Tensor) -> torch.Tensor:
    """`query` with contiguous rows (`stride(2) == 1`); an empty one rebuilt, since its strides may be anything."""
    if query.numel() == 0:
        return query.new_zeros(query.shape)
    return query if query.stride(2) == 1 else query.contiguous()


def nearest_values(query: torch.Tensor, key: torch.Tensor, values: torch.Tensor, block_rows: int) -> torch.Tensor | None:
    """
    `values[g, argmax_j query_i . key_j]` (first maximiser) for `(groups, n, e)` queries, `(groups, k, e)` keys and
    `(groups, k, width)` values of any dtype: `(groups, n, width)`, or None.
    """
    module = _for_scores(query, key)
    if module is None or values.requires_grad or values.device.type != "cpu":
        return None
    return _operators(module).nearest_values(
        _contiguous_rows(query), key.contiguous(), values.contiguous(), max(1, block_rows)
    )


def segment_sums(
    values: torch.Tensor, codes: torch.LongTensor, visible: torch.BoolTensor | None, num_codes: int
) -> tuple[torch.Tensor, torch.LongTensor] | None:
    """
    Per-group, per-code sums `(groups, num_codes, width)` and counts `(groups, num_codes)` of `(groups, rows, width)`
    values, over the visible rows whose code is in `[0, num_codes)`; or None. The sums are accumulated and returned in
    float64 whatever the dtype of `values`.
    """
    if not _usable(values):
        return None
    module = _loaded()
    if module is None:
        return None
    return _operators(module).segment_sums(_contiguous_rows(values), codes.contiguous(), visible, num_codes)


# ---------------------------------------------------------------------------------------------------------------------
# Member-based updates (sparse, k-medoids): eager calls only (while `torch.compile` traces, the PyTorch code runs).
# ---------------------------------------------------------------------------------------------------------------------


def _member_module(points: torch.Tensor, *others: torch.Tensor | None):
    """The compiled module when it can run a member-based update on these tensors, else None."""
    tensors = [points, *(t for t in others if t is not None)]
    if not _usable(*tensors) or torch.compiler.is_compiling() or points.shape[1] >= 2**31:
        return None
    return _loaded()


def sparsemax_update(
    points: torch.Tensor, codes: torch.LongTensor, centroids: torch.Tensor, weights: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """
    Per group and cluster, `Σ_i p_i x_i` over the members (code `j`, weight > 0) with `p` the sparsemax of their
    scores `scaling · (2 c_j·x_i - |x_i|^2 - |c_j|^2)` (float64, `(groups, k, d)`), and the members' mass (their
    number or total weight, float64 `(groups, k)`); or None.
    """
    module = _member_module(points, centroids, weights)
    if module is None:
        return None
    weights = None if weights is None else weights.to(points.dtype).contiguous()
    return tuple(module.sparsemax_update(_contiguous_rows(points), codes.contiguous(), centroids.contiguous(), weights, float(scaling)))


def member_scores(
    points: torch.Tensor, codes: torch.LongTensor, centroids: torch.Tensor, scaling: float
) -> torch.Tensor | None:
    """
    Each point's score for its own cluster `j = codes[g, i]`, `scaling · ((Σ_e 2c_je x_ie - |x_i|^2) - |c_j|^2)` in
    the points' dtype `(groups, n)` (0 where the code is -1), the scores of `sparsemax_update` bit for bit; or None.
    """
    module = _member_module(points, centroids)
    if module is None or centroids.dtype != points.dtype:
        return None
    return module.member_scores(_contiguous_rows(points), codes.contiguous(), centroids.contiguous(), float(scaling))


def thresholded_sums(
    points: torch.Tensor, codes: torch.LongTensor, scores: torch.Tensor, thresholds: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """
    `sparsemax_update`'s sums from given thresholds `τ` `(groups, k)`: per cluster `Σ_i p_i x_i` over the members
    (code `j`, weight > 0), `p_i = max(s_i - τ_j, 0)` times `w_i` rounded to the points' dtype (`scores` `s` in that
    dtype), float64 `(groups, k, d)`, and the members' mass (float64 `(groups, k)`); or None.
    """
    module = _member_module(points, scores, thresholds, weights)
    if module is None or not points.dtype == scores.dtype == thresholds.dtype:
        return None
    weights = None if weights is None else weights.to(torch.float64).contiguous()
    found = module.thresholded_sums(
        _contiguous_rows(points), codes.contiguous(), scores.contiguous(), thresholds.contiguous(), weights
    )
    return tuple(found)


def sparsemax_members(
    codes: torch.LongTensor, scores: torch.Tensor, weights: torch.Tensor | None, num_codes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor] | None:
    """
    The members (code in `[0, num_codes)`, `weights` > 0 if given) of `(n,)` points grouped by code in point order:
    `u_i = 0 - s_i` in the dtype of the `scores`, widened, and `w_i` (1 without weights), float64 `(m,)`, and each
    code's first member `(num_codes + 1,)`; or None. `sparsemax_round` and `sparsemax_support_sums` take them.
    """
    module = _member_module(scores[None, :, None], None if weights is None else weights[None])
    if module is None:
        return None
    weights = None if weights is None else weights.to(torch.float64).contiguous()
    return tuple(module.sparsemax_members(codes.contiguous(), scores.contiguous(), weights, int(num_codes)))


def sparsemax_round(u, w, into_u, into_w, lower, upper, previous, keep, candidate, searching) -> torch.Tensor:
    """
    One round of the sparsemax thresholds' bisection on `sparsemax_members`: for each `searching` code `j`, its
    members inside the bracket, positions `[lower_j, upper_j)` of `(u, w)`, less those the previous round left out
    (`keep_j`: -1 keeps `u < previous_j`, +1 keeps `u > previous_j`, 0 all), written in point order to `(into_u,
    into_w)` from `lower_j` on (`upper_j` updated in place); returns their `Σ_{u < v} w (v - u)`, `Σ_{u <= v} w` and
    numbers below and above the `candidate` `v` (float64 `(4, k)`, zeros where not searching).
    """
    return _loaded().sparsemax_round(u, w, into_u, into_w, lower, upper, previous, keep, candidate, searching)


def sparsemax_support_sums(u, w, starts, bounds) -> torch.Tensor:
    """`Σ w_i (-u_i)` and `Σ w_i` over each code's members of `sparsemax_members` with `u_i < bounds_j`, `(2, k)`."""
    return _loaded().sparsemax_support_sums(u, w, starts, bounds)


def medoid_update(
    points: torch.Tensor, codes: torch.LongTensor, num_codes: int, weights: torch.Tensor | None
) -> tuple[torch.LongTensor, torch.Tensor] | None:
    """
    Per group and cluster, the index of the first member (code `j`, weight > 0) of least `Σ_{i'} w_i' |x_i - x_i'|`
    over the members (-1 for none), `(groups, k)`, and the members' mass (float64 `(groups, k)`); or None.
    """
    module = _member_module(points, weights)
    if module is None:
        return None
    weights = None if weights is None else weights.to(points.dtype).contiguous()
    return tuple(module.medoid_update(_contiguous_rows(points), codes.contiguous(), int(num_codes), weights))


def order_statistics(
    values: torch.Tensor, codes: torch.LongTensor, num_codes: int, ranks: torch.LongTensor
) -> torch.Tensor | None:
    """
    Per group and code `j`, the `ranks[g, j, t]`-th smallest (from 0, clamped to the members) of the `values`
    `(groups, n)` whose code is `j` (codes `(groups, n)`, -1: none), `(groups, k, t)` in the dtype of the values (0
    for a code without members); or None where the loops do not run.
    """
    module = _member_module(values[..., None])
    if module is None:
        return None
    return module.order_statistics(values, codes, int(num_codes), ranks)


def lloyd_step(
    tokens: torch.Tensor, key: torch.Tensor, point_mask: torch.BoolTensor | None
) -> tuple[torch.LongTensor, torch.Tensor] | None:
    """
    One Lloyd iteration of a batch in one compiled loop, in place on the contiguous compact tokens `(batch, n + k, d
    + 1)` (`[x_i ; 1]`, then `[c_j ; 1]`) with the assign block's keys `[2 c_j ; -|c_j|^2]` `(batch, k, d + 1)`:
    the labels of `nearest_keys` (-1 where `point_mask` is False), the float64 sums `[Σ_{a(i)=j} x_i ; |S_j|]` of
    `segment_sums`, and the centroid rows replaced by `Σ x_i / |S_j|` rounded once (kept where `|S_j| = 0`). Returns
    the labels and the sums, or None where the loops do not run (then nothing is changed). The threads share the
    problems, or, with fewer problems than threads, each problem's rows (each block of the sums' rows summed by one
    thread, the blocks then added in order): the same numbers whatever the number of threads.
    """
    if torch.compiler.is_compiling() or not tokens.is_contiguous() or _for_scores(tokens, key) is None:
        return None
    return tuple(_loaded().lloyd_step(tokens, key.contiguous(), point_mask))


MEMBERSHIP_RULES = {"softmax": 0, "fuzzy": 1}  # the compiled pass's rules (`membership_sums`)
MEMBERSHIP_LANE_ROWS = 16  # rows that `membership_sums` adds up in each float32 lane before float64 (kMemberVectors)


def membership_sums_run(values: torch.Tensor) -> bool:
    """Whether `membership_sums` runs on points like `values` (CPU, float32 or float64, eager, the loops built)."""
    return not torch.compiler.is_compiling() and _usable(values) and _loaded() is not None


def membership_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    dim: int,
    sample_weight: torch.Tensor | None,
    point_mask: torch.BoolTensor | None,
    rule: str,
    *,
    scaling: float = 1.0,
    exponent: float = 1.0,
    power: float = 1.0,
    square_norm: bool = False,
    float64_products: bool = False,
    sums: bool = True,
    labels: bool = False,
    kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.LongTensor | None] | None:
    """
    One pass of a weighted assignment over every point in one compiled loop, without the `(groups, n, k)` weights:
    each tile of rows gets its weights by `rule` from queries `(groups, n, e)` and keys `(groups, k, e)` (the
    `"softmax"` of `scaling · q_i.key_j`, or the `"fuzzy"` c-means memberships on `|q_i - key_j|^2` with ratio power
    `exponent = 1/(m-1)`), and adds them up: `Σ_i w_ij^power s_i v_i` (`w^power` of `max(w, 0)` when `power != 1`) in float64 `(groups,
    k, dim + 1 (+ 1))` for the rows `v_i = [x_i ; 1]` (`[x_i ; |x_i|^2 ; 1]` with `square_norm`), `x_i` the first
    `dim` coordinates of the query. Points where `point_mask` is False weigh 0. Returns the sums and, when `labels`,
    the first largest weight's index (-1 where it is not > 0); writes the weights into `kept` `(groups, n, k)` when
    given. Without `sums`, only the labels and weights (the sums are None). Eager calls only, else None.

    Float32 rows are summed in float32 over the `MEMBERSHIP_LANE_ROWS` = 16 rows of a tile's lane, and those partial
    sums in float64 in an order fixed by the shapes: each column's sum is within `(16 + r) · 2^-24 Σ_i |w_ij^power s_i
    v_ic|` (16 roundings of a lane's products and additions, and the `r <= 2` of a term before them: `s_i v_ic`, and
    `|x_i|^2` (summed in float64, rounded once) or `w^power`); about 2^-24 of it in practice. With
    `float64_products` every product and sum of float32 rows is taken in float64 instead (for sums whose difference
    would cancel those errors: gmm's second moments, see `CompactFrame.lane_sums`), at about half the speed of the
    sums; float64 rows always are.
    """
    if torch.compiler.is_compiling() or _for_scores(query, key) is None or query.dtype != key.dtype:
        return None
    if kept is not None and not kept.is_contiguous():
        return None
    if sample_weight is not None and (sample_weight.device.type != "cpu" or sample_weight.requires_grad):
        return None
    module = _loaded()
    if module is None:
        return None
    found = module.membership_sums(
        _contiguous_rows(query), key.contiguous(), int(dim), sample_weight, point_mask, MEMBERSHIP_RULES[rule],
        float(scaling), float(exponent), float(power), bool(square_norm), bool(float64_products), bool(sums), bool(labels), kept,
    )
    return (found[0] if sums else None), (found[1] if labels else None)


def compact_tokens(
    points: torch.Tensor, centroids: torch.Tensor, origin: torch.Tensor | None = None
) -> torch.Tensor | None:
    """
    The compact tokens `(batch, n + k, d + 1)`, `[x_i ; 1]` for the points `(batch, n, d)` then `[c_j ; 1]` for the
    centroids `(batch, k, d)`, or with an `origin` `o` `(batch, 1, d)` those of the translated vectors, `[x_i - o ;
    1]` and `[c_j - o ; 1]` (each difference rounded once in the points' dtype), written in one pass into memory
    advised for transparent huge pages when large; eager calls only, else None.
    """
    if torch.compiler.is_compiling() or not _usable(points, centroids) or points.dtype != centroids.dtype:
        return None
    if origin is not None and (not _usable(origin) or origin.dtype != points.dtype):
        return None
    module = _loaded()
    if module is None:
        return None
    origin = None if origin is None else origin.reshape(origin.shape[0], -1).contiguous()
    return module.compact_tokens(_contiguous_rows(points), centroids.contiguous(), origin)


def labelled_inertia(
    points: torch.Tensor, centroids: torch.Tensor, labels: torch.LongTensor, sample_weight: torch.Tensor | None
) -> torch.Tensor | None:
    """
    `Σ_i w_i |x_i - c_a(i)|^2` per problem in float64 `(batch,)` over the points `(batch, n, d)` whose label `a(i)`
    `(batch, n)` is in `[0, k)`: each squared distance in the points' dtype (its squares added in coordinate order),
    widened, weighted and summed in float64 in point order (within blocks of 2**15 points, added in order); eager
    calls only, else None.
    """
    if torch.compiler.is_compiling() or not _usable(points, centroids) or points.dtype != centroids.dtype:
        return None
    if labels.device.type != "cpu" or labels.dtype != torch.long or centroids.shape[1] == 0:
        return None
    if sample_weight is not None and (sample_weight.device.type != "cpu" or sample_weight.requires_grad):
        return None
    module = _loaded()
    if module is None:
        return None
    weights = None if sample_weight is None else sample_weight.to(torch.float64).contiguous()
    return module.labelled_inertia(_contiguous_rows(points), centroids.contiguous(), labels.contiguous(), weights)


def labelled_distances(points: torch.Tensor, centroids: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor | None:
    """
    Each point's `|x_i - c_a(i)|^2` `(batch, n)` in the points' dtype, for points `(batch, n, d)`, centroids `(batch,
    k, d)` and labels `a(i)` `(batch, n)` (`c_0` where `a(i)` is not in `[0, k)`): the squares of the differences
    added in coordinate order, as `labelled_inertia` takes them, in one pass; eager calls only, else None.
    """
    if torch.compiler.is_compiling() or not _usable(points, centroids) or points.dtype != centroids.dtype:
        return None
    if labels.device.type != "cpu" or labels.dtype != torch.long or centroids.shape[1] == 0:
        return None
    module = _loaded()
    if module is None:
        return None
    return module.labelled_distances(_contiguous_rows(points), centroids.contiguous(), labels.contiguous())


def largest_magnitudes(values: torch.Tensor) -> torch.Tensor | None:
    """
    The largest `|v|` of each group of values `(groups, n, d)`, `(groups,)` in their dtype, NaN where one is NaN, in
    one pass; eager calls only, else None.
    """
    if torch.compiler.is_compiling() or not _usable(values) or values.numel() == 0:
        return None
    module = _loaded()
    if module is None:
        return None
    return module.largest_magnitudes(_contiguous_rows(values))


def nearest_inertia(
    tokens: torch.Tensor, key: torch.Tensor, point_mask: torch.BoolTensor | None, sample_weight: torch.Tensor | None
) -> tuple[torch.LongTensor, torch.Tensor] | None:
    """
    The assignment head's labels on the contiguous compact tokens `(batch, n + k, d + 1)` with the assign block's keys
    `[2 c_j ; -|c_j|^2]` `(batch, k, d + 1)` (those of `nearest_keys`; -1 where `point_mask` is False) and the inertia
    of `labelled_inertia` against the centroid rows, float64 `(batch,)`, in one pass (the threads share the problems
    or, with fewer problems than threads, their rows, as `lloyd_step`: the same numbers); or None where the loops do
    not run.
    """
    if torch.compiler.is_compiling() or not tokens.is_contiguous() or _for_scores(tokens, key) is None:
        return None
    if sample_weight is not None and (sample_weight.device.type != "cpu" or sample_weight.requires_grad):
        return None
    weights = None if sample_weight is None else sample_weight.to(torch.float64).contiguous()
    return tuple(_loaded().nearest_inertia(tokens, key.contiguous(), point_mask, weights))
