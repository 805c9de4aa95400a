//! Integration with the workstation's system files.
pub mod cli;
pub mod doctor;
pub mod hosts;
pub mod install;
pub mod journal;
pub mod notify;
pub mod resolver;
