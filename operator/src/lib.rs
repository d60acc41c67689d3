//! The Cairn operator: reconciles `KVCluster` resources (`crd`) into StatefulSets of `cairn`
//! members. The spec is validated once (`validate`), desired objects are built by pure functions
//! (`build`), applied with server-side apply, and the cluster is observed through its etcd API.

pub mod build;
pub mod controller;
pub mod crd;
pub mod observe;
pub mod status;
pub mod validate;
