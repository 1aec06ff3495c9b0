/* Shared between ioctl_meter.c (the preloaded meter) and truth_probe.cu. GPU probe only. */
#ifndef PROBE_METER_H
#define PROBE_METER_H
#include <stdint.h>

#define PROBE_METER_VERSION 1u

struct probe_meter {
    uint32_t version;
    uint32_t pad_;
    uint64_t ioctl_total;        /* every ioctl through libc (plus syscall(SYS_ioctl)) */
    uint64_t ioctl_ns;           /* time in them */
    uint64_t ioctl_nv;           /* those on an NVIDIA char device (major 195), any type */
    uint64_t ioctl_nv_ns;
    uint64_t syscall_ioctl;      /* ioctls that came through syscall() rather than ioctl() */
    uint64_t xfer;               /* NV_ESC_IOCTL_XFER_CMD wrappers */
    uint64_t rm_alloc_calls, rm_alloc_ok, rm_alloc_fail, rm_alloc_os64, rm_alloc_ns;
    uint64_t rm_free_calls, rm_free_ok;
    uint64_t vid_live_bytes;     /* live NV01_MEMORY_LOCAL_USER (0x40), non-virtual, by returned size */
    uint64_t vid_peak_bytes;
    uint64_t vid_alloc_bytes;    /* cumulative */
    uint64_t vid_freed_bytes;
    uint64_t vid_live_objs;
    uint64_t vid_virtual_allocs; /* 0x40 with NVOS32_ALLOC_FLAGS_VIRTUAL (not counted) */
    uint64_t sys_live_bytes;     /* NV01_MEMORY_SYSTEM (0x3e) */
    uint64_t mem_unparsed;       /* 0x40/0x3e allocs whose params could not be read (serialized, short) */
    uint64_t table_overflow;
    uint64_t nv_type_other;      /* ioctls on an NVIDIA fd whose _IOC_TYPE is not 'F' */
};

typedef int (*probe_meter_read_fn)(struct probe_meter *out);

#endif
