// runtime.cpp — the emulator's scheduler (see README.md and cuda_emu.h).
//
// A launch runs the grid's blocks one after another on the calling OS thread. Within a block,
// every CUDA thread is a cooperative fiber that runs until it finishes or waits (at
// __syncthreads or in a warp collective). The scheduler makes passes over the fibers in order:
// a waiting fiber switches straight to the next ready one (one switch per resume), the last of
// the pass back to the scheduler; a thread that finishes starts the next unstarted thread in
// place on its own stack, so threads that never wait cost no switch at all (fiber_main). A pass
// that resumes nothing while threads remain is a deadlock: the state of every warp goes to
// stderr, then abort().
//
// Built without exceptions, RTTI or libstdc++ calls: the Rust binary links only libc for it.
#include "cuda_emu.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;        // per fiber; fprintf alone needs > 8 KiB
// Stack tops are staggered by (slot % 64) cache lines: at a page-multiple stride, every fiber's
// saved frame would fall into the same L1 set. The slot is this much larger to keep 64 KiB.
constexpr size_t kColourBytes = 4096;
constexpr size_t kSlotBytes = kStackBytes + kColourBytes;
constexpr size_t kDynSmemBytes = 227 * 1024;     // Hopper's opt-in maximum per block
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxWarps = kMaxThreads / 32;
constexpr unsigned kPoison = 0xffffffffu;         // shuffle from a lane outside the group

enum State : uint8_t { kNew, kReady, kAtBarrier, kInWarpOp, kDone };

// ---- context switch ---------------------------------------------------------------------------

#if defined(__x86_64__)
// rest_emu_switch(save, load): pushes the callee-saved registers and the MXCSR / x87 control
// words on the current stack, stores rsp in *save, loads `load` as rsp and pops the same frame.
// A new fiber's stack holds such a frame whose return address is rest_emu_fiber_start, which
// calls r13(r12).
extern "C" void rest_emu_switch(void** save, void* load);
extern "C" void rest_emu_fiber_start();
asm(R"(
    .text
    .p2align 4
    .globl rest_emu_switch
    .hidden rest_emu_switch
    .type rest_emu_switch, @function
rest_emu_switch:
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
    .size rest_emu_switch, .-rest_emu_switch

    .p2align 4
    .globl rest_emu_fiber_start
    .hidden rest_emu_fiber_start
    .type rest_emu_fiber_start, @function
rest_emu_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size rest_emu_fiber_start, .-rest_emu_fiber_start
)");

struct Ctx {
  void* sp;
};
inline void switch_to(Ctx* save, Ctx* load) { rest_emu_switch(&save->sp, load->sp); }
#else
// Portable fallback (a system call per switch, ~10x slower).
struct Ctx {
  ucontext_t uc;
};
inline void switch_to(Ctx* save, Ctx* load) { swapcontext(&save->uc, &load->uc); }
#endif

struct Fiber {
  Ctx ctx;
  unsigned char* stack_top;
  dim3 tid;
  uint8_t state;
  uint8_t op;  // WarpOp while kInWarpOp, BarrierMode while kAtBarrier
  uint8_t width;
  unsigned mask, value, result;
  int arg, line;
  const char* file;
};

struct Emu {
  // One mapping, reused across launches: [guard][dynamic smem][guard][stack 0][guard][stack 1]…
  unsigned char* map;
  size_t map_bytes, page;
  unsigned slots;
  unsigned char* dyn_end;  // a PROT_NONE page starts here

  unsigned char* free_stacks[kMaxThreads];  // tops of unused stacks, most recently freed last
  unsigned n_free;

  Fiber fibers[kMaxThreads];
  unsigned waiting[kMaxWarps];  // lanes waiting in a warp collective
  unsigned exited[kMaxWarps];   // lanes finished (or absent from a partial last warp)
  unsigned absent[kMaxWarps];   // lanes that do not exist in this block shape

  Ctx sched, scratch;
  unsigned n, cur, live;
  unsigned k;    // position in the scheduler's pass (fiber order[k] is running)
  unsigned ran;  // fibers resumed in this pass
  bool reverse;  // order[k] = n - 1 - k
  unsigned arrived, bar_count;  // __syncthreads in progress
  int bar_line, bar_line2;
  const char *bar_file, *bar_file2;
  bool bar_mismatch;

  const char* kernel;
  Body body;
  const void* params;
  bool active;
  int reverse_override;  // -1: REST_EMU_REVERSE decides
  unsigned long long resumes;
  uint64_t fp_ctl;  // MXCSR | x87 control word << 32, for new fibers
};

