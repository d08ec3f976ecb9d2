// Runtime of the host execution shim (see host_shim.h): a fiber scheduler per worker thread.
#include "host_shim.h"

#include <ucontext.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace clca_shim {

thread_local ThreadCtx* g_ctx = nullptr;

namespace {

enum class State { Run, WaitBlock, WaitWarp, Done };

constexpr size_t kStackBytes = 128 * 1024;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxDynSmem = 48 * 1024;  // the default per-block limit without opt-in

struct Fiber {
  ucontext_t uc;
  State state;
  ThreadCtx c;
};

struct BlockRunner {
  void* fn = nullptr;
  Trampoline tr = nullptr;
  void** args = nullptr;
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<uint64_t> warp_slots;  // [warp][lane]
  std::vector<unsigned char> dyn_smem;
  ucontext_t sched;
  unsigned cur = 0;
  std::string error;
};

thread_local BlockRunner* g_runner = nullptr;

std::mutex g_err_mu;
thread_local std::string g_last_error;

void fiber_main() {
  BlockRunner* r = g_runner;
  unsigned me = r->cur;
  r->tr(r->fn, r->args);
  r->fibers[me].state = State::Done;
  // Returning follows uc_link back to the scheduler.
}

void yield_as(State s) {
  BlockRunner* r = g_runner;
  Fiber& f = r->fibers[r->cur];
  f.state = s;
  swapcontext(&f.uc, &r->sched);
}

const char* state_name(State s) {
  switch (s) {
    case State::Run:
      return "running";
    case State::WaitBlock:
      return "__syncthreads";
    case State::WaitWarp:
      return "a warp collective";
    case State::Done:
      return "returned";
  }
  return "?";
}

// Runs one block to completion; returns false (with r.error set) on a synchronization error.
bool run_block(BlockRunner& r, uint3 bid, dim3 bdim, dim3 gdim) {
  unsigned n = r.nthreads;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = r.fibers[t];
    f.state = State::Run;
    f.c.tid = uint3{t % bdim.x, (t / bdim.x) % bdim.y, t / (bdim.x * bdim.y)};
    f.c.bid = bid;
    f.c.bdim = bdim;
    f.c.gdim = gdim;
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = r.stacks.data() + static_cast<size_t>(t) * kStackBytes;
    f.uc.uc_stack.ss_size = kStackBytes;
    f.uc.uc_link = &r.sched;
    makecontext(&f.uc, fiber_main, 0);
  }
  std::memset(r.dyn_smem.data(), 0xFF, r.dyn_smem.size());
  unsigned nwarps = (n + 31) / 32;
  while (true) {
    for (unsigned t = 0; t < n; ++t) {
      if (r.fibers[t].state != State::Run) continue;
      r.cur = t;
      g_ctx = &r.fibers[t].c;
      swapcontext(&r.sched, &r.fibers[t].uc);
    }
    // Nobody can run: everyone returned or waits at a barrier.
    unsigned done = 0, wait_block = 0, wait_warp = 0;
    for (unsigned t = 0; t < n; ++t) {
      State s = r.fibers[t].state;
      done += s == State::Done;
      wait_block += s == State::WaitBlock;
      wait_warp += s == State::WaitWarp;
    }
    if (done == n) return true;
    bool released = false;
    for (unsigned w = 0; w < nwarps; ++w) {
      unsigned lo = w * 32, hi = std::min(lo + 32, n);
      unsigned waiting = 0, lane_done = 0;
      for (unsigned t = lo; t < hi; ++t) {
        waiting += r.fibers[t].state == State::WaitWarp;
        lane_done += r.fibers[t].state == State::Done;
      }
      if (waiting == 0) continue;
      if (waiting == hi - lo) {
        for (unsigned t = lo; t < hi; ++t) r.fibers[t].state = State::Run;
        released = true;
      } else if (lane_done > 0) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "warp collective reached by %u of %u lanes of warp %u (the others "
                      "returned)",
                      waiting, hi - lo, w);
        r.error = buf;
        return false;
      }
    }
    if (released) continue;
    if (wait_block + done == n && wait_block > 0) {
      if (done > 0) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "__syncthreads reached by only %u of %u threads of block (%u,%u,%u); "
                      "%u threads had returned",
                      wait_block, n, r.fibers[0].c.bid.x, r.fibers[0].c.bid.y,
                      r.fibers[0].c.bid.z, done);
        r.error = buf;
        return false;
      }
      for (unsigned t = 0; t < n; ++t) r.fibers[t].state = State::Run;
      continue;
    }
    char buf[320];
    unsigned t0 = 0;
    while (t0 < n && r.fibers[t0].state == State::Done) ++t0;
    std::snprintf(buf, sizeof buf,
                  "deadlock in block (%u,%u,%u): %u threads at __syncthreads, %u at a warp "
                  "collective, %u returned (thread %u waits at %s)",
                  r.fibers[0].c.bid.x, r.fibers[0].c.bid.y, r.fibers[0].c.bid.z, wait_block,
                  wait_warp, done, t0, state_name(r.fibers[t0].state));
    r.error = buf;
    return false;
  }
}

}  // namespace

