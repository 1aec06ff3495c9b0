/*
 * fakecuda_query.h: what the test driver (tests/fakecuda, built as
 * libcuda.so.1) tells in-process tests about its capacity ledger.
 * Link against the driver or dlsym these names. All are thread-safe, work
 * before cuInit (returning 0) and take a device ordinal; an ordinal out of
 * range reads as 0 and resets nothing.
 *
 * "Used" bytes are the bytes charged against the device's capacity
 * (FAKECUDA_TOTAL_BYTES): live allocations of every family, plus memory that
 * memory pools keep reserved after cuMemFreeAsync, plus VMM physical memory
 * that is still handed out or mapped, plus implicit memory (below).
 */
#ifndef FAKECUDA_QUERY_H
#define FAKECUDA_QUERY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* High-water mark of used bytes on dev since start or the last reset. */
size_t fakecuda_peak_bytes(int dev);
/* Bytes charged against dev's capacity now. */
size_t fakecuda_used_bytes(int dev);
/* The part of used bytes on dev that no allocation call made: contexts'
 * own memory (FAKECUDA_CONTEXT_BYTES), heap/stack/printf limits above their
 * defaults, and the globals of loaded modules (fakecuda.h). */
size_t fakecuda_implicit_bytes(int dev);
/* Sets dev's high-water mark to its current use. */
void fakecuda_reset_peak(int dev);
/* Live allocations of the cuMemAlloc family (plain, pitch, managed) on
 * dev: each is one driver allocation, however small. */
size_t fakecuda_live_allocs(int dev);
/* The live allocation of any family that holds ptr, as the driver itself
 * knows it (a caller under a shim that rewrites cuMemGetAddressRange and
 * cuPointerGetAttribute still sees the truth): 1 with *base, *size and its
 * CU_POINTER_ATTRIBUTE_BUFFER_ID *id (each optional), 0 when no allocation
 * holds ptr. */
int fakecuda_range_of(unsigned long long ptr, unsigned long long *base, size_t *size,
                      unsigned long long *id);

#ifdef __cplusplus
}
#endif

#endif /* FAKECUDA_QUERY_H */
