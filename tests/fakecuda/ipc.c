/*
 * ipc.c: legacy CUDA IPC, the exporting side only (cuIpcGetMemHandle).
 * Only memory made by the cuMemAlloc family for the device is IPC-capable,
 * as CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE says (attr.c); any
 * address inside such an allocation names the whole allocation (importers
 * get its base). Managed, pool, VMM and graph memory, and addresses no
 * allocation holds, are CUDA_ERROR_INVALID_VALUE. Not measured on the real
 * driver: the order of checks follows the other entry points (initialised,
 * a current context, then the arguments).
 */
#include "fakecuda.h"

#include <string.h>
#include <unistd.h>

/* What the handle carries: enough for a test to check what was exported. */
typedef struct {
    char magic[8];               /* "fcipc\0\0\0" */
    unsigned long long pid;
    unsigned long long base;     /* the allocation's base */
    unsigned long long id;       /* its CU_POINTER_ATTRIBUTE_BUFFER_ID */
} fc_ipc_payload;

_Static_assert(sizeof(fc_ipc_payload) <= CU_IPC_HANDLE_SIZE, "fits in a CUipcMemHandle");

CUresult cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    fc_alloc *a = rc == CUDA_SUCCESS ? fc_alloc_containing(dptr) : NULL;
    if (rc == CUDA_SUCCESS && (!pHandle || !a || a->kind != FC_KIND_DEVICE))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        fc_ipc_payload p = { "fcipc", (unsigned long long)getpid(), a->base, a->id };
        memset(pHandle, 0, sizeof *pHandle);
        memcpy(pHandle->reserved, &p, sizeof p);
    }
    fc_unlock();
    return rc;
}
