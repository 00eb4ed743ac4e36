//! Platforms (`linux/amd64`, `linux/arm/v7`) and the choice of one entry
//! of an index for this host.
//!
//! Architectures use Go's names, as images do (`amd64`, `arm64`, `386`,
//! `ppc64le`, …); Rust's `std::env::consts::ARCH` is mapped to them. A
//! missing variant means the architecture's base variant (`arm64` → `v8`,
//! `arm` → `v7`), and an `arm` host of variant N also runs lower variants
//! (preferring the highest).

use std::fmt;

use crate::manifest::{Descriptor, Index};
use crate::pull::PullError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Go's name of a Rust architecture.
pub fn go_arch(rust_arch: &str, little_endian: bool) -> &str {
    match (rust_arch, little_endian) {
        ("x86_64", _) => "amd64",
        ("x86", _) => "386",
        ("aarch64", _) => "arm64",
        ("arm", _) => "arm",
        ("powerpc64", true) => "ppc64le",
        ("powerpc64", false) => "ppc64",
        ("mips64", true) => "mips64le",
        ("mips", true) => "mipsle",
        ("loongarch64", _) => "loong64",
        (other, _) => other,
    }
}

/// Image architecture aliases some tools write.
fn normalize_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        "armhf" | "armel" => "arm",
        other => other,
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

impl Platform {
    /// This host's platform.
    pub fn host() -> Platform {
        let arch = go_arch(std::env::consts::ARCH, cfg!(target_endian = "little")).to_string();
        let variant = if arch == "arm" && !cfg!(target_feature = "v7") {
            Some("v6".to_string())
        } else {
            default_variant(&arch).map(str::to_string)
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            arch,
            variant,
        }
    }

    /// `os/arch[/variant]` (as `--platform` takes it).
    pub fn parse(s: &str) -> Result<Platform, PullError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || PullError::Malformed {
            what: format!("platform {s:?}"),
            reason: "expected os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7"
                .to_string(),
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let arch = normalize_arch(&parts[1].to_ascii_lowercase()).to_string();
        let variant = parts
            .get(2)
            .map(|v| v.to_ascii_lowercase())
            .or_else(|| default_variant(&arch).map(str::to_string));
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            arch,
            variant,
        })
    }

    /// From an index entry's or a config's fields.
    pub fn of(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        let arch = normalize_arch(arch).to_string();
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .or_else(|| default_variant(&arch).map(str::to_string));
        Platform {
            os: os.to_string(),
            arch,
            variant,
        }
    }

    /// How well an image of platform `have` suits `self`: `None` when it
    /// cannot run, else a rank (0 best).
    pub fn rank(&self, have: &Platform) -> Option<u32> {
        if self.os != have.os || self.arch != have.arch {
            return None;
        }
        if self.variant == have.variant {
            return Some(0);
        }
        // arm vN runs vM for M < N.
        if self.arch == "arm" {
            let n = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|v| v.parse::<u32>().ok())
            };
            if let (Some(want), Some(got)) = (n(&self.variant), n(&have.variant)) {
                if got < want {
                    return Some(want - got);
                }
            }
        }
        None
    }
}

/// The entry of `index` for `want`: the best rank, the first of equals.
/// An index whose only entry names no platform yields that entry.
pub fn choose<'a>(
    index: &'a Index,
    want: &Platform,
    image: &str,
) -> Result<&'a Descriptor, PullError> {
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        let have = Platform::of(&p.os, &p.architecture, p.variant.as_deref());
        if let Some(rank) = want.rank(&have) {
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, d));
            }
        }
    }
    if let Some((_, d)) = best {
        return Ok(d);
    }
    if let [only] = index.manifests.as_slice() {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let mut available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(|p| Platform::of(&p.os, &p.architecture, p.variant.as_deref()).to_string())
        .collect();
    available.dedup();
    Err(PullError::NoPlatform {
        image: image.to_string(),
        platform: want.to_string(),
        available: if available.is_empty() {
            "no platforms".to_string()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{IndexPlatform, OCI_MANIFEST};
    use crate::Digest;

    fn entry(n: u8, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&[n]),
            size: 100,
            platform: Some(IndexPlatform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    fn index(entries: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: None,
            manifests: entries,
        }
    }

    #[test]
    fn host_platform_uses_go_names() {
        assert_eq!(go_arch("x86_64", true), "amd64");
        assert_eq!(go_arch("aarch64", true), "arm64");
        assert_eq!(go_arch("powerpc64", true), "ppc64le");
        assert_eq!(go_arch("powerpc64", false), "ppc64");
        assert_eq!(go_arch("x86", true), "386");
        assert_eq!(go_arch("s390x", false), "s390x");
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.to_string(), "linux/amd64");
    }

    #[test]
    fn picks_this_platform_from_an_index() {
        let idx = index(vec![
            entry(1, "linux", "arm64", Some("v8")),
            entry(2, "linux", "amd64", None),
            entry(3, "unknown", "unknown", None),
            entry(4, "linux", "amd64", None),
        ]);
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(choose(&idx, &amd, "x").unwrap().digest, Digest::of(&[2]));
        // arm64 without a variant in the request means v8.
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(choose(&idx, &arm, "x").unwrap().digest, Digest::of(&[1]));
        // An entry without a variant is arm64's v8.
        let idx2 = index(vec![entry(5, "linux", "aarch64", None)]);
        assert_eq!(
            choose(&idx2, &Platform::parse("linux/arm64/v8").unwrap(), "x")
                .unwrap()
                .digest,
            Digest::of(&[5])
        );
    }

    #[test]
    fn arm_prefers_its_own_variant_then_lower_ones() {
        let idx = index(vec![
            entry(1, "linux", "arm", Some("v5")),
            entry(2, "linux", "arm", Some("v6")),
            entry(3, "linux", "arm", Some("v8")),
        ]);
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(choose(&idx, &v7, "x").unwrap().digest, Digest::of(&[2]));
        let idx = index(vec![
            entry(1, "linux", "arm", None),
            entry(2, "linux", "arm", Some("v6")),
        ]);
        assert_eq!(choose(&idx, &v7, "x").unwrap().digest, Digest::of(&[1]));
    }

    #[test]
    fn no_entry_for_this_platform_lists_what_there_is() {
        let idx = index(vec![
            entry(1, "linux", "arm64", Some("v8")),
            entry(2, "linux", "s390x", None),
            entry(3, "unknown", "unknown", None),
            entry(4, "windows", "amd64", None),
        ]);
        let e = choose(&idx, &Platform::parse("linux/amd64").unwrap(), "img:1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PullError::NoPlatform { .. }), "{msg}");
        assert!(msg.contains("img:1"), "{msg}");
        assert!(msg.contains("linux/amd64"), "{msg}");
        assert!(
            msg.contains("linux/arm64/v8, linux/s390x, windows/amd64"),
            "{msg}"
        );
        assert!(!msg.contains("unknown"), "{msg}");
        // arm v6 cannot run v7.
        let idx = index(vec![entry(1, "linux", "arm", Some("v7"))]);
        assert!(choose(&idx, &Platform::parse("linux/arm/v6").unwrap(), "x").is_err());
    }

    #[test]
    fn bad_platforms_are_refused() {
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
