// L_IHC of one attention call on CPU, value and gradient in one pass over the scores.
//
// For every sequence b and spatial query q, the H heads' rows x_h (the K spatial keys of
// scores[b, h, p + q, p:]) are min-max normalised, m_h = (x_h - lo_h) / r_h, and compared with
// global SSIM (whole-row statistics): SSIM(m_i, m_j) from mu_h = mean(m_h) = -lo'_h / r_h and
// cov(m_i, m_j) = cov(x_i, x_j) / (r_i r_j), where lo'_h is the minimum of the centred row.
// D_q = mean over (i, j) of f(SSIM_ij), f = |s| or s^2. The block's loss is 1 - D_q; its gradient
// w.r.t. the scores is written into `grad` (zeros elsewhere). Same arithmetic as the PyTorch path
// (mimiq_mm/losses/ihc.py, _layer_loss_global_stats): one block at a time, in cache.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace

// scores: (B, H, N, N) float32, contiguous. Returns (per-block losses (B*Q,), grad or an undefined
// tensor). SSIM is symmetric, so each unordered head pair is evaluated once (weight 2 off the diagonal).
std::vector<torch::Tensor> ihc_layer(torch::Tensor scores, int64_t prefix, double c1_, double c2_, double eps_,
                                     bool squared, bool with_grad) {
  TORCH_CHECK(scores.dim() == 4 && scores.size(2) == scores.size(3), "scores must be (B, H, N, N)");
  TORCH_CHECK(scores.scalar_type() == torch::kFloat && scores.device().is_cpu() && scores.is_contiguous(),
              "scores must be a contiguous float32 CPU tensor");
  const int64_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  const int64_t K = N - prefix, Q = K;
  TORCH_CHECK(prefix >= 0 && K > 0, "bad prefix");
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
    std::vector<float> xc(H * K), gx(K), lo(H), r(H), inv_r(H), mu(H), c(H * H), ssim(H * H), g_mu(H), g_r(H),
        g_c(H * H), sym(H * H);
    std::vector<int64_t> arg_lo(H), arg_hi(H);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / Q, q = idx % Q;
      // centred rows, their minima and maxima (first index at ties)
      for (int64_t h = 0; h < H; ++h) {
        const float* row = x + ((b * H + h) * N + prefix + q) * N + prefix;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < K; ++k) sum += row[k];
        const float mean = sum / static_cast<float>(K);
        float* xr = xc.data() + h * K;
        float mn = INFINITY, mx = -INFINITY;
#pragma omp simd reduction(min : mn) reduction(max : mx)
        for (int64_t k = 0; k < K; ++k) {
          xr[k] = row[k] - mean;
          mn = std::min(mn, xr[k]);
          mx = std::max(mx, xr[k]);
        }
        int32_t amin = static_cast<int32_t>(K), amax = static_cast<int32_t>(K);  // first index of each
#pragma omp simd reduction(min : amin, amax)
        for (int32_t k = 0; k < static_cast<int32_t>(K); ++k) {
          amin = std::min(amin, xr[k] == mn ? k : static_cast<int32_t>(K));
          amax = std::min(amax, xr[k] == mx ? k : static_cast<int32_t>(K));
        }
        arg_lo[h] = std::min<int64_t>(amin, K - 1), arg_hi[h] = std::min<int64_t>(amax, K - 1);  // NaN rows
        lo[h] = mn;
        r[h] = mx - mn + eps;
        inv_r[h] = 1.f / r[h];
        mu[h] = -mn * inv_r[h];
      }
      // normalised covariances, SSIM of every head pair
      float coherency = 0.f;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = i; j < H; ++j)
          c[i * H + j] = c[j * H + i] = dot(xc.data() + i * K, xc.data() + j * K, K) * inv_k * inv_r[i] * inv_r[j];
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = i; j < H; ++j) {
          const float a = 2 * mu[i] * mu[j] + c1, bc = 2 * c[i * H + j] + c2;
          const float m = mu[i] * mu[i] + mu[j] * mu[j] + c1, v = c[i * H + i] + c[j * H + j] + c2;
          const float s = a * bc / (m * v);
          ssim[i * H + j] = s;
          coherency += (i == j ? 1.f : 2.f) * (squared ? s * s : std::fabs(s));
        }
      out[idx] = 1.f - coherency * inv_hh;
      if (!with_grad) continue;

      // backward of 1 - D_q, from the SSIM matrix down to the scores
      std::fill(g_mu.begin(), g_mu.end(), 0.f);
      std::fill(g_r.begin(), g_r.end(), 0.f);
      std::fill(g_c.begin(), g_c.end(), 0.f);
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = i; j < H; ++j) {
          const float s = ssim[i * H + j];
          const float f_prime = squared ? 2 * s : (s > 0 ? 1.f : s < 0 ? -1.f : 0.f);
          const float gs = -(i == j ? 1.f : 2.f) * f_prime * inv_hh;  // both (i, j) and (j, i)
          const float a = 2 * mu[i] * mu[j] + c1, bc = 2 * c[i * H + j] + c2;
          const float m = mu[i] * mu[i] + mu[j] * mu[j] + c1, v = c[i * H + i] + c[j * H + j] + c2;
          const float inv_mv = 1.f / (m * v);
          const float d_a = gs * bc * inv_mv, d_b = gs * a * inv_mv, d_m = -gs * s / m, d_v = -gs * s / v;
          g_mu[i] += 2 * mu[j] * d_a + 2 * mu[i] * d_m;
          g_mu[j] += 2 * mu[i] * d_a + 2 * mu[j] * d_m;
          g_c[i * H + j] += 2 * d_b;
          g_c[i * H + i] += d_v;
          g_c[j * H + j] += d_v;
        }
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = i; j < H; ++j) {  // c_ij = cov_ij / (r_i r_j)
          const float gc = g_c[i * H + j], t = gc * c[i * H + j];
          sym[i * H + j] = sym[j * H + i] = gc * inv_r[i] * inv_r[j] * inv_k * (i == j ? 2.f : 1.f);
          g_r[i] -= t * inv_r[i];
          g_r[j] -= t * inv_r[j];
        }
      for (int64_t h = 0; h < H; ++h) {  // mu = -lo / r, r = hi - lo + eps; d cov / d xc = (G + G^T) / K
        g_r[h] += g_mu[h] * lo[h] * inv_r[h] * inv_r[h];
        const float g_lo = -g_mu[h] * inv_r[h] - g_r[h], g_hi = g_r[h];
        const float shift = -(g_lo + g_hi) * inv_k;
        std::fill(gx.begin(), gx.end(), shift);
        for (int64_t j = 0; j < H; ++j) {
          const float w = sym[h * H + j];
          const float* xj = xc.data() + j * K;
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) gx[k] += w * xj[k];
        }
        gx[arg_lo[h]] += g_lo;
        gx[arg_hi[h]] += g_hi;
        std::copy(gx.begin(), gx.end(), g + ((b * H + h) * N + prefix + q) * N + prefix);
      }
    }
  });
  return {losses, grad};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ihc_layer", &ihc_layer, "L_IHC of one attention call: per-block losses and the gradient (CPU)");
}
