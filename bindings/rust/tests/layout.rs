//! The hand-written `sys` module against `include/vramguard.h`: this test
//! writes a C file of `_Static_assert`s holding what Rust computes (each
//! mirrored struct's size and alignment, each field's offset and size, each
//! constant's value) and has the C compiler check them against the header.
//! A struct that drifts from the header fails to compile, and the message
//! names the struct or field. The field lists are written once, below; a
//! destructuring pattern per struct makes the compiler reject a list that
//! misses a Rust field.
//!
//! env: CC (cc), VRAMGUARD_INCLUDE_DIR (the repository's include/)
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use vramguard::sys::*;

/// The size of a field, from a projection (no value is ever made).
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! check_struct {
    ($out:expr, $t:ident { $($f:ident),* $(,)? }) => {{
        #[allow(dead_code, unused_variables)]
        fn every_field_is_listed(v: $t) {
            let $t { $($f: _),* } = v;
        }
        let c = stringify!($t);
        writeln!($out, "_Static_assert(sizeof({c}) == {}, \"sizeof({c}) differs from Rust's {}\");",
                 size_of::<$t>(), size_of::<$t>()).unwrap();
        writeln!($out, "_Static_assert(_Alignof({c}) == {}, \"_Alignof({c}) differs from Rust's\");",
                 align_of::<$t>()).unwrap();
        $(
            let f = stringify!($f);
            writeln!($out, "_Static_assert(offsetof({c}, {f}) == {}, \"{c}.{f}: offset differs from Rust's {}\");",
                     offset_of!($t, $f), offset_of!($t, $f)).unwrap();
            writeln!($out, "_Static_assert(sizeof((({c} *)0)->{f}) == {}, \"{c}.{f}: size differs from Rust's\");",
                     field_size::<$t, _>(|v: &$t| &v.$f)).unwrap();
        )*
    }};
}

macro_rules! check_consts {
    ($out:expr, $($name:ident),* $(,)?) => {{
        $(
            writeln!($out, "_Static_assert({} == {}, \"{}: value differs from Rust's\");",
                     stringify!($name), $name as i64, stringify!($name)).unwrap();
        )*
    }};
}

/// What Rust believes about the header, as C assertions.
#[rustfmt::skip] // one struct's field list a line, as a table
fn rust_view() -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"vramguard.h\"\n");
    // vg_refusal_t's recent[] is an anonymous struct in C: checked through
    // the array's element.
    writeln!(c, "typedef __typeof__(((vg_refusal_t *)0)->recent[0]) vg_refusal_recent_t;").unwrap();
    check_struct!(c, vg_device_info_t { ordinal, name, uuid, cc_major, cc_minor, sm_count, total_bytes, free_bytes });
    check_struct!(c, vg_leak_report_t { count, bytes });
    check_struct!(c, vg_alloc_opts_t { align, flags, tag, priority, evict, evict_user });
    check_struct!(c, vg_pool_stats_t {
        limit, used, peak, live_count, allocs, frees, refusals, count_by_kind, bytes_by_kind,
        cached, live_bytes, hits, misses, trims, evictions, reuse_syncs, fragmentation,
    });
    check_struct!(c, vg_refusal_recent_t { ptr, size, tag });
    check_struct!(c, vg_refusal_t { requested, limit, used, driver_free, recent_count, recent });
    check_struct!(c, vg_device_stats_t {
        budget, used, peak, refusals, overhead, live_count, count_by_kind, bytes_by_kind,
    });
    check_struct!(c, vg_ptr_info_t { cls, base, offset, size, kind, device, pattern });
    check_struct!(c, vg_verify_report_t { checked, skipped, bad, shown, ptrs });
    writeln!(c, "_Static_assert(sizeof(vg_devptr_t) == {}, \"vg_devptr_t\");", size_of::<vg_devptr_t>()).unwrap();
    writeln!(c, "_Static_assert(sizeof(vg_pressure_t) == {}, \"vg_pressure_t\");", size_of::<vg_pressure_t>()).unwrap();
    writeln!(c, "_Static_assert(sizeof(vg_kind_t) == {}, \"vg_kind_t\");", size_of::<vg_kind_t>()).unwrap();
    writeln!(c, "_Static_assert(sizeof(vg_ptr_class_t) == {}, \"vg_ptr_class_t\");", size_of::<vg_ptr_class_t>()).unwrap();
    check_consts!(c, VG_OK, VG_EINVAL, VG_ENOMEM, VG_ENODRIVER, VG_ENODEV, VG_EDRIVER, VG_ERANGE,
                  VG_ESETTING, VG_ENOTFOUND, VG_EBADPTR, VG_ESYS, VG_EDENIED);
    check_consts!(c, VG_KIND_PLAIN, VG_KIND_PITCH, VG_KIND_MANAGED, VG_KIND_ASYNC, VG_KIND_POOL,
                  VG_KIND_VMM, VG_KIND_ARRAY, VG_KIND_API, VG_KIND_COUNT);
    check_consts!(c, VG_PRESSURE_LOW, VG_PRESSURE_MEDIUM, VG_PRESSURE_HIGH, VG_PRESSURE_CRITICAL);
    check_consts!(c, VG_ALLOC_ZERO, VG_ALLOC_EVICTABLE, VG_EXPLAIN_RECENT, VG_VERIFY_SHOW);
    check_consts!(c, VG_PTR_LIVE, VG_PTR_INTERIOR, VG_PTR_FREED, VG_PTR_FOREIGN, VG_PTR_HOST,
                  VG_PTR_FAKE, VG_PTR_CLASS_COUNT);
    // The last status of the list: a status added to the header must be
    // added here (and to ErrorKind) too.
    writeln!(c, "#define VG_COUNT_(name, value, msg) +1\n_Static_assert(0 VG_ERRORS(VG_COUNT_) == {}, \
                 \"the header has a status code sys.rs lacks\");", VG_EDENIED + 1).unwrap();
    c
}

/// Compiles `source` against the header; Err(compiler output) on failure.
fn compile(name: &str, source: &str) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("{name}.c"));
    std::fs::write(&file, source).expect("write the C file");
    let include = std::env::var("VRAMGUARD_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../include"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(&include)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler '{cc}': {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_mirrored_struct_and_constant_matches_the_header() {
    if let Err(msg) = compile("layout", &rust_view()) {
        panic!("sys.rs disagrees with vramguard.h:\n{msg}");
    }
}

#[test]
fn a_wrong_size_or_offset_is_caught() {
    // The check itself must be able to fail: the same assertions with one
    // number off must not compile, and the message must name the field.
    let good = rust_view();
    let real = format!(
        "offsetof(vg_pool_stats_t, live_bytes) == {}",
        offset_of!(vg_pool_stats_t, live_bytes)
    );
    let off = format!(
        "offsetof(vg_pool_stats_t, live_bytes) == {}",
        offset_of!(vg_pool_stats_t, live_bytes) + 8
    );
    assert!(good.contains(&real), "the view has the live_bytes offset");
    let err =
        compile("layout_wrong", &good.replace(&real, &off)).expect_err("an off-by-8 offset must not compile");
    assert!(
        err.contains("vg_pool_stats_t.live_bytes"),
        "the message names the field: {err}"
    );

    let size = format!("sizeof(vg_refusal_t) == {}", size_of::<vg_refusal_t>());
    let wrong = format!("sizeof(vg_refusal_t) == {}", size_of::<vg_refusal_t>() - 8);
    let err = compile("layout_wrong_size", &good.replace(&size, &wrong))
        .expect_err("a wrong size must not compile");
    assert!(err.contains("sizeof(vg_refusal_t)"), "{err}");
}
