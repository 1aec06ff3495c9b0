/work/main//tmp/blockdbg/rust/debug/deps/vramguard-e1c779052f014980.d: src/lib.rs src/sys.rs

/work/main//tmp/blockdbg/rust/debug/deps/vramguard-e1c779052f014980: src/lib.rs src/sys.rs

src/lib.rs:
src/sys.rs:
