// distill — a caching allocator for libtorch's large CPU tensors.
//
// A training step frees and allocates the same large buffers every step (activations, logits,
// their gradients). Through glibc each of those comes back as fresh pages: 64-byte-aligned large
// blocks fragment the heap so that it keeps growing instead of reusing them, and every new page
// costs a fault (measured: ~7,000 faults, several ms, in one step of the demo teacher). This
// allocator keeps freed blocks of 1 MiB and more mapped and hands them out again to requests of
// about the same size, as a GPU caching allocator does; huge pages are requested for them where
// the kernel offers them (madvise). Smaller requests go to libtorch's default allocator.
#pragma once

#include <cstddef>

namespace distill {

// Installs the allocator as libtorch's CPU allocator (once; later calls do nothing). At most
// `max_cached` bytes of free blocks are kept; beyond that the largest are returned to the system.
void install_caching_allocator(size_t max_cached = size_t(1) << 30);

struct CachingAllocatorStats {
    size_t cached_bytes = 0;   // free blocks kept for reuse
    size_t mapped_bytes = 0;   // all blocks it holds, in use or free
    size_t hits = 0, misses = 0;
};
CachingAllocatorStats caching_allocator_stats();

}  // namespace distill