thread_local Emu* g_emu = nullptr;
pthread_key_t g_key;
pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
int g_env_reverse = -1;  // REST_EMU_REVERSE, read once (-1: not yet)

[[noreturn]] __attribute__((format(printf, 1, 2))) void fatal(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("\ncuda_emu: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  abort();
}

void destroy(void* p) {
  Emu* e = static_cast<Emu*>(p);
  if (e->map) munmap(e->map, e->map_bytes);
  free(e);
}

Emu* get_emu() {
  Emu* e = g_emu;
  if (__builtin_expect(e != nullptr, 1)) return e;
  pthread_once(&g_key_once, [] { pthread_key_create(&g_key, destroy); });
  e = static_cast<Emu*>(calloc(1, sizeof(Emu)));
  if (!e) fatal("out of memory");
  e->page = (size_t)sysconf(_SC_PAGESIZE);
  e->reverse_override = -1;
  pthread_setspecific(g_key, e);
  g_emu = e;
  return e;
}

const char* base_name(const char* f) {
  const char* s = strrchr(f, '/');
  return s ? s + 1 : f;
}

bool same_site(int l1, const char* f1, int l2, const char* f2) {
  return l1 == l2 && (f1 == f2 || strcmp(f1, f2) == 0);
}

// Maps stacks for `threads` fibers (grows, never shrinks; untouched pages cost nothing).
void ensure_slots(Emu* e, unsigned threads) {
  if (e->map && e->slots >= threads) return;
  if (e->map) munmap(e->map, e->map_bytes);
  unsigned slots = threads < 64 ? 64 : (threads + 63) / 64 * 64;
  const size_t pg = e->page;
  const size_t dyn = (kDynSmemBytes + pg - 1) / pg * pg;
  const size_t bytes = pg + dyn + (size_t)slots * (pg + kSlotBytes);
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) fatal("mmap of %zu bytes for fiber stacks failed", bytes);
  e->map = static_cast<unsigned char*>(m);
  e->map_bytes = bytes;
  e->slots = slots;
  unsigned char* p = e->map;
  mprotect(p, pg, PROT_NONE);
  e->dyn_end = p + pg + dyn;
  p = e->dyn_end;
  for (unsigned i = 0; i < slots; i++, p += pg + kSlotBytes) mprotect(p, pg, PROT_NONE);
}

unsigned char* stack_top(Emu* e, unsigned slot) {
  return e->dyn_end + (size_t)(slot + 1) * (e->page + kSlotBytes) - (slot % 64) * 64;
}

// ---- barrier and warp groups --------------------------------------------------------------------

[[noreturn]] void report(Emu* e, const char* why);

void release_barrier(Emu* e) {
  if (e->bar_mismatch) report(e, "threads wait at different __syncthreads call sites");
  const unsigned participants = e->arrived, count = e->bar_count;
  for (unsigned i = 0; i < e->n; i++) {
    Fiber& f = e->fibers[i];
    if (f.state != kAtBarrier) continue;
    f.state = kReady;
    f.result = f.op == kAnd ? count == participants : f.op == kOr ? count != 0 : count;
  }
  e->arrived = 0;
  e->bar_count = 0;
}

// Completes the collective of `mask` in warp `w` if every live lane of the mask waits in it.
bool try_complete(Emu* e, unsigned w, unsigned mask) {
  const unsigned group = mask & ~e->exited[w];
  if (group == 0 || (group & ~e->waiting[w])) return false;
  Fiber* lanes = &e->fibers[w * 32];
  const unsigned op = lanes[__builtin_ctz(group)].op;
  for (unsigned g = group; g; g &= g - 1) {
    const Fiber& f = lanes[__builtin_ctz(g)];
    if (f.mask != mask || f.op != op) return false;  // another group: a deadlock if it stays
  }
  unsigned votes = 0;
  for (unsigned g = group; g; g &= g - 1) {
    const unsigned l = __builtin_ctz(g);
    if (lanes[l].value) votes |= 1u << l;
  }
  for (unsigned g = group; g; g &= g - 1) {
    const unsigned lane = __builtin_ctz(g);
    Fiber& f = lanes[lane];
    switch (op) {
      case kSyncwarp:
        f.result = 0;
        break;
      case kBallot:
        f.result = votes;
        break;
      case kAny:
        f.result = votes != 0;
        break;
      case kAll:
        f.result = votes == group;
        break;
      default: {
        // PTX shfl.sync semantics with c = ((32 - width) << 8) | clamp.
        const int seg = 32 - f.width;  // lane bits that select the segment
        const int b = f.arg & 31;
        const int min_lane = (int)lane & seg, max_lane = min_lane | (31 & ~seg);
        int j;
        bool valid;
        if (op == kShflIdx) {
          j = min_lane | (b & ~seg & 31);
          valid = true;
        } else if (op == kShflUp) {
          j = (int)lane - b;
          valid = j >= min_lane;
        } else if (op == kShflDown) {
          j = (int)lane + b;
          valid = j <= max_lane;
        } else {
          j = (int)lane ^ b;
          valid = j <= max_lane;
        }
        if (!valid) j = (int)lane;
        // Reading a lane outside the group is undefined on a GPU: poison it.
        f.result = (group >> j & 1) ? lanes[j].value : kPoison;
      }
    }
  }
  for (unsigned g = group; g; g &= g - 1) lanes[__builtin_ctz(g)].state = kReady;
  e->waiting[w] &= ~group;
  return true;
}

