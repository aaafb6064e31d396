// Device discovery for the CUDA backend. Kernels for the ops of kernels/kernels.h live beside
// this file, one .cu per op family, with the CPU signatures plus the stream in the Context.
#include <cuda_runtime.h>

namespace shoal::kernels::cuda {

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace shoal::kernels::cuda
