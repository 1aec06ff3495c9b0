/*
 * vg_diag.h — the switch in front of every diagnostic (defined in audit.c).
 * Its own header because the free path's inline half (vg_account.h) reads
 * it on every free, and the shim must not see the audit log's internals.
 */
#ifndef VG_DIAG_H
#define VG_DIAG_H

#include "vg_base.h"

/* ----------------------------------------------------------- audit.c */

/* Diagnostics, all off unless a setting asks: the audit log (audit.c, with
 * its buffers in audit_buf.c and its start and exit in audit_log.c), call
 * sites and the leak report (audit_sites.c), the bad-pointer policy and the
 * allocation check (badptr.c). With all of them off, an allocation or a
 * free pays one relaxed load and one predictable branch (vg__diag_on). */

enum {
    VG__DIAG_LOG = 1u << 0,    /* VRAMGUARD_AUDIT: the log is open */
    VG__DIAG_SITES = 1u << 1,  /* allocations record their call site */
    VG__DIAG_VERIFY = 1u << 2, /* VRAMGUARD_VERIFY=1 */
};

/* vg__hot.diag_flags: set once while the engine starts (audit.c), before
 * any hook sees it started; read relaxed on every allocation and free,
 * inline: a call would cost more than the check. */

static inline bool vg__diag_on(void)
{
    return atomic_load_explicit(&vg__hot.diag_flags, memory_order_relaxed) != 0;
}

static inline bool vg__diag_has(unsigned bit)
{
    return (atomic_load_explicit(&vg__hot.diag_flags, memory_order_relaxed) & bit) != 0;
}

#endif /* VG_DIAG_H */