// After a lane of warp `w` exited: groups that were waiting only for it may complete now.
void complete_after_exit(Emu* e, unsigned w) {
  for (unsigned pending = e->waiting[w]; pending; pending &= e->waiting[w]) {
    const unsigned l = __builtin_ctz(pending);
    try_complete(e, w, e->fibers[w * 32 + l].mask);
    pending &= ~(1u << l);
  }
}

// ---- fibers -------------------------------------------------------------------------------------

void start_fiber(Emu* e, Fiber& f);

unsigned order(const Emu* e, unsigned k) { return e->reverse ? e->n - 1 - k : k; }

// Switches from `save` (the scheduler or a fiber that waits) to the next ready fiber of the
// pass, starting it if new; at the end of the pass, to the scheduler (or returns if `save` is
// the scheduler). Returns when `save` is resumed.
void resume_next(Emu* e, Ctx* save) {
  while (++e->k < e->n) {
    const unsigned i = order(e, e->k);
    Fiber& f = e->fibers[i];
    if (f.state == kNew) {
      f.stack_top = e->free_stacks[--e->n_free];
      start_fiber(e, f);
      f.state = kReady;
    }
    if (f.state != kReady) continue;
    threadIdx = f.tid;
    e->cur = i;
    e->ran++;
    switch_to(save, &f.ctx);
    return;
  }
  if (save != &e->sched) switch_to(save, &e->sched);
}

// After thread `f` finished: if the next thread of the pass that can run has not started, it
// takes over this stack and runs right here (no switch). Returns whether it did.
bool chain_next(Emu* e, Fiber& f) {
  while (e->k + 1 < e->n) {
    const unsigned next = order(e, e->k + 1);
    Fiber& nf = e->fibers[next];
    if (nf.state == kReady) return false;  // resumed by resume_next
    e->k++;
    if (nf.state == kNew) {
      nf.stack_top = f.stack_top;
      nf.state = kReady;
      threadIdx = nf.tid;
      e->cur = next;
      e->ran++;
      return true;
    }
  }
  return false;
}

[[noreturn]] void fiber_main(Emu* e) {
  for (;;) {
    e->body(e->params);
    const unsigned i = e->cur, w = i >> 5;
    Fiber& f = e->fibers[i];
    f.state = kDone;
    e->live--;
    e->exited[w] |= 1u << (i & 31);
    if (e->waiting[w]) complete_after_exit(e, w);
    if (e->arrived && e->arrived == e->live) release_barrier(e);  // exited counts as arrived
    if (chain_next(e, f)) continue;
    // This stack is free once we have switched away (nothing runs in between).
    e->free_stacks[e->n_free++] = f.stack_top;
    resume_next(e, &e->scratch);
    __builtin_unreachable();
  }
}

#if defined(__x86_64__)
void start_fiber(Emu* e, Fiber& f) {
  uint64_t* sp = reinterpret_cast<uint64_t*>(f.stack_top);  // 16-byte aligned
  sp[-1] = reinterpret_cast<uint64_t>(&rest_emu_fiber_start);  // return address
  sp[-2] = 0;                                                  // rbp
  sp[-3] = 0;                                                  // rbx
  sp[-4] = reinterpret_cast<uint64_t>(e);                      // r12: argument
  sp[-5] = reinterpret_cast<uint64_t>(&fiber_main);            // r13: entry
  sp[-6] = 0;                                                  // r14
  sp[-7] = 0;                                                  // r15
  sp[-8] = e->fp_ctl;                                          // MXCSR, x87 control word
  f.ctx.sp = sp - 8;
}
uint64_t current_fp_ctl() {
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  return mxcsr | (uint64_t)fcw << 32;
}
#else
void fiber_main_noarg() { fiber_main(g_emu); }
void start_fiber(Emu* e, Fiber& f) {
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = f.stack_top - kStackBytes;
  f.ctx.uc.uc_stack.ss_size = kStackBytes;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, fiber_main_noarg, 0);
  (void)e;
}
uint64_t current_fp_ctl() { return 0; }
#endif

