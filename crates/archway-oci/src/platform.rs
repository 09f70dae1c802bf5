//! Platforms (`os/arch[/variant]`), parsed and normalised the way containerd does it, so that
//! `linux/x86_64`, `linux/amd64`, `aarch64`, `linux/arm64/v8` and `linux/arm64` compare as users
//! expect.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The platform of an image: the `platform` object of an index entry, or the
/// `os`/`architecture`/`variant` fields of an image config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// Why a platform string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("platform `{0}` is empty; expected `os/arch[/variant]`, e.g. `linux/arm64`")]
    Empty(String),
    #[error(
        "platform `{0}` is not `os/arch[/variant]` (e.g. `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`)"
    )]
    Malformed(String),
    #[error("unknown architecture `{arch}` in platform `{input}`; known: {known}")]
    UnknownArchitecture {
        input: String,
        arch: String,
        known: &'static str,
    },
}

const KNOWN_ARCHES: &str = "amd64 (x86_64, x86-64), arm64 (aarch64), arm (armhf, armel), 386 (i386), ppc64le, s390x, riscv64, mips64le, loong64";

/// Normalises an architecture name and its variant. Returns `None` for unknown names.
fn normalize_arch(arch: &str, variant: Option<&str>) -> Option<(&'static str, Option<String>)> {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(str::to_ascii_lowercase)
        .filter(|v| !v.is_empty());
    let out = match arch.as_str() {
        "amd64" | "x86_64" | "x86-64" => {
            // amd64 variants are v1..v4 microarchitecture levels; v1 is the baseline.
            let v = variant.filter(|v| v != "v1");
            ("amd64", v)
        }
        "arm64" | "aarch64" => {
            let v = variant.filter(|v| !matches!(v.as_str(), "8" | "v8" | "v8.0"));
            ("arm64", v)
        }
        "armhf" => ("arm", Some("v7".to_owned())),
        "armel" => ("arm", Some("v6".to_owned())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") | Some("v7") => "v7".to_owned(),
                Some("5") => "v5".to_owned(),
                Some("6") => "v6".to_owned(),
                Some("8") => "v8".to_owned(),
                Some(other) => other.to_owned(),
            };
            ("arm", Some(v))
        }
        "386" | "i386" | "i686" => ("386", variant),
        "ppc64le" => ("ppc64le", variant),
        "s390x" => ("s390x", variant),
        "riscv64" => ("riscv64", variant),
        "mips64le" => ("mips64le", variant),
        "loong64" => ("loong64", variant),
        _ => return None,
    };
    Some(out)
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_owned(),
        _ => os,
    }
}

impl Platform {
    /// A platform with just os, architecture and variant.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_owned),
            features: None,
        }
    }

    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Platform::new("linux", "amd64", None)
    }

    /// `linux/arm64`.
    pub fn linux_arm64() -> Self {
        Platform::new("linux", "arm64", None)
    }

    /// The same platform with aliases resolved (`x86_64` → `amd64`, `aarch64` → `arm64`,
    /// `arm64/v8` → `arm64`, `arm` → `arm/v7`). Unknown architectures are kept as written.
    pub fn normalized(&self) -> Platform {
        let mut p = self.clone();
        p.os = normalize_os(&self.os);
        if let Some((arch, variant)) = normalize_arch(&self.architecture, self.variant.as_deref()) {
            p.architecture = arch.to_owned();
            p.variant = variant;
        }
        p
    }

    /// True when both name the same os/architecture/variant after normalisation.
    /// `os.version` and features are not compared.
    pub fn matches(&self, other: &Platform) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }

    /// The platform of the machine running this code (`linux/<arch>`).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch, None).normalized()
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]` or a bare architecture (`arm64` means `linux/arm64`),
    /// returning the normalised platform.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(PlatformError::Empty(input.to_owned()));
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err(PlatformError::Malformed(input.to_owned()));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(PlatformError::Malformed(input.to_owned())),
        };
        let Some((arch, variant)) = normalize_arch(arch, variant) else {
            return Err(PlatformError::UnknownArchitecture {
                input: input.to_owned(),
                arch: arch.to_owned(),
                known: KNOWN_ARCHES,
            });
        };
        let mut p = Platform::new(&normalize_os(os), arch, None);
        p.variant = variant;
        Ok(p)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Parses a comma-separated platform list (`linux/amd64,linux/arm64`), refusing duplicates.
pub fn parse_list(input: &str) -> Result<Vec<Platform>, PlatformError> {
    let mut out: Vec<Platform> = Vec::new();
    for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p: Platform = item.parse()?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(PlatformError::Empty(input.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_aliases() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/i386", "linux/386"),
            ("linux/amd64/v3", "linux/amd64/v3"),
        ];
        for (input, want) in cases {
            let p: Platform = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), want, "{input}");
        }
    }

    #[test]
    fn refuses_malformed_platforms() {
        for (input, needle) in [
            ("", "empty"),
            ("linux/", "not `os/arch"),
            ("linux/amd64/v2/x", "not `os/arch"),
            ("linux/pdp11", "unknown architecture `pdp11`"),
        ] {
            let err = input.parse::<Platform>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn matching_ignores_alias_spelling() {
        let a = Platform::new("linux", "aarch64", Some("v8"));
        assert!(a.matches(&Platform::linux_arm64()));
        assert!(!a.matches(&Platform::linux_amd64()));
    }

    #[test]
    fn serialises_like_the_image_spec() {
        let mut p = Platform::linux_arm64();
        p.variant = Some("v8".into());
        p.os_version = Some("10.0".into());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"architecture":"arm64","os":"linux","os.version":"10.0","variant":"v8"}"#
        );
    }

    #[test]
    fn parses_lists_without_duplicates() {
        let l = parse_list("linux/amd64, linux/x86_64,linux/arm64").unwrap();
        assert_eq!(l, vec![Platform::linux_amd64(), Platform::linux_arm64()]);
        assert!(parse_list(" , ").is_err());
    }
}
