//! The Cairn operator: reconciles `KVCluster` resources (`crd`) into StatefulSets of `cairn`
//! members. The spec is validated once (`validate`), desired objects are built by pure functions
//! (`build`), applied with server-side apply, and the cluster is observed through its etcd API
//! (`observe`); each pass is planned purely (`plan`), membership following the spec one step
//! at a time (`membership`), pods rolled onto a new template one at a time (`upgrade`), and a
//! plaintext cluster's peers moved to TLS (`peer_move`).

pub mod access;
pub mod backup;
pub mod build;
pub mod certificates;
pub mod change;
pub mod controller;
pub mod crd;
pub mod deletion;
pub mod election;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod observe;
pub mod peer_move;
pub mod plan;
pub mod quorum;
pub mod restore;
pub mod status;
pub mod storage;
pub mod supplied_tls;
pub mod upgrade;
pub mod validate;
