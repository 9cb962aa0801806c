// CPU time of the calling thread, for the placement benchmarks.
#pragma once

#include <ctime>

namespace occult::bench {

// This thread's CPU time in seconds: the shared 2-core VM runs other jobs, and CPU time (unlike
// wall time) does not count the slices the scheduler gives them.
inline double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace occult::bench