bool reverse_order(Emu* e) {
  if (e->reverse_override >= 0) return e->reverse_override != 0;
  int r = __atomic_load_n(&g_env_reverse, __ATOMIC_RELAXED);
  if (r < 0) {
    const char* v = getenv("REST_EMU_REVERSE");
    r = v && *v && strcmp(v, "0") != 0;
    __atomic_store_n(&g_env_reverse, r, __ATOMIC_RELAXED);
  }
  return r != 0;
}

void run_block(Emu* e, size_t smem_span) {
  memset(dyn_smem, 0xff, smem_span);
  const unsigned n = e->n;
  unsigned x = 0, y = 0, z = 0;
  for (unsigned i = 0; i < n; i++) {
    Fiber& f = e->fibers[i];
    f.state = kNew;
    f.tid = dim3(x, y, z);
    if (++x == blockDim.x) {
      x = 0;
      if (++y == blockDim.y) y = 0, z++;
    }
  }
  const unsigned warps = (n + 31) / 32;
  for (unsigned w = 0; w < warps; w++) {
    e->waiting[w] = 0;
    e->exited[w] = e->absent[w];
  }
  e->live = n;
  e->arrived = e->bar_count = 0;
  e->bar_mismatch = false;
  e->n_free = 0;
  for (unsigned s = n; s-- > 0;) e->free_stacks[e->n_free++] = stack_top(e, s);

  // One pass resumes every ready fiber in order; fibers pass control straight to the next one
  // (resume_next), the last one of the pass back here.
  for (;;) {
    e->ran = 0;
    e->k = ~0u;
    resume_next(e, &e->sched);
    e->resumes += e->ran;
    if (e->live == 0) break;
    if (e->ran == 0) report(e, "deadlock: no thread of the block can make progress");
  }}

// ---- deadlock report ----------------------------------------------------------------------------

void describe(const Emu* e, unsigned i, char* buf, size_t len) {
  const Fiber& f = e->fibers[i];
  static const char* const ops[] = {"__syncwarp",    "__shfl_sync", "__shfl_up_sync",
                                    "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                    "__any_sync",    "__all_sync"};
  switch (f.state) {
    case kDone:
      snprintf(buf, len, "exited");
      break;
    case kNew:
      snprintf(buf, len, "not started");
      break;
    case kReady:
      snprintf(buf, len, "running");
      break;
    case kAtBarrier:
      snprintf(buf, len, "at __syncthreads (%s:%d)", base_name(f.file), f.line);
      break;
    case kInWarpOp:
      snprintf(buf, len, "in %s mask 0x%08x (%s:%d)", ops[f.op], f.mask, base_name(f.file),
               f.line);
      break;
  }
}

[[noreturn]] void report(Emu* e, const char* why) {
  fprintf(stderr,
          "\ncuda_emu: %s\n  kernel %s, block (%u,%u,%u), gridDim (%u,%u,%u), blockDim (%u,%u,%u)\n"
          "  %u of %u threads unfinished, %u waiting at __syncthreads\n",
          why, e->kernel, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z,
          blockDim.x, blockDim.y, blockDim.z, e->live, e->n, e->arrived);
  if (e->bar_mismatch)
    fprintf(stderr, "  __syncthreads call sites: %s:%d and %s:%d\n", base_name(e->bar_file),
            e->bar_line, base_name(e->bar_file2), e->bar_line2);
  char prev[160], cur[160];
  for (unsigned w = 0; w * 32 < e->n; w++) {
    fprintf(stderr, "  warp %u:", w);
    const unsigned lanes = e->n - w * 32 < 32 ? e->n - w * 32 : 32;
    unsigned start = 0;
    describe(e, w * 32, prev, sizeof prev);
    for (unsigned l = 1; l <= lanes; l++) {
      if (l < lanes) describe(e, w * 32 + l, cur, sizeof cur);
      if (l == lanes || strcmp(cur, prev) != 0) {
        if (start == l - 1)
          fprintf(stderr, " lane %u %s;", start, prev);
        else
          fprintf(stderr, " lanes %u-%u %s;", start, l - 1, prev);
        start = l;
        memcpy(prev, cur, sizeof prev);
      }
    }
    fputc('\n', stderr);
  }
  fflush(stderr);
  abort();
}

Emu* running(const char* what, int line, const char* file) {
  Emu* e = g_emu;
  if (!e || !e->active)
    fatal("%s called outside a kernel launch (%s:%d)", what, base_name(file), line);
  return e;
}

}  // namespace

