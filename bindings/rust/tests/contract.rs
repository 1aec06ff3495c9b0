//! The crate's contract, as a user writes it (README and the crate docs).

#[test]
#[rustfmt::skip] // kept exactly as the README writes it
fn the_contract_runs_as_written() -> Result<(), vramguard::Error> {
    let pool = vramguard::Pool::new(0, 64 << 20)?;
    let mut buf = pool.alloc(4096)?;              // Buffer: Drop frees
    buf.write_at(0, &[1, 2, 3])?;
    assert!(buf.write_at(4095, &[1, 2]).is_err()); // out of bounds is an Err, not a panic
    assert_eq!(pool.pressure()?, vramguard::MemoryPressure::Low);
    Ok(())
}
