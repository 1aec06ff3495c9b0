//! Budgeted, bounds-checked GPU memory: safe Rust over `libvramguard.so`.
//!
//! A [`Pool`] may hold at most its byte limit of device memory (and the
//! process's device budget, `VRAMGUARD_BUDGET`, when one is set); a request
//! over it is an [`Error`] of kind [`ErrorKind::OutOfBudget`], never an
//! abort. A [`Buffer`] owns one allocation, frees it when dropped, cannot
//! outlive its pool (it borrows it), and copies to and from the host only
//! inside its bounds: an out-of-range offset or length is an `Err`, not a
//! panic. Pools report a [`MemoryPressure`] level and call registered
//! callbacks when it changes.
//!
//! ```
//! # fn main() -> Result<(), vramguard::Error> {
//! let pool = vramguard::Pool::new(0, 64 << 20)?;
//! let mut buf = pool.alloc(4096)?;              // Buffer: Drop frees
//! buf.write_at(0, &[1, 2, 3])?;
//! assert!(buf.write_at(4095, &[1, 2]).is_err()); // out of bounds is an Err, not a panic
//! assert_eq!(pool.pressure()?, vramguard::MemoryPressure::Low);
//! # Ok(())
//! # }
//! ```
//!
//! The CUDA driver is loaded at run time (`libcuda.so.1`, or the path in
//! `VRAMGUARD_LIBCUDA`); [`available`] says early whether it is there:
//!
//! ```
//! if let Err(e) = vramguard::available() {
//!     eprintln!("no GPU: {e}");
//!     std::process::exit(1);
//! }
//! ```
//!
//! Building: the build script links `libvramguard.so` from
//! `VRAMGUARD_LIB_DIR` when set, else from the `libdir` of pkg-config's
//! `vramguard` (installed by `make install`), else from the linker's
//! default paths. [`sys`] has the raw declarations.
//!
//! Threads: [`Pool`] is `Send + Sync` (every C call on a pool may run
//! concurrently; destroying it, the one exception, needs ownership here).
//! [`Buffer`] is `Send + Sync`: writing takes `&mut self`, and concurrent
//! reads of one buffer are allowed by the C API.

use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::Mutex;

pub mod sys;

// ---------------------------------------------------------------- errors

/// What went wrong, one kind per `VG_E*` status of the C API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `VG_EINVAL`: an invalid argument (size 0, a bad alignment, ...).
    InvalidArgument,
    /// `VG_ENOMEM`: the request exceeds the pool's limit or the device budget.
    OutOfBudget,
    /// `VG_ENODRIVER`: the CUDA driver cannot be loaded or initialised.
    NoDriver,
    /// `VG_ENODEV`: no such device.
    NoDevice,
    /// `VG_EDRIVER`: the driver returned an error.
    Driver,
    /// `VG_ERANGE`: an offset or length outside the buffer.
    OutOfRange,
    /// `VG_ESETTING`: a malformed `VRAMGUARD_*` setting.
    Setting,
    /// `VG_ENOTFOUND`: not a live allocation of the pool.
    NotFound,
    /// `VG_EBADPTR`: the driver returned memory that failed verification.
    BadPointer,
    /// `VG_ESYS`: an operating-system call failed.
    System,
    /// `VG_EDENIED`: denied by policy.
    Denied,
    /// A status this crate does not know (a newer library).
    Other,
}

/// An error of the C API: its status code, with `vg_strerror`'s text as
/// the message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error {
    status: c_int,
}

impl Error {
    /// The error for a `VG_E*` status (not `VG_OK`).
    pub fn from_status(status: i32) -> Error {
        Error { status }
    }

    /// The C status code, e.g. `sys::VG_ENOMEM`.
    pub fn status(&self) -> i32 {
        self.status
    }

    pub fn kind(&self) -> ErrorKind {
        match self.status {
            sys::VG_EINVAL => ErrorKind::InvalidArgument,
            sys::VG_ENOMEM => ErrorKind::OutOfBudget,
            sys::VG_ENODRIVER => ErrorKind::NoDriver,
            sys::VG_ENODEV => ErrorKind::NoDevice,
            sys::VG_EDRIVER => ErrorKind::Driver,
            sys::VG_ERANGE => ErrorKind::OutOfRange,
            sys::VG_ESETTING => ErrorKind::Setting,
            sys::VG_ENOTFOUND => ErrorKind::NotFound,
            sys::VG_EBADPTR => ErrorKind::BadPointer,
            sys::VG_ESYS => ErrorKind::System,
            sys::VG_EDENIED => ErrorKind::Denied,
            _ => ErrorKind::Other,
        }
    }

