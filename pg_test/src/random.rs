//! Randomness from the kernel, for temp dir names and auth tokens (no PRNG crate needed).

use std::io::Read;

/// `n` random bytes from /dev/urandom, as `2 * n` lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random number from /dev/urandom.
pub(crate) fn random_u64() -> u64 {
    u64::from_str_radix(&random_hex(8), 16).expect("hex")
}
