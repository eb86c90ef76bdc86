// The Catch2 2.x main, compiled once for every test executable (Catch2 3 brings its own).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
