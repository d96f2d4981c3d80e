// Unit tests of csrc/losses/losses_math.h: the online (max-shifted) softmax
// and the per-class terms and gradients of the consistency losses.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "../../csrc/losses/losses_math.h"
#include "harness.h"

namespace L = invfast::losses;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

L::SoftmaxStats<double> stats(const std::vector<double>& x, double inv_t) {
  auto s = L::softmax_stats_init<double>();
  for (double v : x) {
    L::softmax_stats_add(s, v, inv_t);
  }
  return s;
}

// log-softmax of x / T computed the textbook way, in long double.
std::vector<double> log_softmax(const std::vector<double>& x, double inv_t) {
  long double m = -kInf, sum = 0;
  for (double v : x) {
    m = v > m ? v : m;
  }
  for (double v : x) {
    sum += std::exp((v - m) * inv_t);
  }
  std::vector<double> out;
  for (double v : x) {
    out.push_back(static_cast<double>((v - m) * inv_t - std::log(sum)));
  }
  return out;
}

// KL(softmax(p) || softmax(q)) through the header's functions.
double kl(const std::vector<double>& p, const std::vector<double>& q) {
  const auto sp = stats(p, 1.0), sq = stats(q, 1.0);
  const auto rp = L::row_softmax(sp.max, sp.sum, 1.0), rq = L::row_softmax(sq.max, sq.sum, 1.0);
  double total = 0;
  for (size_t c = 0; c < p.size(); ++c) {
    const double lp = L::log_prob(rp, p[c]), lq = L::log_prob(rq, q[c]);
    total += L::kl_term(std::exp(lp), lp, lq);
  }
  return total;
}

std::vector<double> random_row(std::mt19937& rng, int n, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> x(n);
  for (double& v : x) {
    v = normal(rng);
  }
  return x;
}

}  // namespace

TEST_CASE(online_softmax_matches_two_passes) {
  std::mt19937 rng(7);
  for (double inv_t : {1.0, 2.5, 0.25}) {
    const auto x = random_row(rng, 37, 4.0);
    const auto s = stats(x, inv_t);
    double m = -kInf, sum = 0;
    for (double v : x) {
      m = v > m ? v : m;
    }
    for (double v : x) {
      sum += std::exp((v - m) * inv_t);
    }
    CHECK_EQ(s.max, m);
    CHECK_NEAR(s.sum, sum, 0, 1e-13);
    const auto row = L::row_softmax(s.max, s.sum, inv_t);
    const auto expected = log_softmax(x, inv_t);
    double total = 0;
    for (size_t c = 0; c < x.size(); ++c) {
      CHECK_NEAR(L::log_prob(row, x[c]), expected[c], 1e-12, 1e-12);
      total += std::exp(L::shifted(row, x[c])) * row.inv_sum;
    }
    CHECK_NEAR(total, 1.0, 1e-13, 0);
  }
}

TEST_CASE(merging_partial_statistics_equals_one_pass) {
  std::mt19937 rng(8);
  const auto x = random_row(rng, 50, 10.0);
  for (size_t cut : {size_t(0), size_t(1), size_t(17), size_t(50)}) {
    auto a = L::softmax_stats_init<double>(), b = L::softmax_stats_init<double>();
    for (size_t i = 0; i < x.size(); ++i) {
      L::softmax_stats_add(i < cut ? a : b, x[i], 0.7);
    }
    const auto merged = L::softmax_stats_merge(a, b, 0.7);
    const auto whole = stats(x, 0.7);
    CHECK_EQ(merged.max, whole.max);
    CHECK_NEAR(merged.sum, whole.sum, 0, 1e-13);
  }
}

TEST_CASE(large_logits_stay_finite) {
  const auto s = stats({1e30, -1e30, 3e4, 1e30}, 1.0);
  CHECK_EQ(s.max, 1e30);
  CHECK_EQ(s.sum, 2.0);
  const auto f = L::softmax_stats_init<float>();
  auto g = f;
  for (float v : {88.0f, 89.0f, 1000.0f, -1000.0f}) {
    L::softmax_stats_add(g, v, 1.0f);
  }
  CHECK(std::isfinite(g.sum));
  CHECK_NEAR(g.sum, 1.0, 1e-6, 0);
}

