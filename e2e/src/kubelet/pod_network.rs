//! Pods' own source addresses, when the sandbox runs in a private network namespace: every pod's
//! processes run with a group of their own, and one nftables source-NAT rule per pod gives the
//! connections they open the pod's address, as on a real pod network. Peers then see pod IPs, and
//! fault tests can cut the link between two pods by address (`crate::faults`).
//!
//! Without this, every connection between pods would come from 127.0.0.1, the kernel's choice for
//! loopback destinations, and no rule could tell one pod's traffic from another's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::netns::{NetnsError, nft, replace_table};

const TABLE: &str = "cairn_sandbox_pods";
/// Far above the groups any system defines.
const GROUP_BASE: u32 = 2_000_000_000;

/// The group a pod's processes run with: derived from its address, so `sandbox exec` and probes
/// that read the same container spec agree with the kubelet.
pub fn group_of(ip: Ipv4Addr) -> u32 {
    GROUP_BASE + (u32::from(ip) & 0x00ff_ffff)
}

/// The table that rewrites each pod's connections to come from its address. Only connections
/// that do not already come from it are rewritten (a program may bind its address itself).
pub fn ruleset(pods: &BTreeMap<u32, Ipv4Addr>) -> String {
    let mut body =
        String::from("  chain sources {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    for (group, ip) in pods {
        body.push_str(&format!("    meta skgid {group} ip saddr != {ip} snat to {ip}\n"));
    }
    body.push_str("  }\n");
    replace_table(TABLE, &body)
}

/// The rules for the pods running now.
pub struct PodSources {
    pods: Mutex<BTreeMap<u32, Ipv4Addr>>,
}

impl PodSources {
    /// Loads the (empty) table, so that a sandbox that cannot do this fails at start, not later.
    pub fn install() -> Result<PodSources, NetnsError> {
        let pods = BTreeMap::new();
        nft(&ruleset(&pods))?;
        Ok(PodSources {
            pods: Mutex::new(pods),
        })
    }

    /// Gives `ip`'s group its rule; returns the group.
    pub fn add(&self, ip: Ipv4Addr) -> Result<u32, NetnsError> {
        let group = group_of(ip);
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.insert(group, ip);
        nft(&ruleset(&pods))?;
        Ok(group)
    }

    pub fn remove(&self, ip: Ipv4Addr) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods.remove(&group_of(ip)).is_some()
            && let Err(error) = nft(&ruleset(&pods))
        {
            tracing::warn!(%ip, %error, "cannot drop the pod's source rule");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pod_group_is_rewritten_to_its_own_address() {
        let a = Ipv4Addr::new(127, 12, 0, 2);
        let b = Ipv4Addr::new(127, 12, 1, 7);
        assert_eq!(group_of(a), 2_000_000_000 + 0x0c_0002);
        assert_ne!(group_of(a), group_of(b));
        let rules = ruleset(&BTreeMap::from([(group_of(a), a), (group_of(b), b)]));
        assert!(rules.starts_with("table ip cairn_sandbox_pods\ndelete table ip cairn_sandbox_pods\n"));
        assert!(rules.contains(&format!(
            "meta skgid {} ip saddr != 127.12.0.2 snat to 127.12.0.2\n",
            group_of(a)
        )));
        assert!(rules.contains(&format!(
            "meta skgid {} ip saddr != 127.12.1.7 snat to 127.12.1.7\n",
            group_of(b)
        )));
    }
}
