// A minimal unit-test harness for the HOST_DEVICE math headers: no downloads,
// no libtorch. Tests register themselves; main() runs them all and returns
// non-zero when any check failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace invfast_test {

struct Case {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Register {
  Register(const char* name, std::function<void()> body) {
    registry().push_back({name, std::move(body)});
  }
};

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what.c_str());
}

// Relative and absolute tolerance, as torch.isclose; NaN equals NaN.
inline bool near(double a, double b, double atol, double rtol) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b);
  }
  if (a == b) {
    return true;  // also equal infinities
  }
  return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

inline int run_all() {
  int failed_cases = 0;
  for (const Case& c : registry()) {
    const int before = failures();
    c.body();
    const bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("%s %s\n", ok ? "[ ok ]" : "[FAIL]", c.name);
  }
  std::printf("%zu cases, %d failed\n", registry().size(), failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace invfast_test

#define INVFAST_CONCAT_(a, b) a##b
#define INVFAST_CONCAT(a, b) INVFAST_CONCAT_(a, b)

#define TEST_CASE(name)                                                \
  static void INVFAST_CONCAT(test_, name)();                           \
  static const invfast_test::Register INVFAST_CONCAT(register_, name)( \
      #name, INVFAST_CONCAT(test_, name));                             \
  static void INVFAST_CONCAT(test_, name)()

#define CHECK(cond)                                  \
  do {                                               \
    if (!(cond)) {                                   \
      invfast_test::fail(__FILE__, __LINE__, #cond); \
    }                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    const auto va_ = (a);                                                                     \
    const auto vb_ = (b);                                                                     \
    if (!(va_ == vb_)) {                                                                      \
      invfast_test::fail(__FILE__, __LINE__,                                                  \
                         std::string(#a " == " #b ", got ") + std::to_string(va_) + " and " + \
                             std::to_string(vb_));                                            \
    }                                                                                         \
  } while (0)

#define CHECK_NEAR(a, b, atol, rtol)                                                          \
  do {                                                                                        \
    const double va_ = static_cast<double>(a);                                                \
    const double vb_ = static_cast<double>(b);                                                \
    if (!invfast_test::near(va_, vb_, (atol), (rtol))) {                                      \
      invfast_test::fail(__FILE__, __LINE__,                                                  \
                         std::string(#a " ~= " #b ", got ") + std::to_string(va_) + " and " + \
                             std::to_string(vb_));                                            \
    }                                                                                         \
  } while (0)
