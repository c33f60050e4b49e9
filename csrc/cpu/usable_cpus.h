// How many CPUs this process may run on at once: the affinity mask, capped by a cgroup CPU
// quota (containers). The split time loop (split_steps.h) spins on a barrier that every
// worker reaches each step, so it must never have more workers than that: a worker the OS
// has taken off its core holds the others spinning until it is scheduled again.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace fused_rnn::cpu {

namespace detail {

// CPUs in this thread's affinity mask (the whole machine where there is no such thing).
inline int64_t affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// ceil(quota / period) of a cgroup CPU limit, or 0 where there is none (or it cannot be read).
inline int64_t cgroup_quota_cpus() {
  int64_t quota = 0, period = 0;
  std::ifstream v2("/sys/fs/cgroup/cpu.max");  // cgroup v2: "<quota|max> <period>"
  std::string q;
  if (v2 >> q >> period) {
    if (q == "max" || period <= 0) return 0;
    quota = std::strtoll(q.c_str(), nullptr, 10);
  } else {
    std::ifstream v1_quota("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");  // cgroup v1: -1 is none
    std::ifstream v1_period("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(v1_quota >> quota) || !(v1_period >> period) || quota <= 0 || period <= 0) return 0;
  }
  return quota <= 0 ? 0 : std::max<int64_t>(1, (quota + period - 1) / period);
}

}  // namespace detail

// The quota is read once (two file reads); the mask every call (one system call, well under a
// microsecond), so that a process moved to fewer CPUs after import splits over fewer workers.
inline int64_t usable_cpus() {
  static const int64_t quota = detail::cgroup_quota_cpus();
  const int64_t affinity = detail::affinity_cpus();
  return quota > 0 ? std::min(affinity, quota) : affinity;
}

}  // namespace fused_rnn::cpu
