//! Cairn's robustness suite: real `cairn` clusters under kill, pause and partition faults, every
//! client operation recorded and the history checked — linearizability against etcd's model, no
//! acknowledged write lost, serializable reads from some prefix of the committed history, watches
//! ordered, atomic, complete and resumable.

pub mod client;
pub mod cluster;
pub mod committed;
pub mod disk;
pub mod history;
pub mod linearizability;
pub mod model;
pub mod nemesis;
pub mod run;
pub mod traffic;
pub mod watching;
