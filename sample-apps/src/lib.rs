//! Shared pieces of the sample apps that tests need too: the deterministic
//! byte [`pattern`] that `nx-echo` serves and the streaming [`StreamSum`]
//! checksum that `nx-echo sink` reports.
//!
//! Both are cheap enough in debug builds to check 100 MiB transfers: they
//! work on 8-byte words, not single bytes.

pub mod pattern;
pub mod sum;

pub use pattern::Pattern;
pub use sum::{StreamSum, Summary};
