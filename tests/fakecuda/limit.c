/*
 * limit.c: cuCtxSetLimit and cuCtxGetLimit, and the device memory the
 * heap, stack and printf limits take. The defaults are part of a context's
 * own memory (FAKECUDA_CONTEXT_BYTES); only what a larger limit adds is
 * charged (docs/accounting.md, "Lifetimes follow the driver's rules";
 * measured on an H200):
 *   heap   its size above 8 MiB;
 *   stack  (size - 1024) x SM count x 2048 resident threads per SM
 *          (16 KiB on 132 SMs: about 4.1 GiB);
 *   printf its FIFO size above 1 MiB.
 * The charge is taken at cuCtxSetLimit, or with FAKECUDA_LIMITS_AT=launch
 * at the context's next kernel launch (the real driver may do either).
 * A smaller limit gives its charge back the same way. A limit whose memory
 * does not fit now is CUDA_ERROR_OUT_OF_MEMORY at cuCtxSetLimit in both
 * modes, and the old value stays.
 */
#include "fakecuda.h"

#define FC_HEAP_DEFAULT (8u << 20)     /* bytes */
#define FC_STACK_DEFAULT 1024u         /* bytes per thread */
#define FC_PRINTF_DEFAULT (1u << 20)   /* bytes */

static const size_t g_default[FC_NLIMITS] = {
    [CU_LIMIT_STACK_SIZE] = FC_STACK_DEFAULT,
    [CU_LIMIT_PRINTF_FIFO_SIZE] = FC_PRINTF_DEFAULT,
    [CU_LIMIT_MALLOC_HEAP_SIZE] = FC_HEAP_DEFAULT,
    [CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH] = 2,
    [CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT] = 2048,
    [CU_LIMIT_MAX_L2_FETCH_GRANULARITY] = 64,
};

static size_t above(size_t v, size_t deflt) { return v > deflt ? v - deflt : 0; }

static size_t add_sat(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

/* Bytes the limits in v take above the defaults; SIZE_MAX when that
 * overflows (it can never fit). */
static size_t limit_bytes(const size_t v[FC_NLIMITS])
{
    size_t threads = (size_t)fc_knobs_get()->sm_count * FC_THREADS_PER_SM;
    size_t stack = above(v[CU_LIMIT_STACK_SIZE], FC_STACK_DEFAULT);
    stack = stack > SIZE_MAX / threads ? SIZE_MAX : stack * threads;
    size_t n = add_sat(stack, above(v[CU_LIMIT_MALLOC_HEAP_SIZE], FC_HEAP_DEFAULT));
    return add_sat(n, above(v[CU_LIMIT_PRINTF_FIFO_SIZE], FC_PRINTF_DEFAULT));
}

void fc_limits_reset(CUcontext ctx)
{
    for (int i = 0; i < FC_NLIMITS; i++)
        ctx->limit[i] = g_default[i];
    ctx->limit_charged = 0;
    ctx->limit_pending = false;
}

void fc_limits_release(CUcontext ctx)
{
    if (ctx->limit_charged)
        fc_uncharge_implicit(ctx->dev, ctx->limit_charged);
    fc_limits_reset(ctx);
}

/* Moves the charge to what the current values take; OOM leaves it. */
static CUresult recharge(CUcontext ctx)
{
    size_t need = limit_bytes(ctx->limit);
    if (need > ctx->limit_charged) {
        CUresult rc = fc_charge_implicit(ctx->dev, need - ctx->limit_charged);
        if (rc != CUDA_SUCCESS)
            return rc;
    } else if (need < ctx->limit_charged) {
        fc_uncharge_implicit(ctx->dev, ctx->limit_charged - need);
    }
    ctx->limit_charged = need;
    ctx->limit_pending = false;
    return CUDA_SUCCESS;
}

CUresult fc_limits_apply(CUcontext ctx)
{
    return ctx->limit_pending ? recharge(ctx) : CUDA_SUCCESS;
}

/* Lock held, context current. */
static CUresult set_limit(CUcontext ctx, CUlimit limit, size_t value)
{
    size_t old = ctx->limit[limit];
    ctx->limit[limit] = value;
    size_t need = limit_bytes(ctx->limit);
    if (need > ctx->limit_charged && !fc_fits(ctx->dev, need - ctx->limit_charged)) {
        ctx->limit[limit] = old;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (fc_knobs_get()->limits_at_launch) {
        ctx->limit_pending = need != ctx->limit_charged;
        return CUDA_SUCCESS;
    }
    CUresult rc = recharge(ctx);
    if (rc != CUDA_SUCCESS)
        ctx->limit[limit] = old;
    return rc;
}

CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    CUcontext ctx;
    fc_setlimit_delay();
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && ((int)limit < 0 || (int)limit >= FC_NLIMITS))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (rc == CUDA_SUCCESS && (limit == CU_LIMIT_SHMEM_SIZE || limit == CU_LIMIT_CIG_ENABLED))
        rc = CUDA_ERROR_UNSUPPORTED_LIMIT;   /* query-only (cuda.h) */
    if (rc == CUDA_SUCCESS)
        rc = set_limit(ctx, limit, value);
    fc_unlock();
    return rc;
}

CUresult cuCtxGetLimit(size_t *pvalue, CUlimit limit)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && (!pvalue || (int)limit < 0 || (int)limit >= FC_NLIMITS))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        *pvalue = ctx->limit[limit];
    fc_unlock();
    return rc;
}
