#pragma once
// Host/device annotations: functions that CUDA kernels may call carry CKB_HD.
#if defined(__CUDACC__)
#define CKB_HD __host__ __device__
#define CKB_HD_INLINE __host__ __device__ __forceinline__
#else
#define CKB_HD
#define CKB_HD_INLINE inline
#endif
