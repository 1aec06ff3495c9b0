//! Raw declarations of `include/vramguard.h`, written by hand.
//!
//! One item per item of the header, in its order and with its names. Every
//! struct here is `#[repr(C)]` and is checked against the header by
//! `tests/layout.rs`, which has a C compiler assert each struct's size and
//! alignment and each field's offset and size as Rust computes them. C enums
//! are `c_int` (their size on every platform the library builds for), and
//! their values are constants.
//!
//! Everything here is `unsafe` to call; the crate root is the safe layer.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_uint, c_void};

// ---------------------------------------------------------------- errors

pub type vg_status_t = c_int;
pub const VG_OK: vg_status_t = 0;
pub const VG_EINVAL: vg_status_t = 1;
pub const VG_ENOMEM: vg_status_t = 2;
pub const VG_ENODRIVER: vg_status_t = 3;
pub const VG_ENODEV: vg_status_t = 4;
pub const VG_EDRIVER: vg_status_t = 5;
pub const VG_ERANGE: vg_status_t = 6;
pub const VG_ESETTING: vg_status_t = 7;
pub const VG_ENOTFOUND: vg_status_t = 8;
pub const VG_EBADPTR: vg_status_t = 9;
pub const VG_ESYS: vg_status_t = 10;
pub const VG_EDENIED: vg_status_t = 11;

// ------------------------------------------------------- common types

pub type vg_devptr_t = u64;

pub type vg_kind_t = c_int;
pub const VG_KIND_PLAIN: vg_kind_t = 0;
pub const VG_KIND_PITCH: vg_kind_t = 1;
pub const VG_KIND_MANAGED: vg_kind_t = 2;
pub const VG_KIND_ASYNC: vg_kind_t = 3;
pub const VG_KIND_POOL: vg_kind_t = 4;
pub const VG_KIND_VMM: vg_kind_t = 5;
pub const VG_KIND_ARRAY: vg_kind_t = 6;
pub const VG_KIND_API: vg_kind_t = 7;
pub const VG_KIND_COUNT: usize = 8;

pub type vg_pressure_t = c_int;
pub const VG_PRESSURE_LOW: vg_pressure_t = 0;
pub const VG_PRESSURE_MEDIUM: vg_pressure_t = 1;
pub const VG_PRESSURE_HIGH: vg_pressure_t = 2;
pub const VG_PRESSURE_CRITICAL: vg_pressure_t = 3;

// ------------------------------------------------------------ devices

