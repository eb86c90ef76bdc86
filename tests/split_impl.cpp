// test_split: two_units_a.cpp and two_units_b.cpp again, built with RESTARTABLE_SERVER_SPLIT,
// so they see declarations only; this is the one translation unit that compiles the
// implementation. A definition left in the declarations, or one missing from here, fails
// to link.
#define RESTARTABLE_SERVER_IMPLEMENTATION
#include "restartable_server.hpp"
