/work/main//tmp/blockdbg/rust/debug/deps/vramguard-6f49839da509e8cc.d: src/lib.rs src/sys.rs

/work/main//tmp/blockdbg/rust/debug/deps/libvramguard-6f49839da509e8cc.rlib: src/lib.rs src/sys.rs

/work/main//tmp/blockdbg/rust/debug/deps/libvramguard-6f49839da509e8cc.rmeta: src/lib.rs src/sys.rs

src/lib.rs:
src/sys.rs:
