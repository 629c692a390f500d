pub mod checker;
pub mod cluster;
