//! Member and cluster identity, derived as etcd derives them: a member ID hashes its sorted peer URLs
//! with the cluster token (and, for members added at runtime, the time they were added); the cluster
//! ID hashes the sorted initial member IDs. Another token gives other IDs, so clusters never mix.

use sha1::{Digest, Sha1};

fn first_eight_bytes(hash: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(bytes)
}

pub fn member_id(peer_urls: &[String], token: &str, added_at_unix: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut input = urls.concat().into_bytes();
    input.extend_from_slice(token.as_bytes());
    if let Some(seconds) = added_at_unix {
        input.extend_from_slice(seconds.to_string().as_bytes());
    }
    first_eight_bytes(&Sha1::digest(&input))
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let input: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_eight_bytes(&Sha1::digest(&input))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn member_id_depends_on_urls_and_token_not_url_order() {
        let a = member_id(&urls(&["http://a:2380", "http://b:2380"]), "t", None);
        assert_eq!(
            a,
            member_id(&urls(&["http://b:2380", "http://a:2380"]), "t", None)
        );
        assert_ne!(
            a,
            member_id(&urls(&["http://a:2380", "http://b:2380"]), "u", None)
        );
        assert_ne!(
            a,
            member_id(&urls(&["http://a:2380", "http://b:2380"]), "t", Some(1))
        );
    }

    #[test]
    fn cluster_id_is_order_independent_and_token_sensitive() {
        let one = member_id(&urls(&["http://10.0.0.1:2380"]), "token-a", None);
        let two = member_id(&urls(&["http://10.0.0.2:2380"]), "token-a", None);
        assert_eq!(cluster_id(&[one, two]), cluster_id(&[two, one]));
        let other = member_id(&urls(&["http://10.0.0.1:2380"]), "token-b", None);
        assert_ne!(cluster_id(&[one, two]), cluster_id(&[other, two]));
    }

    #[test]
    fn matches_etcd_for_the_default_single_member() {
        // etcd's well-known ID for `--name default` with its default URL and token.
        let id = member_id(&urls(&["http://localhost:2380"]), "etcd-cluster", None);
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
    }
}