#[repr(C)]
#[derive(Clone, Copy)]
pub struct vg_device_info_t {
    pub ordinal: c_int,
    pub name: [c_char; 256],
    pub uuid: [c_char; 48],
    pub cc_major: c_int,
    pub cc_minor: c_int,
    pub sm_count: c_int,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

// ------------------------------------------------------------- pools

/// Opaque: only ever behind a pointer.
#[repr(C)]
pub struct vg_pool_t {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vg_leak_report_t {
    pub count: u64,
    pub bytes: u64,
}

pub const VG_ALLOC_ZERO: c_uint = 1 << 0;
pub const VG_ALLOC_EVICTABLE: c_uint = 1 << 1;

pub type vg_evict_cb =
    Option<unsafe extern "C" fn(pool: *mut vg_pool_t, ptr: vg_devptr_t, size: usize, user: *mut c_void)>;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct vg_alloc_opts_t {
    pub align: usize,
    pub flags: c_uint,
    pub tag: *const c_char,
    pub priority: c_int,
    pub evict: vg_evict_cb,
    pub evict_user: *mut c_void,
}

/// The pool's counters (`vg_pool_stats`). Field meanings are the header's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct vg_pool_stats_t {
    pub limit: u64,
    pub used: u64,
    pub peak: u64,
    pub live_count: u64,
    pub allocs: u64,
    pub frees: u64,
    pub refusals: u64,
    pub count_by_kind: [u64; VG_KIND_COUNT],
    pub bytes_by_kind: [u64; VG_KIND_COUNT],
    pub cached: u64,
    pub live_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub trims: u64,
    pub evictions: u64,
    pub reuse_syncs: u64,
    pub fragmentation: f64,
}

pub type vg_pressure_cb = Option<
    unsafe extern "C" fn(
        pool: *mut vg_pool_t,
        old_level: vg_pressure_t,
        new_level: vg_pressure_t,
        user: *mut c_void,
    ),
>;

pub const VG_EXPLAIN_RECENT: usize = 8;

/// One entry of `vg_refusal_t::recent` (an anonymous struct in C).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vg_refusal_recent_t {
    pub ptr: vg_devptr_t,
    pub size: u64,
    pub tag: [c_char; 32],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct vg_refusal_t {
    pub requested: u64,
    pub limit: u64,
    pub used: u64,
    pub driver_free: u64,
    pub recent_count: c_int,
    pub recent: [vg_refusal_recent_t; VG_EXPLAIN_RECENT],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vg_device_stats_t {
    pub budget: u64,
    pub used: u64,
    pub peak: u64,
    pub refusals: u64,
    pub overhead: u64,
    pub live_count: u64,
    pub count_by_kind: [u64; VG_KIND_COUNT],
    pub bytes_by_kind: [u64; VG_KIND_COUNT],
}

// ----------------------------------------------------------- buffers

/// Opaque: only ever behind a pointer.
#[repr(C)]
pub struct vg_buf_t {
    _private: [u8; 0],
}

// ---------------------------------------------------- pointer checks

pub type vg_ptr_class_t = c_int;
pub const VG_PTR_LIVE: vg_ptr_class_t = 0;
pub const VG_PTR_INTERIOR: vg_ptr_class_t = 1;
pub const VG_PTR_FREED: vg_ptr_class_t = 2;
pub const VG_PTR_FOREIGN: vg_ptr_class_t = 3;
pub const VG_PTR_HOST: vg_ptr_class_t = 4;
pub const VG_PTR_FAKE: vg_ptr_class_t = 5;
pub const VG_PTR_CLASS_COUNT: usize = 6;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct vg_ptr_info_t {
    pub cls: vg_ptr_class_t,
    pub base: vg_devptr_t,
    pub offset: u64,
    pub size: u64,
    pub kind: vg_kind_t,
    pub device: c_int,
    pub pattern: [c_char; 64],
}

pub const VG_VERIFY_SHOW: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vg_verify_report_t {
    pub checked: u64,
    pub skipped: u64,
    pub bad: u64,
    pub shown: c_int,
    pub ptrs: [vg_devptr_t; VG_VERIFY_SHOW],
}

extern "C" {
    pub fn vg_strerror(status: c_int) -> *const c_char;
    pub fn vg_err_name(status: c_int) -> *const c_char;
    pub fn vg_kind_name(kind: c_int) -> *const c_char;
    pub fn vg_pressure_name(level: c_int) -> *const c_char;

    pub fn vg_available() -> c_int;
    pub fn vg_device_count(count: *mut c_int) -> c_int;
    pub fn vg_device_find(index_or_uuid: *const c_char, ordinal: *mut c_int) -> c_int;
    pub fn vg_device_info(ordinal: c_int, info: *mut vg_device_info_t) -> c_int;

    pub fn vg_pool_create(device: c_int, limit_bytes: u64, pool: *mut *mut vg_pool_t) -> c_int;
    pub fn vg_pool_destroy(pool: *mut vg_pool_t, leaks: *mut vg_leak_report_t) -> c_int;
    pub fn vg_pool_alloc(
        pool: *mut vg_pool_t,
        size: usize,
        opts: *const vg_alloc_opts_t,
        ptr: *mut vg_devptr_t,
    ) -> c_int;
    pub fn vg_pool_free(pool: *mut vg_pool_t, ptr: vg_devptr_t) -> c_int;
    pub fn vg_pool_touch(pool: *mut vg_pool_t, ptr: vg_devptr_t) -> c_int;
    pub fn vg_pool_trim(pool: *mut vg_pool_t, keep_bytes: u64, released: *mut u64) -> c_int;
    pub fn vg_pool_available(pool: *mut vg_pool_t, bytes: *mut u64) -> c_int;
    pub fn vg_pool_pressure(pool: *mut vg_pool_t) -> vg_pressure_t;
    pub fn vg_pool_stats(pool: *mut vg_pool_t, stats: *mut vg_pool_stats_t) -> c_int;
    pub fn vg_pool_on_pressure(pool: *mut vg_pool_t, cb: vg_pressure_cb, user: *mut c_void) -> c_int;
    pub fn vg_pool_explain(
        pool: *mut vg_pool_t,
        requested: u64,
        why: *mut vg_refusal_t,
        buf: *mut c_char,
        buflen: usize,
    ) -> c_int;
    pub fn vg_device_stats(device: c_int, stats: *mut vg_device_stats_t) -> c_int;

    pub fn vg_buf_create(
        pool: *mut vg_pool_t,
        size: usize,
        opts: *const vg_alloc_opts_t,
        buf: *mut *mut vg_buf_t,
    ) -> c_int;
    pub fn vg_buf_write(buf: *mut vg_buf_t, offset: usize, src: *const c_void, n: usize) -> c_int;
    pub fn vg_buf_read(buf: *const vg_buf_t, offset: usize, dst: *mut c_void, n: usize) -> c_int;
    pub fn vg_buf_ptr(buf: *const vg_buf_t) -> vg_devptr_t;
    pub fn vg_buf_size(buf: *const vg_buf_t) -> usize;
    pub fn vg_buf_release(buf: *mut *mut vg_buf_t, ptr: *mut vg_devptr_t) -> c_int;
    pub fn vg_buf_destroy(buf: *mut *mut vg_buf_t) -> c_int;

    pub fn vg_ptr_class_name(cls: c_int) -> *const c_char;
    pub fn vg_ptr_check(ptr: vg_devptr_t, info: *mut vg_ptr_info_t) -> c_int;
    pub fn vg_verify_all(out: *mut vg_verify_report_t) -> c_int;
}