    /// The status's name, e.g. `"VG_ENOMEM"` (`vg_err_name`).
    pub fn name(&self) -> &'static str {
        // SAFETY: vg_err_name never returns NULL and returns static text.
        static_str(unsafe { sys::vg_err_name(self.status) })
    }

    /// The status's description (`vg_strerror`).
    pub fn message(&self) -> &'static str {
        // SAFETY: vg_strerror never returns NULL and returns static text.
        static_str(unsafe { sys::vg_strerror(self.status) })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.name())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({}: {})", self.name(), self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The library's static, NUL-terminated strings (never NULL).
fn static_str(p: *const c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    // SAFETY: p points at a static NUL-terminated string of the library.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

fn check(status: c_int) -> Result<()> {
    if status == sys::VG_OK {
        Ok(())
    } else {
        Err(Error { status })
    }
}

// ------------------------------------------------------------ devices

/// `Ok` when the CUDA driver loads and at least one device exists. Fails
/// fast (well under 100 ms) and caches the answer: call it at start-up.
pub fn available() -> Result<()> {
    // SAFETY: no arguments; callable from any thread.
    check(unsafe { sys::vg_available() })
}

/// The number of devices this process sees.
pub fn device_count() -> Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: n is a valid out-parameter.
    check(unsafe { sys::vg_device_count(&mut n) })?;
    Ok(n.max(0) as usize)
}

// --------------------------------------------------------- pressure

/// A pool's use as a share of its limit: Low < 50% <= Medium < 80% <= High
/// < 95% <= Critical (falling back a level needs 2 points below the
/// boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryPressure {
    Low,
    Medium,
    High,
    Critical,
}

impl MemoryPressure {
    fn from_raw(level: sys::vg_pressure_t) -> Option<MemoryPressure> {
        match level {
            sys::VG_PRESSURE_LOW => Some(MemoryPressure::Low),
            sys::VG_PRESSURE_MEDIUM => Some(MemoryPressure::Medium),
            sys::VG_PRESSURE_HIGH => Some(MemoryPressure::High),
            sys::VG_PRESSURE_CRITICAL => Some(MemoryPressure::Critical),
            _ => None,
        }
    }

    fn raw(self) -> sys::vg_pressure_t {
        match self {
            MemoryPressure::Low => sys::VG_PRESSURE_LOW,
            MemoryPressure::Medium => sys::VG_PRESSURE_MEDIUM,
            MemoryPressure::High => sys::VG_PRESSURE_HIGH,
            MemoryPressure::Critical => sys::VG_PRESSURE_CRITICAL,
        }
    }

    /// `"low"`, `"medium"`, `"high"`, `"critical"` (`vg_pressure_name`).
    pub fn name(self) -> &'static str {
        // SAFETY: never NULL, static text.
        static_str(unsafe { sys::vg_pressure_name(self.raw()) })
    }
}

impl fmt::Display for MemoryPressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// -------------------------------------------------------------- pools

/// A pool's counters, as `vg_pool_stats` fills them: `live_bytes` (what
/// the live allocations asked for), `used` (held from the driver, cache
/// included), `peak`, `live_count`, `allocs`, `frees`, `refusals`,
/// `cached`, ...
pub type PoolStats = sys::vg_pool_stats_t;

/// Why a request would be refused now (`vg_pool_explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub requested: u64,
    /// The pool's limit.
    pub limit: u64,
    /// The pool's use when asked.
    pub used: u64,
    /// The driver's free memory on the device.
    pub driver_free: u64,
    /// The pool's newest live allocations, newest first.
    pub recent: Vec<RecentAllocation>,
    /// The library's one-line summary.
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentAllocation {
    pub ptr: u64,
    pub size: u64,
    pub tag: String,
}

type PressureFn = Box<dyn Fn(MemoryPressure, MemoryPressure) + Send + Sync + 'static>;

/// A budgeted pool of device memory on one device (`vg_pool_t`). Dropping
/// it frees everything still in it; buffers borrow it, so none can be left.
pub struct Pool {
    raw: NonNull<sys::vg_pool_t>,
    /// The registered callbacks, boxed twice so that each has a stable
    /// thin address to hand to C (the Vec may move its elements, the
    /// outer boxes do not move their contents). Dropped after the C pool
    /// (Drop below).
    #[allow(clippy::vec_box)]
    callbacks: Mutex<Vec<Box<PressureFn>>>,
}

