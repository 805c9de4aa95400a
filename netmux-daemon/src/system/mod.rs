//! Integration with the workstation's system files.
pub mod hosts;
pub mod journal;
pub mod notify;
pub mod resolver;
