// First of two translation units that both include the header: a definition that is not
// `inline` would be defined twice and fail to link.
#include "restartable_server.hpp"

#include <string>

std::string reason_from_a(int status) { return std::string(restartable_server::status_text(status)); }
