/*
 * copy.c: cuMemcpy* and cuMemsetD* in their current (_v2), per-thread
 * default stream (_ptds / _ptsz), asynchronous and legacy 32-bit forms.
 * Device pointers are host addresses, so a copy is a memmove once each
 * device side was checked to lie inside live device memory; "async" calls
 * complete before they return.
 */
#include "fakecuda.h"

#include <string.h>

typedef enum { FC_HOST, FC_DEVICE, FC_UNIFIED } fc_side;

typedef struct {
    CUdeviceptr dst, src;
    fc_side dst_side, src_side;
    size_t n;          /* bytes */
} copy_req;

/* Unified addresses are checked only where they fall in device memory. */
static bool side_ok(CUdeviceptr p, fc_side side, size_t n)
{
    if (side == FC_HOST)
        return p != 0;
    if (side == FC_UNIFIED && !fc_alloc_containing(p))
        return p != 0;
    return fc_range_ok(p, n);
}

/* Checks the context (and the stream when given) first, then the ranges. */
static CUresult copy_entry(const copy_req *r, const CUstream *stream)
{
    CUcontext ctx;
    int dev;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && stream)
        rc = fc_stream_device(*stream, &dev);
    if (rc == CUDA_SUCCESS && r->n > 0) {
        if (!side_ok(r->dst, r->dst_side, r->n) || !side_ok(r->src, r->src_side, r->n))
            rc = CUDA_ERROR_INVALID_VALUE;
        else
            memmove((void *)(uintptr_t)r->dst, (const void *)(uintptr_t)r->src, r->n);
    }
    fc_unlock();
    return rc;
}

static CUresult htod(CUdeviceptr dst, const void *src, size_t n, const CUstream *s)
{
    copy_req r = { dst, (CUdeviceptr)(uintptr_t)src, FC_DEVICE, FC_HOST, n };
    return copy_entry(&r, s);
}

static CUresult dtoh(void *dst, CUdeviceptr src, size_t n, const CUstream *s)
{
    copy_req r = { (CUdeviceptr)(uintptr_t)dst, src, FC_HOST, FC_DEVICE, n };
    return copy_entry(&r, s);
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, const CUstream *s)
{
    copy_req r = { dst, src, FC_DEVICE, FC_DEVICE, n };
    return copy_entry(&r, s);
}

static CUresult unified(CUdeviceptr dst, CUdeviceptr src, size_t n, const CUstream *s)
{
    copy_req r = { dst, src, FC_UNIFIED, FC_UNIFIED, n };
    return copy_entry(&r, s);
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *h, size_t n) { return htod(d, h, n, NULL); }
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void *h, size_t n) { return htod(d, h, n, NULL); }
CUresult cuMemcpyHtoD(CUdeviceptr_v1 d, const void *h, unsigned int n) { return htod(d, h, n, NULL); }
CUresult cuMemcpyDtoH_v2(void *h, CUdeviceptr d, size_t n) { return dtoh(h, d, n, NULL); }
CUresult cuMemcpyDtoH_v2_ptds(void *h, CUdeviceptr d, size_t n) { return dtoh(h, d, n, NULL); }
CUresult cuMemcpyDtoH(void *h, CUdeviceptr_v1 d, unsigned int n) { return dtoh(h, d, n, NULL); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return dtod(d, s, n, NULL); }
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return dtod(d, s, n, NULL); }
CUresult cuMemcpyDtoD(CUdeviceptr_v1 d, CUdeviceptr_v1 s, unsigned int n) { return dtod(d, s, n, NULL); }
CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { return unified(d, s, n, NULL); }
CUresult cuMemcpy_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return unified(d, s, n, NULL); }

CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return unified(d, s, n, &st); }
CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return unified(d, s, n, &st); }

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *h, size_t n, CUstream st) { return htod(d, h, n, &st); }
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void *h, size_t n, CUstream st) { return htod(d, h, n, &st); }
CUresult cuMemcpyDtoHAsync_v2(void *h, CUdeviceptr d, size_t n, CUstream st) { return dtoh(h, d, n, &st); }
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *h, CUdeviceptr d, size_t n, CUstream st) { return dtoh(h, d, n, &st); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return dtod(d, s, n, &st); }
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return dtod(d, s, n, &st); }

/* ---- memset: N elements of width 1, 2 or 4 bytes ---- */

static CUresult fill(CUdeviceptr dst, unsigned int value, unsigned int width, size_t n,
                     const CUstream *stream)
{
    CUcontext ctx;
    int dev;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && stream)
        rc = fc_stream_device(*stream, &dev);
    if (rc == CUDA_SUCCESS && (dst % width || (n && !fc_range_ok(dst, n * width))))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && width == 1)
        memset((void *)(uintptr_t)dst, (int)value, n), n = 0;
    for (size_t i = 0; rc == CUDA_SUCCESS && i < n; i++) {
        unsigned char *p = (unsigned char *)(uintptr_t)dst + i * width;
        if (width == 1)
            *p = (unsigned char)value;
        else if (width == 2)
            memcpy(p, &(unsigned short){ (unsigned short)value }, 2);
        else
            memcpy(p, &value, 4);
    }
    fc_unlock();
    return rc;
}

CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char uc, size_t N) { return fill(d, uc, 1, N, NULL); }
CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char uc, size_t N) { return fill(d, uc, 1, N, NULL); }
CUresult cuMemsetD8(CUdeviceptr_v1 d, unsigned char uc, unsigned int N) { return fill(d, uc, 1, N, NULL); }
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short us, size_t N) { return fill(d, us, 2, N, NULL); }
CUresult cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short us, size_t N) { return fill(d, us, 2, N, NULL); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int ui, size_t N) { return fill(d, ui, 4, N, NULL); }
CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int ui, size_t N) { return fill(d, ui, 4, N, NULL); }
CUresult cuMemsetD32(CUdeviceptr_v1 d, unsigned int ui, unsigned int N) { return fill(d, ui, 4, N, NULL); }

CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char uc, size_t N, CUstream s) { return fill(d, uc, 1, N, &s); }
CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char uc, size_t N, CUstream s) { return fill(d, uc, 1, N, &s); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short us, size_t N, CUstream s) { return fill(d, us, 2, N, &s); }
CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short us, size_t N, CUstream s) { return fill(d, us, 2, N, &s); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int ui, size_t N, CUstream s) { return fill(d, ui, 4, N, &s); }
CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int ui, size_t N, CUstream s) { return fill(d, ui, 4, N, &s); }
