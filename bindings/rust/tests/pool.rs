//! The safe layer over the test driver: Drop frees, bounds are errors and
//! never panics, errors carry the C status and text, pressure callbacks fire,
//! trim and explain, release, and a pool shared by threads.
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vramguard::{sys, AllocOptions, Buffer, ErrorKind, MemoryPressure, Pool};

const MIB: u64 = 1 << 20;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn pools_and_buffers_are_send_and_sync() {
    assert_send_sync::<Pool>();
    assert_send_sync::<Buffer<'static>>();
}

#[test]
fn the_test_driver_is_available() {
    assert!(vramguard::available().is_ok());
    assert_eq!(vramguard::device_count().unwrap(), 1);
}

#[test]
fn drop_frees_the_buffer() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    {
        let buf = pool.alloc(MIB as usize).unwrap();
        assert_eq!(buf.len(), MIB as usize);
        assert_ne!(buf.device_ptr(), 0);
        let s = pool.stats().unwrap();
        assert_eq!((s.live_count, s.live_bytes), (1, MIB));
    }
    let s = pool.stats().unwrap();
    assert_eq!((s.live_count, s.live_bytes, s.frees), (0, 0, 1));
}

#[test]
fn a_buffer_moved_to_another_thread_is_freed_there() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    std::thread::scope(|s| {
        let mut buf = pool.alloc(4096).unwrap();
        s.spawn(move || {
            buf.write_at(0, b"moved").unwrap();
            assert_eq!(buf.read_at(0, 5).unwrap(), b"moved");
        });
    });
    assert_eq!(pool.stats().unwrap().live_count, 0);
}

