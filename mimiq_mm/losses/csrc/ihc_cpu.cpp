// L_IHC of one attention call on CPU, value and gradient in one pass over the scores.
//
// For every sequence b and spatial query q, the H heads' rows x_h (the K spatial keys of
// scores[b, h, p + q, p:]) are min-max normalised, m_h = (x_h - lo_h) / r_h, and compared with
// global SSIM (whole-row statistics): SSIM(m_i, m_j) from mu_h = mean(m_h) = -lo'_h / r_h and
// C_ij = cov(m_i, m_j) = cov(x_i, x_j) / (r_i r_j), where lo'_h is the minimum of the centred row.
// D_q = mean over the H^2 ordered pairs (i, j) of f(SSIM_ij), f = |s| or s^2. The block's loss is
// 1 - D_q; its gradient w.r.t. the scores is written into `grad` (zeros elsewhere). Same arithmetic
// as the PyTorch path (mimiq_mm/losses/ihc.py, _layer_loss_global_stats), one block at a time in cache.
//
// Speed: everything runs on vectors of W floats (GCC/Clang vector extensions). A block's rows are
// copied into zero-padded vectors; the head-pair algebra runs on whole rows of the H x H matrices
// (heads j in the lanes, padded lanes masked), so no step is scalar per pair and no branch depends
// on the data.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 12
#error "the L_IHC kernel needs GCC >= 12 (__builtin_shufflevector on vector types) or clang: set CXX to one"
#endif

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

// One vector is 8 floats where the build has AVX (ihc_cpu.py adds -mavx2 -mfma on CPUs that have
// them) and 4 elsewhere (SSE, NEON): wider vectors than the target's are emulated, 10x slower.
#if defined(__AVX__)
constexpr int W = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
#define LOWER_HALF(v) __builtin_shufflevector(v, v, 0, 1, 2, 3)
#define UPPER_HALF(v) __builtin_shufflevector(v, v, 4, 5, 6, 7)
#else
constexpr int W = 4;
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
#endif

inline vf splat(float a) { return vf{} + a; }
inline vf vmax(vf a, vf b) { return b > a ? b : a; }

template <typename V>
inline auto hmin(V v) {  // smallest lane of a float or int32 vector
#if defined(__AVX__)
  auto s = LOWER_HALF(v), t = UPPER_HALF(v);
  s = t < s ? t : s;
#else
  auto s = v, t = v;
#endif
  t = __builtin_shufflevector(s, s, 2, 3, 0, 1);
  s = t < s ? t : s;
  t = __builtin_shufflevector(s, s, 1, 0, 3, 2);
  s = t < s ? t : s;
  return s[0];
}

inline float hsum(vf v) {
#if defined(__AVX__)
  auto s = LOWER_HALF(v) + UPPER_HALF(v);
#else
  auto s = v;
#endif
  s += __builtin_shufflevector(s, s, 2, 3, 0, 1);
  s += __builtin_shufflevector(s, s, 1, 0, 3, 2);
  return s[0];
}

// Lane s of the result is hsum(v[s]): W horizontal sums at once.
inline vf hsum_lanes(const vf* v) {
#if defined(__AVX__)
  auto hadd = [](vf a, vf b) {  // (a0+a1, a2+a3, b0+b1, b2+b3 | the same for the upper halves)
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const vf u0 = hadd(hadd(v[0], v[1]), hadd(v[2], v[3])), u1 = hadd(hadd(v[4], v[5]), hadd(v[6], v[7]));
  return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
#else
  auto hadd = [](vf a, vf b) {  // (a0+a1, a2+a3, b0+b1, b2+b3)
    return __builtin_shufflevector(a, b, 0, 2, 4, 6) + __builtin_shufflevector(a, b, 1, 3, 5, 7);
  };
  return hadd(hadd(v[0], v[1]), hadd(v[2], v[3]));
#endif
}

inline vi lane_index() {
  vi index{};
  for (int l = 0; l < W; ++l) index[l] = l;
  return index;
}

// Minimum and maximum of a padded row with the first index of each (the padding repeats element 0,
// so it never comes first). Every lane keeps its first extreme, then the lanes are merged.
struct Extremes {
  float lo, hi;
  int64_t arg_lo, arg_hi;
};
Extremes extremes(const vf* row, int64_t chunks, int64_t n) {
  vf mn = row[0], mx = row[0];
  vi index = lane_index(), i_mn = index, i_mx = index;
  for (int64_t c = 1; c < chunks; ++c) {
    index += W;
    const vf v = row[c];
    const vi lower = v < mn, higher = v > mx;
    mn = lower ? v : mn, i_mn = lower ? index : i_mn;
    mx = higher ? v : mx, i_mx = higher ? index : i_mx;
  }
  const float lo = hmin(mn), hi = -hmin(-mx);
  const vi none = vi{} + static_cast<int32_t>(n - 1);  // NaN rows: no lane equals the extreme
  return {lo, hi, hmin(mn == lo ? i_mn : none), hmin(mx == hi ? i_mx : none)};
}

}  // namespace

