//! Images are local programs here: an image reference maps, by its last path component without
//! tag or digest, to a binary (`ghcr.io/acme/cairn:v0.1` → the workspace's `cairn`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The images this sandbox can run, and the binaries standing in for them.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    binaries: BTreeMap<String, PathBuf>,
}

/// Images the workspace builds, found next to the sandbox binary (the same target directory).
pub const WORKSPACE_IMAGES: &[&str] = &["cairn", "cairn-operator", "podtool"];

impl ImageMap {
    /// The workspace's images, looked up in `dir`; `extra` (name=path) adds or overrides.
    pub fn new(dir: &Path, extra: &[(String, PathBuf)]) -> ImageMap {
        let mut binaries: BTreeMap<String, PathBuf> = WORKSPACE_IMAGES
            .iter()
            .map(|name| (name.to_string(), dir.join(name)))
            .collect();
        binaries.extend(extra.iter().cloned());
        ImageMap { binaries }
    }

    /// The binary for `image`, or why there is none.
    pub fn resolve(&self, image: &str) -> Result<&Path, String> {
        let name = repository_name(image);
        match self.binaries.get(name) {
            Some(path) if path.is_file() => Ok(path),
            Some(path) => Err(format!(
                "image {image:?} maps to {}, which does not exist (build the workspace: cargo build --workspace)",
                path.display()
            )),
            None => Err(format!(
                "image {image:?} is not available in the sandbox: it runs only {}",
                self.binaries.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// Programs an image ships beside its entrypoint, as the Dockerfile puts them in it.
const SHIPPED_PROGRAMS: &[(&str, &[&str])] = &[("cairn", &["cairnctl"])];

impl ImageMap {
    /// The binary standing in for `program` when `image` ships it (a container's command may
    /// name it): the workspace's binary of that name, beside the image's own.
    pub fn shipped(&self, image: &str, program: &str) -> Option<PathBuf> {
        let (_, programs) = SHIPPED_PROGRAMS
            .iter()
            .find(|(name, _)| *name == repository_name(image))?;
        if !programs.contains(&program) {
            return None;
        }
        let path = self.resolve(image).ok()?.with_file_name(program);
        path.is_file().then_some(path)
    }
}

/// `registry:5000/team/name:tag@sha256:...` → `name`.
pub fn repository_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_map_by_repository_name() {
        assert_eq!(repository_name("cairn"), "cairn");
        assert_eq!(repository_name("cairn:0.1.0"), "cairn");
        assert_eq!(
            repository_name("ghcr.io/acme/cairn-operator:v1"),
            "cairn-operator"
        );
        assert_eq!(repository_name("localhost:5000/cairn@sha256:abcd"), "cairn");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cairn"), "").unwrap();
        let images = ImageMap::new(dir.path(), &[]);
        assert_eq!(
            images.resolve("example.org/cairn:v2").unwrap(),
            dir.path().join("cairn")
        );
        let unknown = images.resolve("nginx:1.25").unwrap_err();
        assert!(
            unknown.contains("\"nginx:1.25\" is not available in the sandbox"),
            "{unknown}"
        );
        assert!(
            images
                .resolve("cairn-operator")
                .unwrap_err()
                .contains("does not exist")
        );
    }
}
