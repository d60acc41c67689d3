//! The sandbox: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on
//! loopback, for Cairn's end-to-end tests and quick start. `sandbox` (src/bin) runs it in the
//! background; `sandbox::Sandbox` is the handle tests and the command share.

pub mod controlplane;
pub mod crds;
pub mod dns;
pub mod faults;
pub mod kubelet;
pub mod netns;
pub mod pki;
pub mod podexec;
pub mod sandbox;
pub mod testkit;
