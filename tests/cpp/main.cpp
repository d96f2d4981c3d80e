// Runs every TEST_CASE linked into the executable.
#include "harness.h"

int main() { return invfast_test::run_all(); }
