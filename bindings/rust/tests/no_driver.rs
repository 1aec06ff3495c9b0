//! Without a driver every call fails fast with NoDriver. Its own test binary
//! (its own process): the library caches the driver's absence.
use vramguard::{ErrorKind, Pool};

#[test]
fn a_missing_driver_is_no_driver_everywhere() {
    std::env::set_var("VRAMGUARD_LIBCUDA", "/nonexistent/libcuda.so.1");
    let t = std::time::Instant::now();
    let e = vramguard::available().expect_err("no driver at that path");
    assert!(t.elapsed().as_millis() < 100, "fails fast");
    assert_eq!(e.kind(), ErrorKind::NoDriver);
    assert_eq!(e.name(), "VG_ENODRIVER");
    assert_eq!(Pool::new(0, 1 << 20).unwrap_err().kind(), ErrorKind::NoDriver);
}