// ---- entry points -----------------------------------------------------------------------------

void launch(const char* kernel, dim3 grid, dim3 block, unsigned smem, const void* params,
            Body body) {
  Emu* e = get_emu();
  if (e->active)
    fatal("kernel %s launched from inside kernel %s (nested launches are not emulated)", kernel,
          e->kernel);
  const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads)
    fatal("kernel %s: block (%u,%u,%u) must have 1..%u threads", kernel, block.x, block.y,
          block.z, kMaxThreads);
  const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
  if (blocks == 0) fatal("kernel %s: empty grid (%u,%u,%u)", kernel, grid.x, grid.y, grid.z);
  if (smem > kDynSmemBytes)
    fatal("kernel %s: %u bytes of dynamic shared memory exceed the emulator's %zu", kernel, smem,
          kDynSmemBytes);
  ensure_slots(e, (unsigned)threads);

  e->kernel = kernel;
  e->body = body;
  e->params = params;
  e->n = (unsigned)threads;
  e->fp_ctl = current_fp_ctl();
  const unsigned warps = (e->n + 31) / 32;
  for (unsigned w = 0; w < warps; w++) {
    const unsigned have = e->n - w * 32;
    e->absent[w] = have >= 32 ? 0u : ~0u << have;
  }
  const size_t span = (smem + 127) / 128 * 128;
  dyn_smem = e->dyn_end - span;
  gridDim = grid;
  blockDim = block;
  const bool reverse = reverse_order(e);
  e->reverse = reverse;
  e->active = true;
  for (unsigned long long b = 0; b < blocks; b++) {
    const unsigned long long idx = reverse ? blocks - 1 - b : b;
    blockIdx = dim3((unsigned)(idx % grid.x), (unsigned)(idx / grid.x % grid.y),
                    (unsigned)(idx / ((unsigned long long)grid.x * grid.y)));
    run_block(e, span);
  }
  e->active = false;
}

int barrier(int pred, int mode, int line, const char* file) {
  Emu* e = running("__syncthreads", line, file);
  Fiber& f = e->fibers[e->cur];
  if (e->arrived == 0) {
    e->bar_line = line;
    e->bar_file = file;
  } else if (!e->bar_mismatch && !same_site(line, file, e->bar_line, e->bar_file)) {
    e->bar_mismatch = true;
    e->bar_line2 = line;
    e->bar_file2 = file;
  }
  f.state = kAtBarrier;
  f.op = (uint8_t)mode;
  f.line = line;
  f.file = file;
  e->arrived++;
  e->bar_count += pred != 0;
  if (e->arrived == e->live)
    release_barrier(e);
  else
    resume_next(e, &f.ctx);
  return (int)f.result;
}

unsigned warp_op(int op, unsigned mask, unsigned value, int arg, int width, int line,
                 const char* file) {
  Emu* e = running("a warp collective", line, file);
  const unsigned i = e->cur, w = i >> 5, lane = i & 31;
  if (!(mask >> lane & 1))
    fatal("kernel %s, block (%u,%u,%u), thread %u: warp collective at %s:%d with mask 0x%08x "
          "that leaves out the calling lane %u",
          e->kernel, blockIdx.x, blockIdx.y, blockIdx.z, i, base_name(file), line, mask, lane);
  if (width < 1 || width > 32 || (width & (width - 1)))
    fatal("kernel %s: shuffle width %d at %s:%d is not a power of two in 1..32", e->kernel, width,
          base_name(file), line);
  Fiber& f = e->fibers[i];
  f.state = kInWarpOp;
  f.op = (uint8_t)op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = (uint8_t)width;
  f.line = line;
  f.file = file;
  e->waiting[w] |= 1u << lane;
  if (!try_complete(e, w, mask)) resume_next(e, &f.ctx);
  return f.result;
}

unsigned active_mask() {
  Emu* e = running("__activemask", 0, "?");
  const unsigned w = e->cur >> 5;
  return ~e->exited[w];
}

}  // namespace cuda_emu

// ---- C interface for the Rust side ------------------------------------------------------------

// Fiber order on this OS thread: 1 reverse, 0 forward, negative: REST_EMU_REVERSE decides.
extern "C" void rest_emu_set_reverse(int mode) {
  cuda_emu::get_emu()->reverse_override = mode < 0 ? -1 : mode != 0;
}

// Fiber resumes on this OS thread so far (for measuring the cost of a switch).
extern "C" unsigned long long rest_emu_resumes() { return cuda_emu::get_emu()->resumes; }