#[test]
fn out_of_bounds_is_an_err_and_copies_nothing() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    let mut buf = pool.alloc(4096).unwrap();
    buf.write_at(0, &[1u8; 4096]).unwrap();
    let range = |r: vramguard::Result<()>| r.unwrap_err().kind();
    assert_eq!(range(buf.write_at(4095, &[2, 2])), ErrorKind::OutOfRange);
    assert_eq!(range(buf.write_at(4097, &[])), ErrorKind::OutOfRange);
    assert_eq!(range(buf.write_at(usize::MAX, &[2])), ErrorKind::OutOfRange);
    assert_eq!(buf.read_at(4095, 2).unwrap_err().kind(), ErrorKind::OutOfRange);
    // a huge length is refused before any host memory is allocated
    assert_eq!(
        buf.read_at(0, usize::MAX).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        buf.read_at(usize::MAX, 2).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    let mut two = [0u8; 2];
    assert_eq!(
        buf.read_into(4095, &mut two).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(buf.read_at(0, 4096).unwrap(), vec![1u8; 4096]); // nothing was written
    buf.write_at(4094, &[2, 2]).unwrap(); // the last two bytes are in bounds
    assert_eq!(buf.read_at(4093, 3).unwrap(), [1, 2, 2]);
    assert_eq!(buf.read_at(4096, 0).unwrap(), Vec::<u8>::new());
}

#[test]
fn errors_carry_the_status_and_the_library_text() {
    let pool = Pool::new(0, MIB).unwrap();
    let e = pool.alloc(2 * MIB as usize).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfBudget);
    assert_eq!(e.status(), sys::VG_ENOMEM);
    assert_eq!(e.name(), "VG_ENOMEM");
    assert_eq!(e.message(), "request exceeds the memory budget");
    assert_eq!(e.to_string(), "request exceeds the memory budget (VG_ENOMEM)");
    assert!(e.source().is_none());
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
    assert!(boxed.to_string().contains("VG_ENOMEM"));
    assert_eq!(Pool::new(0, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(Pool::new(5, MIB).unwrap_err().kind(), ErrorKind::NoDevice);
    assert_eq!(pool.alloc(0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(vramguard::Error::from_status(999).kind(), ErrorKind::Other);
}

#[test]
fn alignment_zeroing_and_tags_reach_the_library() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    let buf = pool
        .alloc_with(
            (MIB + 1) as usize,
            &AllocOptions::new().align(65536).zeroed().tag("weights"),
        )
        .unwrap();
    assert_eq!(buf.device_ptr() % 65536, 0);
    assert!(buf.read_at(0, buf.len()).unwrap().iter().all(|&b| b == 0));
    let why = pool.explain(128 * MIB).unwrap();
    assert_eq!(why.recent[0].tag, "weights");
    assert_eq!(why.recent[0].size, MIB + 1);
    let bad = pool
        .alloc_with(4096, &AllocOptions::new().align(100))
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn zeroed_reuse_shows_no_stale_bytes() {
    // Without the flag a reused cached block shows what was left in it;
    // with it, never.
    let pool = Pool::new(0, 64 * MIB).unwrap();
    let fill = |zeroed: bool| -> (usize, Vec<u64>) {
        let opts = if zeroed {
            AllocOptions::new().zeroed()
        } else {
            AllocOptions::new()
        };
        let bufs: Vec<Buffer> = (0..600).map(|_| pool.alloc_with(4096, &opts).unwrap()).collect();
        let mut stale = 0;
        let mut ptrs = Vec::new();
        for mut b in bufs {
            stale += (b.read_at(0, 1).unwrap()[0] == 0xab) as usize;
            if zeroed {
                assert!(b.read_at(0, 4096).unwrap().iter().all(|&x| x == 0));
            }
            b.write_at(0, &[0xab; 4096]).unwrap();
            ptrs.push(b.device_ptr());
        }
        (stale, ptrs)
    };
    let (_, dirty) = fill(false);
    let (stale_plain, _) = fill(false);
    assert!(stale_plain > 0, "plain allocations reuse dirty blocks");
    let (stale_zeroed, zeroed) = fill(true);
    assert_eq!(stale_zeroed, 0);
    assert!(
        zeroed.iter().any(|p| dirty.contains(p)),
        "some zeroed blocks were reused"
    );
}

#[test]
fn pressure_callbacks_follow_the_level() {
    let pool = Pool::new(0, 100 * MIB).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    pool.on_pressure(move |old, new| s.lock().unwrap().push((old, new)))
        .unwrap();
    assert_eq!(pool.pressure().unwrap(), MemoryPressure::Low);
    {
        let _a = pool.alloc(60 * MIB as usize).unwrap();
        assert_eq!(pool.pressure().unwrap(), MemoryPressure::Medium);
        let _b = pool.alloc(25 * MIB as usize).unwrap();
        assert_eq!(pool.pressure().unwrap(), MemoryPressure::High);
        let _c = pool.alloc(11 * MIB as usize).unwrap();
        assert_eq!(pool.pressure().unwrap(), MemoryPressure::Critical);
    }
    assert_eq!(pool.pressure().unwrap(), MemoryPressure::Low);
    use MemoryPressure::*;
    let seen = seen.lock().unwrap();
    assert_eq!(seen[..3], [(Low, Medium), (Medium, High), (High, Critical)]);
    assert_eq!(seen.last().unwrap().1, Low);
    assert_eq!(Critical.to_string(), "critical");
}

#[test]
fn a_ninth_callback_is_refused_and_dropped() {
    let pool = Pool::new(0, 100 * MIB).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let c = calls.clone();
        pool.on_pressure(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    let c = calls.clone();
    let e = pool.on_pressure(move |_, _| {
        c.fetch_add(1000, Ordering::Relaxed);
    });
    assert_eq!(e.unwrap_err().kind(), ErrorKind::OutOfBudget);
    assert_eq!(Arc::strong_count(&calls), 9); // the refused closure is gone
    let _big = pool.alloc(60 * MIB as usize).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 8);
    drop(_big);
    drop(pool);
    assert_eq!(Arc::strong_count(&calls), 1); // dropping the pool drops them
}

#[test]
fn trim_gives_cached_chunks_back() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    let bufs: Vec<Buffer> = (0..64).map(|_| pool.alloc(4096).unwrap()).collect();
    drop(bufs);
    let cached = pool.stats().unwrap().cached;
    assert!(cached > 0);
    assert_eq!(pool.trim(0).unwrap(), cached);
    let s = pool.stats().unwrap();
    assert_eq!((s.cached, s.used), (0, 0));
    assert_eq!(pool.available().unwrap(), 64 * MIB);
}

#[test]
fn explain_reports_the_limit_and_use() {
    let pool = Pool::new(0, MIB).unwrap();
    let _b = pool
        .alloc_with(512 * 1024, &AllocOptions::new().tag("kv\0cache"))
        .unwrap();
    let why = pool.explain(2 * MIB).unwrap();
    assert_eq!((why.requested, why.limit), (2 * MIB, MIB));
    assert!(why.used >= 512 * 1024);
    assert_eq!(why.recent.len(), 1);
    assert_eq!(why.recent[0].tag, "kv"); // cut at the NUL
    assert!(!why.summary.is_empty());
}

#[test]
fn into_raw_hands_the_allocation_over() {
    let pool = Pool::new(0, 64 * MIB).unwrap();
    let buf = pool.alloc(4096).unwrap();
    let p = buf.device_ptr();
    assert_eq!(buf.into_raw(), p);
    assert_eq!(pool.stats().unwrap().live_count, 1); // handed over, not freed
                                                     // SAFETY: p belongs to no Buffer any more.
    unsafe {
        pool.free_raw(p).unwrap();
        assert_eq!(pool.free_raw(p).unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert_eq!(pool.stats().unwrap().live_count, 0);
}

#[test]
fn one_pool_serves_many_threads_within_its_budget() {
    let pool = Pool::new(0, 16 * MIB).unwrap();
    let refused = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (pool, refused) = (&pool, &refused);
            s.spawn(move || {
                for i in 0..200usize {
                    match pool.alloc((1 + (t * 7 + i) % 16) * 256 * 1024) {
                        Ok(mut b) => b.write_at(0, &i.to_ne_bytes()).unwrap(),
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::OutOfBudget);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let s = pool.stats().unwrap();
    assert_eq!(s.live_count, 0);
    assert!(s.peak <= 16 * MIB);
    assert!(s.refusals >= refused.load(Ordering::Relaxed) as u64);
}
