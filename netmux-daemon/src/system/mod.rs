//! Integration with the workstation's system files.
pub mod hosts;
pub mod resolver;