TEST_CASE(minus_infinity_adds_nothing_and_nan_propagates) {
  const auto s = stats({-kInf, 0.0, -kInf}, 1.0);
  CHECK_EQ(s.max, 0.0);
  CHECK_EQ(s.sum, 1.0);
  const auto empty = stats({-kInf, -kInf}, 1.0);
  CHECK_EQ(empty.max, -kInf);
  CHECK_EQ(empty.sum, 0.0);
  const auto nan = stats({0.0, std::nan(""), 1.0}, 1.0);
  CHECK(std::isnan(nan.sum) || std::isnan(nan.max));
  const auto merged = L::softmax_stats_merge(empty, L::softmax_stats_init<double>(), 1.0);
  CHECK_EQ(merged.sum, 0.0);
  // A part that saw only NaN (and -inf) keeps max = -inf; merged with an empty
  // part, on either side, its NaN survives.
  const auto only_nan = stats({std::nan(""), -kInf}, 1.0);
  CHECK_EQ(only_nan.max, -kInf);
  CHECK(std::isnan(L::softmax_stats_merge(only_nan, empty, 1.0).sum));
  CHECK(std::isnan(L::softmax_stats_merge(empty, only_nan, 1.0).sum));
}

TEST_CASE(zero_probability_times_infinite_log_is_zero) {
  CHECK_EQ(L::nonzero_mul(0.0, -kInf), 0.0);
  CHECK_EQ(L::kl_term(0.0, -kInf, -3.0), 0.0);
  CHECK_EQ(L::kl_term(0.5, std::log(0.5), std::log(0.5)), 0.0);
}

TEST_CASE(kl_is_zero_for_equal_rows_and_positive_otherwise) {
  std::mt19937 rng(9);
  const auto p = random_row(rng, 11, 3.0), q = random_row(rng, 11, 3.0);
  CHECK_EQ(kl(p, p), 0.0);
  CHECK(kl(p, q) > 0.0);
}

TEST_CASE(kl_gradients_match_finite_differences) {
  std::mt19937 rng(10);
  const auto p = random_row(rng, 9, 2.0), q = random_row(rng, 9, 2.0);
  const auto lp = log_softmax(p, 1.0), lq = log_softmax(q, 1.0);
  const double value = kl(p, q);
  const double h = 1e-6;
  for (size_t c = 0; c < p.size(); ++c) {
    auto qh = q, ph = p;
    qh[c] += h;
    ph[c] += h;
    const double dq = (kl(p, qh) - value) / h, dp = (kl(ph, q) - value) / h;
    CHECK_NEAR(L::kl_grad_q(std::exp(lq[c]), std::exp(lp[c])), dq, 1e-5, 1e-4);
    CHECK_NEAR(L::kl_grad_p(std::exp(lp[c]), lp[c], lq[c], value), dp, 1e-5, 1e-4);
  }
}

TEST_CASE(mixture_of_agreeing_views_is_exact) {
  const double lp0 = std::log(0.3);
  CHECK_EQ(L::log_mixture(0.3, lp0, 0.0), lp0);
  CHECK_NEAR(L::log_mixture(0.3, lp0, 0.1), std::log(0.4), 1e-15, 0);
}

TEST_CASE(confidence_threshold) {
  const auto s = stats({2.0, 0.0, 0.0}, 1.0);
  const double top = L::top_probability(s.sum);
  CHECK_NEAR(top, std::exp(2.0) / (std::exp(2.0) + 2.0), 1e-15, 1e-15);
  CHECK(L::confident(top, 0.7));
  CHECK(!L::confident(top, 0.8));
  CHECK(!L::confident(std::nan(""), 0.0));
}
