// distill — process set-up that makes the math libraries fast out of the box.
#pragma once

namespace distill {

// OpenBLAS 0.3.21 does not know recent Intel cores (Sapphire Rapids) and falls back to a slow
// generic kernel ("Prescott"). The core type can only be chosen before the library loads, so
// when OpenBLAS reports a generic core on a CPU with AVX-512 (or AVX2), this sets
// OPENBLAS_CORETYPE to SkylakeX (or Haswell) and re-executes the program once. A user's own
// OPENBLAS_CORETYPE is always respected; DISTILL_NO_BLAS_FIX=1 turns this off.
void ensure_fast_blas(int argc, char** argv);

// The BLAS core OpenBLAS uses ("" if the BLAS is not OpenBLAS).
const char* blas_core_name();

// Keeps freed large blocks for reuse instead of returning them to the kernel: installs the caching
// allocator of util/allocator.h for libtorch's CPU tensors.
void tune_allocator();

// Sets the intra-op thread count (0 = all cores).
void set_threads(int n);

}  // namespace distill
