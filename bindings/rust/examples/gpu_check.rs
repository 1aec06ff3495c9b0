//! The Rust binding on a real GPU, under a budget: fail-fast start-up, a
//! pool's limit and the device budget (`VRAMGUARD_BUDGET`, set by
//! tests/gpu/bindings.sh) refusing with `OutOfBudget`, a 64 MiB round trip
//! through device memory, bounds errors, Drop giving everything back, and
//! pressure callbacks. Prints one `RESULT|check|PASS or FAIL|detail` row per
//! check and exits 1 when any failed.
//!
//! ```sh
//! VRAMGUARD_BUDGET=2GiB cargo run --example gpu_check
//! ```
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vramguard::{AllocOptions, Buffer, ErrorKind, MemoryPressure, Pool};

const MIB: u64 = 1 << 20;

struct Rows {
    failures: usize,
}

impl Rows {
    fn row(&mut self, check: &str, pass: bool, detail: String) {
        self.failures += !pass as usize;
        let detail = detail.replace(['|', '\n'], "/");
        println!("RESULT|{check}|{}|{detail}", if pass { "PASS" } else { "FAIL" });
    }
}

fn kind<T>(r: &vramguard::Result<T>) -> String {
    match r {
        Ok(_) => "granted".into(),
        Err(e) => e.name().into(),
    }
}

fn pool_limit(rows: &mut Rows) -> vramguard::Result<()> {
    let pool = Pool::new(0, 256 * MIB)?;
    let _a = pool.alloc((200 * MIB) as usize)?;
    let b = pool.alloc((100 * MIB) as usize);
    let used = pool.stats()?.used;
    let refused = matches!(&b, Err(e) if e.kind() == ErrorKind::OutOfBudget);
    rows.row(
        "rust_pool_limit",
        refused && used <= 256 * MIB,
        format!(
            "200 MiB held, +100 MiB in a 256 MiB pool: {}; used {} MiB",
            kind(&b),
            used / MIB
        ),
    );
    Ok(())
}

fn device_budget(rows: &mut Rows) -> vramguard::Result<()> {
    let mut d = vramguard::sys::vg_device_stats_t::default();
    // SAFETY: d is a valid out-parameter.
    let rc = unsafe { vramguard::sys::vg_device_stats(0, &mut d) };
    if rc != 0 || d.budget == u64::MAX {
        rows.row(
            "rust_device_budget",
            false,
            "no VRAMGUARD_BUDGET in effect (run through bindings.sh)".into(),
        );
        return Ok(());
    }
    // The pool's own limit is 4x the budget: only the device budget can
    // refuse the second request.
    let pool = Pool::new(0, 4 * d.budget)?;
    let first = pool.alloc((d.budget / 4) as usize);
    let second = pool.alloc(d.budget as usize);
    let refused = matches!(&second, Err(e) if e.kind() == ErrorKind::OutOfBudget);
    rows.row(
        "rust_device_budget",
        first.is_ok() && refused,
        format!(
            "budget {} MiB: a quarter {}, then the whole budget more: {}",
            d.budget / MIB,
            kind(&first),
            kind(&second)
        ),
    );
    Ok(())
}

fn round_trip(rows: &mut Rows) -> vramguard::Result<()> {
    let pool = Pool::new(0, 256 * MIB)?;
    let mut buf = pool.alloc_with((64 * MIB) as usize, &AllocOptions::new().align(4096))?;
    let data: Vec<u8> = (0..buf.len())
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    buf.write_at(0, &data)?;
    let back = buf.read_at(0, buf.len())?;
    let past = buf.write_at(buf.len() - 2, &[0; 4]);
    let ok = back == data
        && buf.device_ptr() % 4096 == 0
        && matches!(&past, Err(e) if e.kind() == ErrorKind::OutOfRange);
    rows.row(
        "rust_round_trip",
        ok,
        format!(
            "64 MiB written and read back {}; 4 bytes at len-2: {}",
            if back == data { "equal" } else { "DIFFERENT" },
            kind(&past)
        ),
    );
    Ok(())
}

fn drop_frees(rows: &mut Rows) -> vramguard::Result<()> {
    let pool = Pool::new(0, 256 * MIB)?;
    {
        let held: Vec<Buffer> = (0..32)
            .map(|i| pool.alloc(if i % 2 == 1 { 4096 } else { (3 * MIB) as usize }))
            .collect::<vramguard::Result<_>>()?;
        drop(held);
    }
    let live = pool.stats()?.live_bytes;
    pool.trim(0)?;
    let used = pool.stats()?.used;
    rows.row(
        "rust_drop",
        live == 0 && used == 0,
        format!("after the drop: live_bytes {live}, used after trim {used}"),
    );
    Ok(())
}

fn pressure(rows: &mut Rows) -> vramguard::Result<()> {
    let pool = Pool::new(0, 100 * MIB)?;
    let highs = Arc::new(AtomicUsize::new(0));
    let h = highs.clone();
    pool.on_pressure(move |_, now| {
        if now == MemoryPressure::High {
            h.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    let _m = pool.alloc((90 * MIB) as usize)?;
    let level = pool.pressure()?;
    let n = highs.load(Ordering::Relaxed);
    rows.row(
        "rust_pressure",
        level == MemoryPressure::High && n == 1,
        format!("90 MiB of 100: level {level}, callbacks at high: {n}"),
    );
    Ok(())
}

fn main() {
    let mut rows = Rows { failures: 0 };
    if let Err(e) = vramguard::available() {
        rows.row("rust_available", false, e.to_string());
        std::process::exit(1);
    }
    rows.row("rust_available", true, "vramguard::available()".into());
    let checks: [fn(&mut Rows) -> vramguard::Result<()>; 5] =
        [pool_limit, device_budget, round_trip, drop_frees, pressure];
    for check in checks {
        if let Err(e) = check(&mut rows) {
            rows.row("rust_error", false, format!("unexpected: {e}"));
        }
    }
    std::process::exit(if rows.failures == 0 { 0 } else { 1 });
}
