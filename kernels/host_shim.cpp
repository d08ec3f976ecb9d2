// Runtime of the host execution shim (see host_shim.h): a fiber scheduler per worker thread.
#include "host_shim.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
// A minimal context switch (callee-saved registers, MXCSR and the x87 control word): glibc's
// swapcontext also saves the signal mask with a system call, which made the shim ~10x slower.
// clca_switch(save, load): pushes the callee-saved state, stores rsp in *save, loads `load`.
extern "C" void clca_switch(void** save, void* load);
asm(R"(
  .text
  .globl clca_switch
  .type clca_switch,@function
clca_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size clca_switch, .-clca_switch
)");
#endif

namespace clca_shim {

thread_local ThreadCtx* g_ctx = nullptr;

namespace {

enum class State { Run, WaitBlock, WaitWarp, Done };

constexpr size_t kStackBytes = 64 * 1024;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxDynSmem = 48 * 1024;  // the default per-block limit without opt-in
constexpr unsigned kMaxGatherBytes = 64;     // per lane, for warp_gather

struct Fiber {
#if defined(__x86_64__)
  void* sp;
#else
  ucontext_t uc;
#endif
  State state;
  ThreadCtx c;
};

struct BlockRunner {
  void* fn = nullptr;
  Trampoline tr = nullptr;
  void** args = nullptr;
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  std::vector<uint64_t> warp_slots;  // [warp][lane]
  std::vector<unsigned char> warp_gather_buf;  // [warp][lane][kMaxGatherBytes]
  std::vector<unsigned char> dyn_smem;
#if defined(__x86_64__)
  void* sched;
#else
  ucontext_t sched;
#endif
  unsigned cur = 0;
  std::string error;
};

thread_local BlockRunner* g_runner = nullptr;

// Fiber stacks are reused across launches: allocating (and faulting in) fresh ones per launch
// dominated the shim's run time.
std::mutex g_pool_mu;
std::vector<std::pair<size_t, char*>> g_pool;

char* acquire_stacks(size_t bytes) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  for (size_t i = 0; i < g_pool.size(); ++i) {
    if (g_pool[i].first >= bytes) {
      char* p = g_pool[i].second;
      g_pool.erase(g_pool.begin() + static_cast<long>(i));
      return p;
    }
  }
  return static_cast<char*>(std::malloc(bytes));
}

void release_stacks(char* p, size_t bytes) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  g_pool.emplace_back(bytes, p);
}

thread_local std::string g_last_error;

void switch_to_scheduler(Fiber& f) {
#if defined(__x86_64__)
  clca_switch(&f.sp, g_runner->sched);
#else
  swapcontext(&f.uc, &g_runner->sched);
#endif
}

void fiber_main() {
  BlockRunner* r = g_runner;
  unsigned me = r->cur;
  r->tr(r->fn, r->args);
  r->fibers[me].state = State::Done;
#if defined(__x86_64__)
  // Never resumed: the scheduler only runs fibers in state Run.
  switch_to_scheduler(r->fibers[me]);
  std::abort();
#endif
  // (ucontext) returning follows uc_link back to the scheduler.
}

void yield_as(State s) {
  BlockRunner* r = g_runner;
  Fiber& f = r->fibers[r->cur];
  f.state = s;
  switch_to_scheduler(f);
}

void init_fiber(BlockRunner& r, Fiber& f, unsigned t) {
  char* lo = r.stacks + static_cast<size_t>(t) * kStackBytes;
#if defined(__x86_64__)
  // Frame that clca_switch pops: [mxcsr|fcw][r15 r14 r13 r12 rbx rbp][return address].
  // The return-address slot sits at a 16-byte boundary, so fiber_main starts as if called.
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + kStackBytes - 64) & ~uintptr_t(15);
  void** slot = reinterpret_cast<void**>(top);
  slot[0] = reinterpret_cast<void*>(&fiber_main);
  for (int k = 1; k <= 6; ++k) slot[-k] = nullptr;
  uint32_t* ctl = reinterpret_cast<uint32_t*>(slot - 7);
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  ctl[0] = mxcsr;
  ctl[1] = fcw;
  f.sp = slot - 7;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = lo;
  f.uc.uc_stack.ss_size = kStackBytes;
  f.uc.uc_link = &r.sched;
  makecontext(&f.uc, fiber_main, 0);
#endif
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
    init_fiber(r, f, t);
  }
  std::memset(r.dyn_smem.data(), 0xFF, r.dyn_smem.size());
  unsigned nwarps = (n + 31) / 32;
  while (true) {
    for (unsigned t = 0; t < n; ++t) {
      if (r.fibers[t].state != State::Run) continue;
      r.cur = t;
      g_ctx = &r.fibers[t].c;
#if defined(__x86_64__)
      clca_switch(&r.sched, r.fibers[t].sp);
#else
      swapcontext(&r.sched, &r.fibers[t].uc);
#endif
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

void warp_gather(unsigned mask, const void* mine, unsigned bytes, void* all) {
  BlockRunner* r = g_runner;
  unsigned me = r->cur;
  unsigned warp = me / 32;
  // bytes <= kMaxGatherBytes: warp_gather_all (the only caller) checks it at compile time.
  unsigned char* base = r->warp_gather_buf.data() + static_cast<size_t>(warp) * 32 * kMaxGatherBytes;
  std::memcpy(base + (me % 32) * kMaxGatherBytes, mine, bytes);
  syncwarp(mask);
  unsigned char* out = static_cast<unsigned char*>(all);
  for (unsigned l = 0; l < 32; ++l) {
    if (warp * 32 + l < r->nthreads) std::memcpy(out + l * bytes, base + l * kMaxGatherBytes, bytes);
    else std::memset(out + l * bytes, 0, bytes);
  }
  syncwarp(mask);
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
    const size_t stack_bytes = static_cast<size_t>(nthreads) * kStackBytes;
    r.stacks = acquire_stacks(stack_bytes);
    if (!r.stacks) {
      std::lock_guard<std::mutex> lk(mu);
      if (!failed.exchange(true)) first_error = "out of memory for fiber stacks";
      return;
    }
    r.warp_slots.assign(((nthreads + 31) / 32) * 32, 0);
    r.warp_gather_buf.assign(((nthreads + 31) / 32) * 32 * kMaxGatherBytes, 0);
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
    release_stacks(r.stacks, stack_bytes);
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
