// The cache of freed output blocks (output_cache.h says why).
#include "output_cache.h"

#include <c10/core/CPUAllocator.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <cerrno>
#include <list>
#include <mutex>
#include <new>

namespace igc {
namespace cpu {
namespace {

constexpr size_t kPage = size_t(4) << 10, kHugePage = size_t(2) << 20;
constexpr int64_t kDefaultLimitMB = 1024;

struct Block {
  void* p;
  size_t n;
};

int64_t limit_from_env() {
  const char* v = getenv("IGC_KERNELS_CPU_OUTPUT_CACHE_MB");
  if (v == nullptr || *v == '\0') return kDefaultLimitMB << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = strtoll(v, &end, 10);
  TORCH_CHECK(errno == 0 && *end == '\0' && mb >= 0 && mb <= (int64_t(1) << 40),
              "IGC_KERNELS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB >= 0 (0 turns the output cache "
              "off), got '", v, "'");
  return int64_t(mb) << 20;
}

class OutputCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (int64_t(n) < kCachedMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = (n + kPage - 1) / kPage * kPage;
    void* p = take(size);
    if (p == nullptr) {
      p = fresh_block(size);
      if (p == nullptr) {  // the idle blocks may be what is missing
        trim(0);
        p = fresh_block(size);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "igc_kernels: out of memory allocating an output of ", n,
                       " bytes");
    }
    return c10::DataPtr(p, new Block{p, size}, &release, c10::Device(c10::DeviceType::CPU));
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    init_locked();
    return {int64_t(cached_), limit_, reused_, fresh_};
  }
  // An explicit limit replaces the environment's. Returns the limit in force before: the
  // environment's (read now if no call has read it yet), or the default if that is malformed.
  int64_t set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "output cache limit must be >= 0 bytes, got ", bytes);
    int64_t old;
    {
      std::lock_guard<std::mutex> lock(mu_);
      try {
        init_locked();
      } catch (const c10::Error&) {  // a malformed variable: the explicit limit replaces it
        limit_ = kDefaultLimitMB << 20;
      }
      old = limit_;
      limit_ = bytes;
    }
    trim(bytes);
    return old;
  }
  // After fork() the child has one thread: a lock another thread held at the fork is never released.
  void reset_lock_after_fork() { new (&mu_) std::mutex(); }

 private:
  std::mutex mu_;
  std::list<Block> idle_;  // most recently freed first
  size_t cached_ = 0;
  int64_t limit_ = -1;  // -1: not read from the environment yet
  int64_t reused_ = 0, fresh_ = 0;

  void init_locked() {
    if (limit_ < 0) limit_ = limit_from_env();
  }
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    init_locked();
    for (auto it = idle_.begin(); it != idle_.end(); ++it)
      if (it->n == size) {
        void* p = it->p;
        cached_ -= size;
        idle_.erase(it);
        ++reused_;
        return p;
      }
    ++fresh_;
    return nullptr;
  }
  static void* fresh_block(size_t size) {
    const size_t align = size >= kHugePage ? kHugePage : kPage;
    void* p = nullptr;
    if (posix_memalign(&p, align, size) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
    // A hint (where transparent huge pages are in "madvise" mode): one fault per 2 MiB the first
    // time the block is written, instead of one per 4 KiB.
    const size_t whole = size / kHugePage * kHugePage;
    if (whole > 0) madvise(p, whole, MADV_HUGEPAGE);
#endif
    return p;
  }
  // Moves the least recently freed blocks past `keep` idle bytes to `out` (freed by the caller,
  // outside the lock).
  void evict_locked(int64_t keep, std::list<Block>& out) {
    while (int64_t(cached_) > keep && !idle_.empty()) {
      cached_ -= idle_.back().n;
      out.splice(out.begin(), idle_, std::prev(idle_.end()));
    }
  }
  void trim(int64_t keep) {
    std::list<Block> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      evict_locked(keep, out);
    }
    for (const Block& b : out) free(b.p);
  }
  static void release(void* ctx);
};

// Never destroyed: outputs may be freed after static destructors run.
OutputCache& cache() {
  static OutputCache* c = [] {
    auto* made = new OutputCache();
    pthread_atfork(nullptr, nullptr, [] { cache().reset_lock_after_fork(); });
    return made;
  }();
  return *c;
}

void OutputCache::release(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  OutputCache& c = cache();
  std::list<Block> out;  // blocks to give back to the system, after the lock
  bool kept = false;
  {
    std::lock_guard<std::mutex> lock(c.mu_);
    if (c.limit_ > 0 && int64_t(b->n) <= c.limit_) {
      try {  // a deleter must not throw: without memory for the list node the block is freed
        c.idle_.push_front(*b);
        c.cached_ += b->n;
        kept = true;
        c.evict_locked(c.limit_, out);
      } catch (const std::bad_alloc&) {
      }
    }
  }
  if (!kept) free(b->p);
  for (const Block& e : out) free(e.p);
  delete b;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), format);
}

OutputCacheStats output_cache_stats() { return cache().stats(); }

int64_t set_output_cache_limit(int64_t bytes) { return cache().set_limit(bytes); }

}  // namespace cpu
}  // namespace igc

// For igc_kernels.runtime (ctypes): stats = {cached bytes, limit bytes, reused, fresh}.
// Returns 0, or -1 when the environment variable is malformed (the next op call raises its error).
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_output_cache_stats(int64_t* stats) {
  try {
    const igc::cpu::OutputCacheStats s = igc::cpu::output_cache_stats();
    stats[0] = s.cached_bytes;
    stats[1] = s.limit_bytes;
    stats[2] = s.reused;
    stats[3] = s.fresh;
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}

// Returns the previous limit, or -1 when bytes < 0 (nothing changed).
extern "C" __attribute__((visibility("default"))) int64_t igc_kernels_cpu_set_output_cache_limit(int64_t bytes) {
  if (bytes < 0) return -1;
  return igc::cpu::set_output_cache_limit(bytes);  // cannot throw for bytes >= 0
}