void syncthreads() { yield_as(State::WaitBlock); }

void syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "clca host shim: partial warp masks are not modelled\n");
    std::abort();
  }
  yield_as(State::WaitWarp);
}

int lane_id() { return static_cast<int>(g_runner->cur % 32); }

uint64_t warp_exchange(unsigned mask, uint64_t v, int src_lane) {
  BlockRunner* r = g_runner;
  unsigned me = r->cur;
  unsigned warp = me / 32;
  r->warp_slots[warp * 32 + me % 32] = v;
  syncwarp(mask);
  unsigned src = warp * 32 + static_cast<unsigned>(src_lane);
  uint64_t got = src < r->nthreads ? r->warp_slots[src] : v;
  syncwarp(mask);
  return got;
}

unsigned ballot(unsigned mask, bool pred) {
  BlockRunner* r = g_runner;
  unsigned me = r->cur;
  unsigned warp = me / 32;
  r->warp_slots[warp * 32 + me % 32] = pred ? 1 : 0;
  syncwarp(mask);
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l) {
    unsigned t = warp * 32 + l;
    if (t < r->nthreads && r->warp_slots[t]) bits |= 1u << l;
  }
  syncwarp(mask);
  return bits;
}

void* dynamic_smem() { return g_runner->dyn_smem.data(); }

int run(void* fn, Trampoline tr, const clca_launch_cfg* cfg, void** args) {
  dim3 g{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
  dim3 b{cfg->block[0], cfg->block[1], cfg->block[2]};
  unsigned long long nthreads = 1ull * b.x * b.y * b.z;
  unsigned long long nblocks = 1ull * g.x * g.y * g.z;
  char buf[256];
  if (nthreads == 0 || nthreads > kMaxThreads || b.z > 64) {
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) outside the device limits", b.x, b.y, b.z);
    g_last_error = buf;
    return 1;
  }
  if (nblocks == 0 || g.y > 65535 || g.z > 65535) {
    std::snprintf(buf, sizeof buf, "grid (%u,%u,%u) outside the device limits", g.x, g.y, g.z);
    g_last_error = buf;
    return 1;
  }
  if (cfg->smem > kMaxDynSmem) {
    std::snprintf(buf, sizeof buf, "dynamic shared memory %u bytes > %u", cfg->smem, kMaxDynSmem);
    g_last_error = buf;
    return 1;
  }
  unsigned workers = std::thread::hardware_concurrency();
  if (const char* e = std::getenv("CLCA_SHIM_THREADS")) workers = static_cast<unsigned>(std::atoi(e));
  if (workers == 0) workers = 1;
  if (workers > nblocks) workers = static_cast<unsigned>(nblocks);

  std::atomic<unsigned long long> next{0};
  std::atomic<bool> failed{false};
  std::string first_error;
  std::mutex mu;
  auto work = [&]() {
    BlockRunner r;
    r.fn = fn;
    r.tr = tr;
    r.args = args;
    r.nthreads = static_cast<unsigned>(nthreads);
    r.fibers.resize(nthreads);
    r.stacks.resize(nthreads * kStackBytes);
    r.warp_slots.assign(((nthreads + 31) / 32) * 32, 0);
    r.dyn_smem.assign(cfg->smem ? cfg->smem : 16, 0);
    g_runner = &r;
    while (!failed.load()) {
      unsigned long long i = next.fetch_add(1);
      if (i >= nblocks) break;
      uint3 bid{static_cast<unsigned>(i % g.x), static_cast<unsigned>((i / g.x) % g.y),
                static_cast<unsigned>(i / (1ull * g.x * g.y))};
      if (!run_block(r, bid, b, g)) {
        std::lock_guard<std::mutex> lk(mu);
        if (!failed.exchange(true)) first_error = r.error;
        break;
      }
    }
    g_runner = nullptr;
    g_ctx = nullptr;
  };
  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> ts;
    for (unsigned w = 0; w < workers; ++w) ts.emplace_back(work);
    for (auto& t : ts) t.join();
  }
  if (failed.load()) {
    g_last_error = first_error;
    return 2;
  }
  return 0;
}

}  // namespace clca_shim

extern "C" const char* clca_host_last_error() { return clca_shim::g_last_error.c_str(); }
