//! Storage edits on a running cluster, decided purely: a StatefulSet's claim template cannot
//! change, so the StatefulSet keeps the storage it was made with; a larger `storage.size` grows
//! the members' claims in place (where the storage class allows it, which the API decides); any
//! other storage edit is refused with the field and the reason, and everything else goes on.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::validate::StoragePlan;

/// One member claim's size, as requested and as provisioned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimSize {
    pub requested: Option<u64>,
    pub capacity: Option<u64>,
}

/// What to do about storage this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageDecision {
    /// What the StatefulSet is built with.
    pub template: StoragePlan,
    /// Claims to grow, to this many bytes.
    pub grow: Vec<(String, u64)>,
    /// A storage edit that cannot be made, and why.
    pub refused: Option<String>,
    /// Claims grown but not yet provisioned at their new size.
    pub growing: Vec<String>,
}

/// The storage a StatefulSet's members were made with; None when its claim template cannot be
/// read.
pub fn of_statefulset(set: &StatefulSet) -> Option<StoragePlan> {
    let templates = set
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default();
    let Some(template) = templates.first() else {
        return Some(StoragePlan::Ephemeral);
    };
    let spec = template.spec.as_ref()?;
    let requested = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    Some(StoragePlan::Claim {
        bytes: bytes_of(requested)?,
        class: spec.storage_class_name.clone(),
    })
}

/// A claim's requested and provisioned size.
pub fn of_claim(claim: &PersistentVolumeClaim) -> ClaimSize {
    let requested = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"));
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref()?.get("storage"));
    ClaimSize {
        requested: requested.and_then(bytes_of),
        capacity: capacity.and_then(bytes_of),
    }
}

fn bytes_of(quantity: &Quantity) -> Option<u64> {
    cairn_quantity::parse_bytes(&quantity.0).ok()
}

pub fn decide<'a>(
    wanted: &StoragePlan,
    made_with: Option<&StoragePlan>,
    claims: impl IntoIterator<Item = (&'a String, ClaimSize)>,
) -> StorageDecision {
    let unchanged = |template: StoragePlan, refused: Option<String>| StorageDecision {
        template,
        grow: Vec::new(),
        refused,
        growing: Vec::new(),
    };
    let Some(made_with) = made_with else {
        return unchanged(wanted.clone(), None);
    };
    match (made_with, wanted) {
        (StoragePlan::Ephemeral, StoragePlan::Ephemeral) => unchanged(wanted.clone(), None),
        (StoragePlan::Ephemeral, StoragePlan::Claim { .. }) => unchanged(
            made_with.clone(),
            Some(
                "spec.storage.ephemeral was true when the members were made; members cannot move \
                 their data to claims in place"
                    .into(),
            ),
        ),
        (StoragePlan::Claim { .. }, StoragePlan::Ephemeral) => unchanged(
            made_with.clone(),
            Some(
                "spec.storage.ephemeral cannot be turned on for members that keep their data in \
                 claims"
                    .into(),
            ),
        ),
        (
            StoragePlan::Claim {
                bytes: made_bytes,
                class: made_class,
            },
            StoragePlan::Claim { bytes, class },
        ) => {
            if class != made_class {
                let shown = |class: &Option<String>| class.clone().unwrap_or_else(|| "the default".into());
                return unchanged(
                    made_with.clone(),
                    Some(format!(
                        "spec.storage.storageClassName is {}, but the members' claims were made with {}; \
                         a claim's storage class cannot change",
                        shown(class),
                        shown(made_class)
                    )),
                );
            }
            let mut decision = unchanged(made_with.clone(), None);
            let mut smaller = Vec::new();
            for (claim, size) in claims {
                let requested = size.requested.unwrap_or(*made_bytes);
                if requested < *bytes {
                    decision.grow.push((claim.clone(), *bytes));
                } else if requested > *bytes {
                    smaller.push(claim.as_str());
                }
                if size.capacity.is_some_and(|c| c < requested.max(*bytes)) {
                    decision.growing.push(claim.clone());
                }
            }
            if !smaller.is_empty() || bytes < made_bytes {
                decision.refused = Some(format!(
                    "spec.storage.size ({bytes} bytes) is smaller than the members' claims{}; claims \
                     cannot shrink",
                    if smaller.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", smaller.join(", "))
                    }
                ));
            }
            decision
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn claim(bytes: u64, class: Option<&str>) -> StoragePlan {
        StoragePlan::Claim {
            bytes,
            class: class.map(str::to_owned),
        }
    }

    fn sized(requested: u64, capacity: u64) -> ClaimSize {
        ClaimSize {
            requested: Some(requested),
            capacity: Some(capacity),
        }
    }

    #[test]
    fn a_new_cluster_or_an_unchanged_one_builds_what_the_spec_says() {
        let wanted = claim(GI, None);
        let none: [(&String, ClaimSize); 0] = [];
        assert_eq!(decide(&wanted, None, none).template, wanted);
        let names = ["data-kv-0".to_owned()];
        let same = decide(&wanted, Some(&wanted), [(&names[0], sized(GI, GI))]);
        assert_eq!((same.grow, same.refused, same.growing), (vec![], None, vec![]));
    }

    #[test]
    fn a_larger_size_grows_the_claims_and_keeps_the_template() {
        let names = ["data-kv-0".to_owned(), "data-kv-1".to_owned()];
        let made = claim(GI, Some("fast"));
        let wanted = claim(2 * GI, Some("fast"));
        let decision = decide(
            &wanted,
            Some(&made),
            [(&names[0], sized(GI, GI)), (&names[1], sized(2 * GI, GI))],
        );
        assert_eq!(decision.template, made);
        assert_eq!(decision.grow, vec![("data-kv-0".to_owned(), 2 * GI)]);
        assert_eq!(decision.growing, names.to_vec());
        assert_eq!(decision.refused, None);
    }

    #[test]
    fn other_storage_edits_are_refused_by_field() {
        let names = ["data-kv-0".to_owned()];
        let made = claim(2 * GI, None);
        let shrink = decide(
            &claim(GI, None),
            Some(&made),
            [(&names[0], sized(2 * GI, 2 * GI))],
        );
        assert_eq!(shrink.template, made);
        assert!(shrink.grow.is_empty());
        assert_eq!(
            shrink.refused.as_deref(),
            Some(
                "spec.storage.size (1073741824 bytes) is smaller than the members' claims (data-kv-0); \
                 claims cannot shrink"
            )
        );
        let class = decide(
            &claim(2 * GI, Some("fast")),
            Some(&made),
            [(&names[0], sized(2 * GI, 2 * GI))],
        );
        assert_eq!(
            class.refused.as_deref(),
            Some(
                "spec.storage.storageClassName is fast, but the members' claims were made with the \
                 default; a claim's storage class cannot change"
            )
        );
        let ephemeral = decide(&StoragePlan::Ephemeral, Some(&made), [(&names[0], sized(GI, GI))]);
        assert_eq!(ephemeral.template, made);
        assert!(ephemeral.refused.unwrap().starts_with("spec.storage.ephemeral"));
    }
}
