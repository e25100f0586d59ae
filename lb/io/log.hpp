#pragma once
// Operational log lines on stderr ("lb: ..."). Not for the hot path: one line per
// event (start, listener bound, backend failure), never per successful request.

#include <cstdarg>

namespace lb::io {

void log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

} // namespace lb::io
