/*
 * client_linked.c — reaches the driver by direct calls, as a program linked
 * with -lcuda does: the dynamic linker binds every name, so a preloaded
 * shim's exports win. cuda.h's macros map cuMemAlloc to cuMemAlloc_v2 and
 * so on; the _ptsz twins are declared here (cuda.h declares them only for
 * per-thread-default-stream builds).
 */
#include "client.h"

CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream);
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream);

int main(int argc, char **argv)
{
    client_t c = {0};
#define CLIENT_LINK_(field, type, abi, base, ver, flags) c.api.field = &abi;
    CLIENT_SYMS(CLIENT_LINK_)
#undef CLIENT_LINK_
    return client_main(&c, argc, argv);
}
