//! Where an object-store backend lives: `s3://bucket/prefix`, with the endpoint, region and
//! credentials taken from the usual AWS environment variables and files.
//!
//! Resolution, first match wins (as the AWS CLI and SDKs do):
//! * endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `endpoint_url` in the profile of
//!   `~/.aws/config`; else AWS itself. A custom endpoint is addressed path-style
//!   (`http://host/bucket/key`), which every S3-compatible server understands.
//! * region: `AWS_REGION`, `AWS_DEFAULT_REGION`, `region` in the profile; else `us-east-1`.
//! * credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, the profile
//!   in `~/.aws/credentials` (then `~/.aws/config`); else the instance's role (web identity,
//!   ECS, EC2 metadata).
//!
//! The profile is `AWS_PROFILE` (default `default`); the files are `AWS_SHARED_CREDENTIALS_FILE`
//! and `AWS_CONFIG_FILE` when set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// An `s3://bucket/prefix` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

/// A location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error(
        "`{0}` is not an object-store location: expected s3://BUCKET[/PREFIX] (e.g. s3://registry/archway)"
    )]
    Syntax(String),
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring the S3 client: {0}")]
    Client(#[source] object_store::Error),
}

impl std::str::FromStr for S3Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LocationError::Syntax(s.to_owned());
        let rest = s.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // Bucket names: 3-63 characters of lowercase letters, digits, dots and hyphens.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        let prefix = prefix.trim_matches('/');
        let prefix_ok = prefix
            .split('/')
            .all(|p| prefix.is_empty() || (!p.is_empty() && p != "." && p != ".."));
        if !bucket_ok || !prefix_ok {
            return Err(bad());
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How requests to the store are retried and timed out. Throttling (429, 503 SlowDown),
/// other 5xx answers, timeouts and broken connections are retried with exponential backoff
/// and jitter; a request still failing after `max_retries` or `retry_timeout` fails.
#[derive(Clone, Debug)]
pub struct StoreTuning {
    pub max_retries: usize,
    pub retry_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One request (headers and body) must finish within this.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            max_retries: 6,
            retry_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the environment and the AWS files say, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl AwsSettings {
    /// Reads the process environment and the AWS files it points at.
    pub fn from_environment() -> Result<AwsSettings, LocationError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let read = |var: &str, default: &str| -> Result<Option<String>, LocationError> {
            let path = match env.get(var) {
                Some(p) => PathBuf::from(p),
                None => match &home {
                    Some(h) => h.join(default),
                    None => return Ok(None),
                },
            };
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(LocationError::File {
                    path: path.display().to_string(),
                    source,
                }),
            }
        };
        let credentials = read("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")?;
        let config = read("AWS_CONFIG_FILE", ".aws/config")?;
        Ok(Self::resolve(
            &env,
            credentials.as_deref(),
            config.as_deref(),
        ))
    }

    /// Resolution from explicit inputs (pure; see the module documentation for the order).
    pub fn resolve(
        env: &HashMap<String, String>,
        credentials_file: Option<&str>,
        config_file: Option<&str>,
    ) -> AwsSettings {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let profile = get("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let creds = credentials_file
            .map(|t| ini_section(t, &profile))
            .unwrap_or_default();
        // In ~/.aws/config, profiles other than `default` are written `[profile NAME]`.
        let config_section = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        let config = config_file
            .map(|t| ini_section(t, &config_section))
            .unwrap_or_default();
        let from_files = |key: &str| creds.get(key).or_else(|| config.get(key)).cloned();
        let env_keys = get("AWS_ACCESS_KEY_ID").is_some();
        AwsSettings {
            endpoint: get("AWS_ENDPOINT_URL_S3")
                .or_else(|| get("AWS_ENDPOINT_URL"))
                .or_else(|| config.get("endpoint_url").cloned()),
            region: get("AWS_REGION")
                .or_else(|| get("AWS_DEFAULT_REGION"))
                .or_else(|| config.get("region").cloned()),
            // Keys come as a set: from the environment, or from the files, never mixed.
            access_key_id: if env_keys {
                get("AWS_ACCESS_KEY_ID")
            } else {
                from_files("aws_access_key_id")
            },
            secret_access_key: if env_keys {
                get("AWS_SECRET_ACCESS_KEY")
            } else {
                from_files("aws_secret_access_key")
            },
            session_token: if env_keys {
                get("AWS_SESSION_TOKEN")
            } else {
                from_files("aws_session_token")
            },
        }
    }
}

/// The `key = value` lines of one `[section]` of an INI file (comments and blank lines
/// skipped, keys lowercased, values trimmed).
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

impl S3Location {
    /// An S3 client for this location's bucket, configured from `settings`.
    pub fn connect(
        &self,
        settings: &AwsSettings,
        tuning: &StoreTuning,
    ) -> Result<Arc<AmazonS3>, LocationError> {
        // Environment first (web identity, container credentials, …), then what the files
        // and the rules above resolved, which take precedence.
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        b = b.with_region(settings.region.as_deref().unwrap_or("us-east-1"));
        let plain_http = settings
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if let Some(endpoint) = &settings.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            b = match &settings.session_token {
                Some(t) => b.with_token(t),
                None => b.with_config(AmazonS3ConfigKey::Token, ""),
            };
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: tuning.initial_backoff,
                max_backoff: tuning.max_backoff,
                base: 2.0,
            },
            max_retries: tuning.max_retries,
            retry_timeout: tuning.retry_timeout,
        };
        let client = ClientOptions::new()
            .with_timeout(tuning.request_timeout)
            .with_connect_timeout(tuning.connect_timeout)
            .with_pool_max_idle_per_host(256)
            .with_allow_http(plain_http);
        let store = b
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(LocationError::Client)?;
        Ok(Arc::new(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l: S3Location = "s3://my-bucket/archway/registry/".parse().unwrap();
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "archway/registry");
        assert_eq!(l.to_string(), "s3://my-bucket/archway/registry");
        let l: S3Location = "s3://bucket".parse().unwrap();
        assert_eq!(
            (l.prefix.as_str(), l.to_string().as_str()),
            ("", "s3://bucket")
        );
        for bad in [
            "bucket/x",
            "s3://",
            "s3://Upper",
            "s3://ab",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "file:///tmp",
        ] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_follow_the_aws_precedence() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let credentials = "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key=FILESECRET\n\n[ci]\naws_access_key_id=CIKEY\naws_secret_access_key=CISECRET\naws_session_token=CITOKEN\n";
        let config = "# comment\n[default]\nregion = eu-west-1\n[profile ci]\nregion=eu-central-1\nendpoint_url = http://127.0.0.1:9000\n";

        let s = AwsSettings::resolve(&env(&[]), Some(credentials), Some(config));
        assert_eq!(s.access_key_id.as_deref(), Some("FILEKEY"));
        assert_eq!(s.secret_access_key.as_deref(), Some("FILESECRET"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.endpoint, None);

        let s = AwsSettings::resolve(
            &env(&[("AWS_PROFILE", "ci")]),
            Some(credentials),
            Some(config),
        );
        assert_eq!(s.access_key_id.as_deref(), Some("CIKEY"));
        assert_eq!(s.session_token.as_deref(), Some("CITOKEN"));
        assert_eq!(s.region.as_deref(), Some("eu-central-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));

        // The environment wins, and keys are never mixed from two sources.
        let s = AwsSettings::resolve(
            &env(&[
                ("AWS_PROFILE", "ci"),
                ("AWS_ACCESS_KEY_ID", "ENVKEY"),
                ("AWS_SECRET_ACCESS_KEY", "ENVSECRET"),
                ("AWS_DEFAULT_REGION", "us-west-2"),
                ("AWS_ENDPOINT_URL", "http://generic"),
                ("AWS_ENDPOINT_URL_S3", "http://s3-specific"),
            ]),
            Some(credentials),
            Some(config),
        );
        assert_eq!(s.access_key_id.as_deref(), Some("ENVKEY"));
        assert_eq!(s.session_token, None);
        assert_eq!(s.region.as_deref(), Some("us-west-2"));
        assert_eq!(s.endpoint.as_deref(), Some("http://s3-specific"));

        assert_eq!(
            AwsSettings::resolve(&env(&[]), None, None),
            AwsSettings::default()
        );
    }
}
