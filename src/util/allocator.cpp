#include "util/allocator.h"

#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

namespace distill {

namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // smaller requests: libtorch's default allocator
constexpr size_t kGranule = size_t(64) << 10;   // block sizes are multiples of this
constexpr size_t kHuge = size_t(2) << 20;       // transparent huge page size on x86-64

struct Block {
    void* ptr;
    size_t size;
};

class CachingAllocator final : public c10::Allocator {
public:
    CachingAllocator(c10::Allocator* fallback, size_t max_cached) : fallback_(fallback), max_cached_(max_cached) {}

    c10::DataPtr allocate(size_t n) const override {
        if (n < kMinCached) return fallback_->allocate(n);
        const size_t size = (n + kGranule - 1) / kGranule * kGranule;
        Block* b = take(size);
        if (!b) {
            void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                trim(0);  // give every cached block back and try once more
                p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p == MAP_FAILED) throw std::bad_alloc();
            }
#ifdef MADV_HUGEPAGE
            if (size >= kHuge) ::madvise(p, size, MADV_HUGEPAGE);
#endif
            b = new Block{p, size};
            std::lock_guard<std::mutex> lock(mu_);
            mapped_ += size;
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            live_.emplace(b->ptr, b);
        }
        return {b->ptr, b->ptr, &CachingAllocator::release, c10::Device(c10::DeviceType::CPU)};
    }

    // raw_allocate / raw_deallocate (oneDNN's scratch) free by the data pointer alone: a block of
    // ours goes back to the cache, anything else to the default allocator.
    c10::DeleterFnPtr raw_deleter() const override { return &CachingAllocator::release; }

    // libtorch 2.x makes this part of the interface; 1.13 does not call it.
    void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

    CachingAllocatorStats stats() const {
        std::lock_guard<std::mutex> lock(mu_);
        return {cached_, mapped_, hits_, misses_};
    }

private:
    // A free block of at least `size` and at most 5/4 of it, or nullptr.
    Block* take(size_t size) const {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = free_.lower_bound(size);
        if (it == free_.end() || it->first > size + size / 4) {
            ++misses_;
            return nullptr;
        }
        Block* b = it->second;
        free_.erase(it);
        cached_ -= b->size;
        ++hits_;
        return b;
    }

    static void release(void* ptr) { instance_->give_back(ptr); }

    void give_back(void* ptr) const {
        std::unique_lock<std::mutex> lock(mu_);
        auto live = live_.find(ptr);
        if (live == live_.end()) {  // a small block of the default allocator
            lock.unlock();
            fallback_->raw_deleter()(ptr);
            return;
        }
        Block* b = live->second;
        live_.erase(live);
        free_.emplace(b->size, b);
        cached_ += b->size;
        if (cached_ > max_cached_) trim_locked(max_cached_);
    }

    void trim(size_t keep) const {
        std::lock_guard<std::mutex> lock(mu_);
        trim_locked(keep);
    }

    // Unmaps the largest free blocks until at most `keep` bytes stay cached.
    void trim_locked(size_t keep) const {
        while (cached_ > keep && !free_.empty()) {
            auto it = std::prev(free_.end());
            Block* b = it->second;
            free_.erase(it);
            cached_ -= b->size;
            mapped_ -= b->size;
            ::munmap(b->ptr, b->size);
            delete b;
        }
    }

    c10::Allocator* fallback_;
    size_t max_cached_;
    mutable std::mutex mu_;
    mutable std::multimap<size_t, Block*> free_;      // by size
    mutable std::unordered_map<void*, Block*> live_;  // in use, by data pointer
    mutable size_t cached_ = 0, mapped_ = 0, hits_ = 0, misses_ = 0;

public:
    static CachingAllocator* instance_;
};

CachingAllocator* CachingAllocator::instance_ = nullptr;

}  // namespace

void install_caching_allocator(size_t max_cached) {
    static std::once_flag once;
    std::call_once(once, [&] {
        // Never destroyed: tensors may be freed during static destruction.
        CachingAllocator::instance_ = new CachingAllocator(c10::GetCPUAllocator(), max_cached);
        c10::SetCPUAllocator(CachingAllocator::instance_, /*priority=*/1);
    });
}

CachingAllocatorStats caching_allocator_stats() {
    return CachingAllocator::instance_ ? CachingAllocator::instance_->stats() : CachingAllocatorStats{};
}

}  // namespace distill
