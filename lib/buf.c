/*
 * buf.c — buffers: one allocation with unique ownership and bounds-checked
 * copies. Bounds are checked without overflow (n > size - offset), so no
 * offset/length pair can wrap around into a copy.
 */
#include <stdlib.h>

#include "vg_pool.h"

struct vg_buf {
    vg_pool_t *pool;
    vg_devptr_t ptr;
    size_t size;
};

int vg_buf_create(vg_pool_t *pool, size_t size, const vg_alloc_opts_t *opts,
                  vg_buf_t **buf)
{
    if (!pool || !buf)
        return VG_EINVAL;
    vg_buf_t *b = calloc(1, sizeof *b);
    if (!b)
        return VG_ESYS;
    int rc = vg_pool_alloc(pool, size, opts, &b->ptr);
    if (rc != VG_OK) {
        free(b);
        return rc;
    }
    b->pool = pool;
    b->size = size;
    *buf = b;
    return VG_OK;
}

static int check_range(const vg_buf_t *buf, size_t offset, size_t n)
{
    if (!buf)
        return VG_EINVAL;
    if (offset > buf->size || n > buf->size - offset)
        return VG_ERANGE;
    return VG_OK;
}

int vg_buf_write(vg_buf_t *buf, size_t offset, const void *src, size_t n)
{
    int rc = check_range(buf, offset, n);
    if (rc != VG_OK || n == 0)
        return rc;
    if (!src)
        return VG_EINVAL;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(buf->pool, &g);
    CUresult cr = vg__driver()->cuMemcpyHtoD_v2(buf->ptr + offset, src, n);
    vg__pool_ctx_leave(&g);
    return cr == CUDA_SUCCESS ? VG_OK : VG_EDRIVER;
}

int vg_buf_read(const vg_buf_t *buf, size_t offset, void *dst, size_t n)
{
    int rc = check_range(buf, offset, n);
    if (rc != VG_OK || n == 0)
        return rc;
    if (!dst)
        return VG_EINVAL;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(buf->pool, &g);
    CUresult cr = vg__driver()->cuMemcpyDtoH_v2(dst, buf->ptr + offset, n);
    vg__pool_ctx_leave(&g);
    return cr == CUDA_SUCCESS ? VG_OK : VG_EDRIVER;
}

vg_devptr_t vg_buf_ptr(const vg_buf_t *buf)
{
    return buf ? buf->ptr : 0;
}

size_t vg_buf_size(const vg_buf_t *buf)
{
    return buf ? buf->size : 0;
}

int vg_buf_release(vg_buf_t **buf, vg_devptr_t *ptr)
{
    if (!buf || !*buf || !ptr)
        return VG_EINVAL;
    *ptr = (*buf)->ptr;
    free(*buf);
    *buf = NULL;
    return VG_OK;
}

int vg_buf_destroy(vg_buf_t **buf)
{
    if (!buf || !*buf)
        return VG_OK;
    int rc = vg_pool_free((*buf)->pool, (*buf)->ptr);
    free(*buf);
    *buf = NULL;
    return rc;
}