// scores: (B, H, N, N) float32, contiguous. Returns (per-block losses (B*Q,), grad or an undefined tensor).
std::vector<torch::Tensor> ihc_layer(torch::Tensor scores, int64_t prefix, double c1_, double c2_, double eps_,
                                     bool squared, bool with_grad) {
  TORCH_CHECK(scores.dim() == 4 && scores.size(2) == scores.size(3), "scores must be (B, H, N, N)");
  TORCH_CHECK(scores.scalar_type() == torch::kFloat && scores.device().is_cpu() && scores.is_contiguous(),
              "scores must be a contiguous float32 CPU tensor");
  const int64_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  const int64_t K = N - prefix, Q = K;
  TORCH_CHECK(prefix >= 0 && K > 0, "bad prefix");
  const int64_t KC = (K + W - 1) / W, HC = (H + W - 1) / W;  // vectors per padded row of keys / heads
  const float c1 = static_cast<float>(c1_), c2 = static_cast<float>(c2_), eps = static_cast<float>(eps_);
  auto losses = torch::empty({B * Q}, scores.options());
  torch::Tensor grad;
  if (with_grad) {  // only the prefix rows and columns stay zero: the rest is written below
    grad = torch::empty_like(scores);
    grad.narrow(2, 0, prefix).zero_();
    grad.narrow(2, prefix, K).narrow(3, 0, prefix).zero_();
  }
  const float* x = scores.data_ptr<float>();
  float* out = losses.data_ptr<float>();
  float* g = with_grad ? grad.data_ptr<float>() : nullptr;
  const float inv_k = 1.f / static_cast<float>(K), inv_hh = 1.f / static_cast<float>(H * H);

  at::parallel_for(0, B * Q, 8, [&](int64_t begin, int64_t end) {
    std::vector<vf> xc(H * KC);                       // centred rows, zero-padded
    std::vector<vf> C(H * HC), G(H * HC);             // C_ij and dL/dC_ij, row i, heads j in lanes
    std::vector<vf> mu(HC), inv_r(HC), diag(HC), valid(HC);
    std::vector<float> lo(H), g_mu(H), sym(H);
    std::vector<int64_t> arg_lo(H), arg_hi(H);
    float* mu_s = reinterpret_cast<float*>(mu.data());
    float* inv_r_s = reinterpret_cast<float*>(inv_r.data());
    float* diag_s = reinterpret_cast<float*>(diag.data());
    float* valid_s = reinterpret_cast<float*>(valid.data());
    for (int64_t j = 0; j < HC * W; ++j) valid_s[j] = j < H ? 1.f : 0.f;  // padded heads: 0 everywhere

    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / Q, q = idx % Q;
      // centred rows, their minima and maxima (first index at ties)
      for (int64_t h = 0; h < H; ++h) {
        vf* xr = xc.data() + h * KC;
        float* xs = reinterpret_cast<float*>(xr);
        std::memcpy(xs, x + ((b * H + h) * N + prefix + q) * N + prefix, K * sizeof(float));
        std::fill(xs + K, xs + KC * W, 0.f);
        vf acc{};
        for (int64_t c = 0; c < KC; ++c) acc += xr[c];
        const float mean = hsum(acc) / static_cast<float>(K);
        for (int64_t c = 0; c < KC; ++c) xr[c] -= mean;
        std::fill(xs + K, xs + KC * W, xs[0]);  // padding: a copy of element 0 for the extremes
        const Extremes e = extremes(xr, KC, K);
        std::fill(xs + K, xs + KC * W, 0.f);    // then zero again for the covariances
        lo[h] = e.lo, arg_lo[h] = e.arg_lo, arg_hi[h] = e.arg_hi;
        inv_r_s[h] = 1.f / (e.hi - e.lo + eps);
        mu_s[h] = -e.lo * inv_r_s[h];
      }
      // C = normalised covariances, W heads of a row at a time (W independent sums)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t jc = 0; jc < HC; ++jc) {
          const vf* a = xc.data() + i * KC;
          const vf* rows[W];
          for (int s = 0; s < W; ++s) rows[s] = xc.data() + std::min<int64_t>(jc * W + s, H - 1) * KC;
          vf sums[W] = {};
          for (int64_t c = 0; c < KC; ++c) {
            const vf ac = a[c];
#pragma GCC unroll 8  // W
            for (int s = 0; s < W; ++s) sums[s] += ac * rows[s][c];
          }
          C[i * HC + jc] = hsum_lanes(sums) * (inv_k * inv_r_s[i]) * inv_r[jc];  // padded heads: inv_r = 0
        }
      for (int64_t h = 0; h < H; ++h) diag_s[h] = reinterpret_cast<const float*>(C.data() + h * HC)[h];

      // SSIM of every ordered pair and its backward to mu and C (lanes of padded heads are masked)
      vf coherency{};
      for (int64_t i = 0; i < H; ++i) {
        const float mu_i = mu_s[i], c_ii = diag_s[i];
        vf g_mu_row{}, g_diag_row{};
        for (int64_t jc = 0; jc < HC; ++jc) {
          const vf mj = mu[jc], cij = C[i * HC + jc];
          const vf a = 2 * mu_i * mj + c1, bc = 2 * cij + c2, m = mu_i * mu_i + mj * mj + c1;
          const vf v = c_ii + diag[jc] + c2;
          const vf s = a * bc / (m * v);
          coherency += valid[jc] * (squared ? s * s : vmax(s, -s));
          if (!with_grad) continue;
          const vf sign = s > 0 ? splat(1.f) : s < 0 ? splat(-1.f) : splat(0.f);
          const vf gs = -valid[jc] * (squared ? 2 * s : sign) * inv_hh;  // d(1 - D_q) / d s_ij
          const vf inv_mv = 1.f / (m * v);
          const vf d_a = gs * bc * inv_mv, d_m = -gs * s / m;
          g_mu_row += 2 * mj * d_a + 2 * mu_i * d_m;
          g_diag_row += -gs * s / v;
          G[i * HC + jc] = 4 * gs * a * inv_mv;  // d s / d C_ij = 2 a / (m v); C_ij = C_ji: both orders
        }
        if (!with_grad) continue;
        g_mu[i] = 2 * hsum(g_mu_row);  // s_ij = s_ji: mu_i as first and as second argument
        float& g_ii = reinterpret_cast<float*>(G.data() + i * HC)[i];
        g_ii = 0.5f * g_ii + 2 * hsum(g_diag_row);  // (i, i) is one ordered pair; C_ii also enters v
      }
      out[idx] = 1.f - hsum(coherency) * inv_hh;
      if (!with_grad) continue;

      // down to the scores: C_ij = cov_ij / (r_i r_j), mu = -lo / r, r = hi - lo + eps,
      // d cov_ij / d xc_i = xc_j / K (twice that on the diagonal)
      for (int64_t h = 0; h < H; ++h) {
        vf t{};
        for (int64_t jc = 0; jc < HC; ++jc) t += G[h * HC + jc] * C[h * HC + jc];
        const float g_hh = reinterpret_cast<const float*>(G.data() + h * HC)[h];
        const float g_r = -inv_r_s[h] * (hsum(t) + g_hh * diag_s[h]) + g_mu[h] * lo[h] * inv_r_s[h] * inv_r_s[h];
        const float g_lo = -g_mu[h] * inv_r_s[h] - g_r, g_hi = g_r;
        const vf shift = splat(-(g_lo + g_hi) * inv_k);
        const float* g_row = reinterpret_cast<const float*>(G.data() + h * HC);
        for (int64_t j = 0; j < H; ++j) sym[j] = g_row[j] * inv_r_s[h] * inv_r_s[j] * inv_k;
        sym[h] *= 2;
        float* dst = g + ((b * H + h) * N + prefix + q) * N + prefix;
        for (int64_t c0 = 0; c0 < KC; c0 += 4) {  // four independent chunks per pass over the heads
          vf acc[4] = {shift, shift, shift, shift};
          const int n_c = static_cast<int>(std::min<int64_t>(4, KC - c0));
          for (int64_t j = 0; j < H; ++j) {
            const vf w = splat(sym[j]);
            const vf* xj = xc.data() + j * KC + c0;
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u)
              if (u < n_c) acc[u] += w * xj[u];
          }
          for (int u = 0; u < n_c; ++u) {
            const int64_t k0 = (c0 + u) * W;
            if (k0 + W <= K)
              __builtin_memcpy(dst + k0, &acc[u], sizeof(vf));  // one unaligned store
            else
              std::memcpy(dst + k0, &acc[u], (K - k0) * sizeof(float));
          }
        }
        dst[arg_lo[h]] += g_lo;
        dst[arg_hi[h]] += g_hi;
      }
    }
  });
  return {losses, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ihc_layer", &ihc_layer, "L_IHC of one attention call: per-block losses and the gradient (CPU)");
  m.def("lanes", [] { return W; }, "floats per vector in this build (8: AVX, 4: SSE / NEON)");
}