// SAFETY: every vg_ call on a pool may run concurrently from any thread
// (vramguard.h, "Thread safety"), except vg_pool_destroy, which runs only
// in Drop, when no other reference to the pool exists. The callbacks are
// Send + Sync themselves.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

impl Pool {
    /// A pool on `device` (a CUDA ordinal) that may hold at most
    /// `limit_bytes` (> 0).
    pub fn new(device: i32, limit_bytes: u64) -> Result<Pool> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out-parameter.
        check(unsafe { sys::vg_pool_create(device, limit_bytes, &mut raw) })?;
        let raw = NonNull::new(raw).ok_or(Error { status: sys::VG_ESYS })?;
        Ok(Pool {
            raw,
            callbacks: Mutex::new(Vec::new()),
        })
    }

    /// `size` bytes of device memory, 256-byte aligned.
    pub fn alloc(&self, size: usize) -> Result<Buffer<'_>> {
        self.alloc_with(size, &AllocOptions::new())
    }

    /// `size` bytes of device memory made as `opts` says.
    ///
    /// ```
    /// use vramguard::{AllocOptions, Pool};
    /// # fn main() -> vramguard::Result<()> {
    /// let pool = Pool::new(0, 64 << 20)?;
    /// let opts = AllocOptions::new().align(4096).zeroed().tag("activations");
    /// let buf = pool.alloc_with(1 << 20, &opts)?;
    /// assert_eq!(buf.device_ptr() % 4096, 0);
    /// assert_eq!(buf.read_at(0, 4)?, [0, 0, 0, 0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_with(&self, size: usize, opts: &AllocOptions) -> Result<Buffer<'_>> {
        let c = opts.raw();
        let mut raw = ptr::null_mut();
        // SAFETY: the pool is live; c (and the tag it points at) outlives the
        // call; raw is a valid out-parameter.
        check(unsafe { sys::vg_buf_create(self.raw.as_ptr(), size, &c, &mut raw) })?;
        let raw = NonNull::new(raw).ok_or(Error { status: sys::VG_ESYS })?;
        Ok(Buffer {
            raw,
            _pool: PhantomData,
        })
    }

    pub fn stats(&self) -> Result<PoolStats> {
        let mut s = PoolStats::default();
        // SAFETY: live pool, valid out-parameter.
        check(unsafe { sys::vg_pool_stats(self.raw.as_ptr(), &mut s) })?;
        Ok(s)
    }

    /// Bytes the pool may still allocate (limit - use).
    pub fn available(&self) -> Result<u64> {
        let mut n = 0;
        // SAFETY: live pool, valid out-parameter.
        check(unsafe { sys::vg_pool_available(self.raw.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// The pool's pressure level now.
    pub fn pressure(&self) -> Result<MemoryPressure> {
        // SAFETY: live pool.
        let level = unsafe { sys::vg_pool_pressure(self.raw.as_ptr()) };
        MemoryPressure::from_raw(level).ok_or(Error {
            status: sys::VG_EINVAL,
        })
    }

    /// Gives cached memory back to the driver until at most `keep_bytes`
    /// stay cached; returns the bytes released.
    pub fn trim(&self, keep_bytes: u64) -> Result<u64> {
        let mut released = 0;
        // SAFETY: live pool, valid out-parameter.
        check(unsafe { sys::vg_pool_trim(self.raw.as_ptr(), keep_bytes, &mut released) })?;
        Ok(released)
    }

    /// Why a request of `requested` bytes would be refused now.
    pub fn explain(&self, requested: u64) -> Result<Refusal> {
        // SAFETY: vg_refusal_t is plain data; all-zero is a valid value.
        let mut why: sys::vg_refusal_t = unsafe { std::mem::zeroed() };
        let mut line = [0 as c_char; 512];
        // SAFETY: live pool; why and line are valid for their sizes.
        check(unsafe {
            sys::vg_pool_explain(
                self.raw.as_ptr(),
                requested,
                &mut why,
                line.as_mut_ptr(),
                line.len(),
            )
        })?;
        let n = (why.recent_count.max(0) as usize).min(sys::VG_EXPLAIN_RECENT);
        let recent = why.recent[..n]
            .iter()
            .map(|r| RecentAllocation {
                ptr: r.ptr,
                size: r.size,
                tag: c_chars(&r.tag),
            })
            .collect();
        Ok(Refusal {
            requested: why.requested,
            limit: why.limit,
            used: why.used,
            driver_free: why.driver_free,
            recent,
            summary: c_chars(&line),
        })
    }

    /// Calls `f(old, new)` on every change of the pool's level, on the
    /// thread whose allocation or free changed it (at most 8 callbacks a
    /// pool: `OutOfBudget` after that). `f` may use the pool. A panic in
    /// `f` aborts the process: it cannot unwind through the C library.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use vramguard::{MemoryPressure, Pool};
    /// # fn main() -> vramguard::Result<()> {
    /// let pool = Pool::new(0, 100 << 20)?;
    /// let highs = Arc::new(AtomicUsize::new(0));
    /// let h = highs.clone();
    /// pool.on_pressure(move |_old, new| {
    ///     if new >= MemoryPressure::High {
    ///         h.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// })?;
    /// let big = pool.alloc(90 << 20)?;
    /// assert_eq!(pool.pressure()?, MemoryPressure::High);
    /// assert_eq!(highs.load(Ordering::Relaxed), 1);
    /// drop(big);
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_pressure<F>(&self, f: F) -> Result<()>
    where
        F: Fn(MemoryPressure, MemoryPressure) + Send + Sync + 'static,
    {
        let boxed: Box<PressureFn> = Box::new(Box::new(f));
        let user = &*boxed as *const PressureFn as *mut c_void;
        let mut held = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        // Room first: once C holds the callback, keeping it cannot fail.
        held.reserve(1);
        // SAFETY: live pool; `user` points into `boxed`, which is kept (at
        // the same address) until the C pool is destroyed.
        check(unsafe { sys::vg_pool_on_pressure(self.raw.as_ptr(), Some(pressure_trampoline), user) })?;
        held.push(boxed);
        Ok(())
    }

    /// Frees an allocation handed out by [`Buffer::into_raw`].
    ///
    /// # Safety
    /// `ptr` must not belong to a live [`Buffer`]: that buffer's memory
    /// would be freed under it. A pointer that is not a live allocation of
    /// the pool is an `Err` (`NotFound`), not undefined behaviour.
    pub unsafe fn free_raw(&self, ptr: u64) -> Result<()> {
        check(sys::vg_pool_free(self.raw.as_ptr(), ptr))
    }

    /// The C pool, for calls this crate does not wrap. It stays owned by
    /// `self`: never pass it to `vg_pool_destroy`.
    pub fn as_raw(&self) -> *mut sys::vg_pool_t {
        self.raw.as_ptr()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no buffer (they borrow the pool) and no other
        // reference exists, so nothing races the destroy. The callbacks
        // are dropped after this, when C can no longer call them.
        unsafe { sys::vg_pool_destroy(self.raw.as_ptr(), ptr::null_mut()) };
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("raw", &self.raw).finish()
    }
}

unsafe extern "C" fn pressure_trampoline(
    _pool: *mut sys::vg_pool_t,
    old_level: sys::vg_pressure_t,
    new_level: sys::vg_pressure_t,
    user: *mut c_void,
) {
    // SAFETY: `user` is the PressureFn registered by on_pressure, alive
    // until the pool is destroyed.
    let f = &*(user as *const PressureFn);
    let (Some(old), Some(new)) = (
        MemoryPressure::from_raw(old_level),
        MemoryPressure::from_raw(new_level),
    ) else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| f(old, new))).is_err() {
        eprintln!("vramguard: a pressure callback panicked; aborting");
        std::process::abort();
    }
}

/// A NUL-terminated C string in a fixed array, as a String (lossy).
fn c_chars(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How an allocation is made: alignment, zero fill, a purpose tag.
#[derive(Clone, Debug, Default)]
pub struct AllocOptions {
    align: usize,
    zeroed: bool,
    tag: Option<CString>,
}

impl AllocOptions {
    pub fn new() -> AllocOptions {
        AllocOptions::default()
    }

    /// 0 for the driver's default (256), else a power of two >= 256.
    pub fn align(mut self, bytes: usize) -> AllocOptions {
        self.align = bytes;
        self
    }

    /// Fill the allocation with zero bytes.
    pub fn zeroed(mut self) -> AllocOptions {
        self.zeroed = true;
        self
    }

    /// A purpose tag shown by [`Pool::explain`] and the audit log (the
    /// library keeps the first 31 bytes; text after a NUL is dropped).
    pub fn tag(mut self, tag: &str) -> AllocOptions {
        let cut = tag.split('\0').next().unwrap_or("");
        self.tag = CString::new(cut).ok();
        self
    }

    fn raw(&self) -> sys::vg_alloc_opts_t {
        sys::vg_alloc_opts_t {
            align: self.align,
            flags: if self.zeroed { sys::VG_ALLOC_ZERO } else { 0 },
            tag: self.tag.as_ref().map_or(ptr::null(), |t| t.as_ptr()),
            priority: 0,
            evict: None,
            evict_user: ptr::null_mut(),
        }
    }
}

// ----------------------------------------------------------- buffers

/// One allocation of device memory from a [`Pool`] (`vg_buf_t`): freed on
/// drop, bounds-checked copies, never outlives its pool.
///
/// A buffer cannot outlive the pool it came from:
///
/// ```compile_fail,E0597
/// let buf;
/// {
///     let pool = vramguard::Pool::new(0, 1 << 20).unwrap();
///     buf = pool.alloc(4096).unwrap();
/// }
/// drop(buf);
/// ```
///
/// and it owns its memory, so it cannot be cloned:
///
/// ```compile_fail,E0599
/// let pool = vramguard::Pool::new(0, 1 << 20).unwrap();
/// let buf = pool.alloc(4096).unwrap();
/// let copy = buf.clone();
/// ```
pub struct Buffer<'pool> {
    raw: NonNull<sys::vg_buf_t>,
    _pool: PhantomData<&'pool Pool>,
}

// SAFETY: a vg_buf_t has one owner (this Buffer), which may move between
// threads. Shared references only read (vg_buf_read, ptr, size), which the
// C API allows concurrently on one buffer; writes need `&mut self`.
unsafe impl Send for Buffer<'_> {}
unsafe impl Sync for Buffer<'_> {}

impl Buffer<'_> {
    /// The size in bytes, as asked for.
    pub fn len(&self) -> usize {
        // SAFETY: live buffer.
        unsafe { sys::vg_buf_size(self.raw.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address (a `CUdeviceptr`), for kernels; not host memory.
    pub fn device_ptr(&self) -> u64 {
        // SAFETY: live buffer.
        unsafe { sys::vg_buf_ptr(self.raw.as_ptr()) }
    }

    /// Copies `data` to the device at byte `offset`. `OutOfRange` when it
    /// would pass the end (nothing is copied then); never panics.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        // SAFETY: live buffer; data is valid for data.len() bytes; the
        // library checks offset + len against the size (overflow included).
        check(unsafe { sys::vg_buf_write(self.raw.as_ptr(), offset, data.as_ptr().cast(), data.len()) })
    }

    /// Copies `out.len()` bytes from byte `offset` into `out`.
    /// `OutOfRange` as [`write_at`](Self::write_at).
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        // SAFETY: live buffer; out is valid for out.len() bytes.
        check(unsafe { sys::vg_buf_read(self.raw.as_ptr(), offset, out.as_mut_ptr().cast(), out.len()) })
    }

    /// `len` bytes from byte `offset`. Bounds are checked before any host
    /// memory is allocated, so a huge `len` is an `Err`, not an abort.
    pub fn read_at(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => {}
            _ => {
                return Err(Error {
                    status: sys::VG_ERANGE,
                })
            }
        }
        let mut out = vec![0u8; len];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }

    /// Hands the allocation over: the pool still holds it until
    /// [`Pool::free_raw`] (or the pool's drop) frees it.
    pub fn into_raw(self) -> u64 {
        let mut raw = self.raw.as_ptr();
        std::mem::forget(self);
        let mut p = 0;
        // SAFETY: raw is a live handle that nothing else owns now.
        unsafe { sys::vg_buf_release(&mut raw, &mut p) };
        p
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        let mut raw = self.raw.as_ptr();
        // SAFETY: the pool outlives the buffer (the borrow), the handle is
        // live and owned by self.
        unsafe { sys::vg_buf_destroy(&mut raw) };
    }
}

impl fmt::Debug for Buffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("device_ptr", &self.device_ptr())
            .field("len", &self.len())
            .finish()
    }
}
