//! Network faults between pods, for tests whose sandbox runs in a private network namespace
//! (`Sandbox::private_network`): cut the link between two pod addresses, and heal it. A cut drops
//! packets silently in both directions, so connections time out as in a real partition, while
//! each pod still reaches every other pod, the API server and cluster DNS.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::netns::{NetnsError, nft, replace_table};

const TABLE: &str = "cairn_sandbox_faults";

/// The table that drops traffic between each cut pair. It filters after source NAT (priority
/// srcnat is 100), where packets carry the pods' own addresses (`kubelet::pod_network`).
pub fn ruleset(cuts: &BTreeSet<(Ipv4Addr, Ipv4Addr)>) -> String {
    let mut body =
        String::from("  chain links {\n    type filter hook postrouting priority 200; policy accept;\n");
    for (a, b) in cuts {
        body.push_str(&format!("    ip saddr {a} ip daddr {b} drop\n"));
        body.push_str(&format!("    ip saddr {b} ip daddr {a} drop\n"));
    }
    body.push_str("  }\n");
    replace_table(TABLE, &body)
}

/// The links cut so far; every change reloads the whole table in one transaction.
pub struct Links {
    cuts: Mutex<BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
}

impl Links {
    /// Starts with every link whole. Fails outside a private network namespace.
    pub fn new() -> Result<Links, NetnsError> {
        let cuts = BTreeSet::new();
        nft(&ruleset(&cuts))?;
        Ok(Links {
            cuts: Mutex::new(cuts),
        })
    }

    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), NetnsError> {
        self.change(|cuts| {
            cuts.insert(pair(a, b));
        })
    }

    pub fn heal(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), NetnsError> {
        self.change(|cuts| {
            cuts.remove(&pair(a, b));
        })
    }

    pub fn heal_all(&self) -> Result<(), NetnsError> {
        self.change(BTreeSet::clear)
    }

    fn change(&self, edit: impl FnOnce(&mut BTreeSet<(Ipv4Addr, Ipv4Addr)>)) -> Result<(), NetnsError> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = cuts.clone();
        edit(&mut next);
        nft(&ruleset(&next))?;
        *cuts = next;
        Ok(())
    }
}

fn pair(a: Ipv4Addr, b: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    (a.min(b), a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_both_directions_and_is_one_pair_whichever_way_it_is_named() {
        let a = Ipv4Addr::new(127, 13, 0, 2);
        let b = Ipv4Addr::new(127, 13, 0, 3);
        assert_eq!(pair(b, a), pair(a, b));
        let rules = ruleset(&BTreeSet::from([pair(b, a)]));
        assert!(rules.contains("ip saddr 127.13.0.2 ip daddr 127.13.0.3 drop\n"));
        assert!(rules.contains("ip saddr 127.13.0.3 ip daddr 127.13.0.2 drop\n"));
        assert!(rules.contains("type filter hook postrouting priority 200;"));
        assert!(!ruleset(&BTreeSet::new()).contains("drop"));
    }
}
