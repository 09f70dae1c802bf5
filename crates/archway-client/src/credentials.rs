//! Registry credentials in Docker's format: `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`) with `auths`, `credsStore` and `credHelpers`, and the
//! `docker-credential-<helper>` protocol (`get`, `store`, `erase` over stdin/stdout).
//!
//! Writing preserves every field Archway does not know, and replaces the file atomically with
//! mode 0600, so `docker`, `podman` and `archway` can share one file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// Docker Hub's key in `auths` and for credential helpers.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
    /// The secret is an identity (refresh) token, not a password (`username` is `<token>`).
    pub identity_token: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("identity_token", &self.identity_token)
            .finish()
    }
}

impl Credentials {
    pub fn password(username: &str, password: &str) -> Self {
        Credentials {
            username: username.to_owned(),
            secret: password.to_owned(),
            identity_token: false,
        }
    }
}

/// Errors reading or writing credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the `auth` entry for {registry} is not base64 `user:password`")]
    BadAuth { path: PathBuf, registry: String },
    #[error("credential helper `docker-credential-{helper}` {action} failed: {message}")]
    Helper {
        helper: String,
        action: &'static str,
        message: String,
    },
}

/// The Docker client configuration file.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// Where to find `docker-credential-*` programs; `None` means `PATH`.
    helper_dir: Option<PathBuf>,
}

/// The keys a registry may be stored under in `auths` / `credHelpers`.
fn keys_for(registry: &str) -> Vec<String> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        return vec![
            DOCKER_HUB_KEY.to_owned(),
            "docker.io".to_owned(),
            "index.docker.io".to_owned(),
            "registry-1.docker.io".to_owned(),
        ];
    }
    vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ]
}

/// The key Archway writes for a registry.
fn key_for(registry: &str) -> String {
    keys_for(registry).swap_remove(0)
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_location() -> DockerConfig {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"));
        DockerConfig::at(dir.join("config.json"))
    }

    pub fn at(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig {
            path: path.into(),
            helper_dir: None,
        }
    }

    /// Looks for credential helpers in `dir` instead of `PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> DockerConfig {
        self.helper_dir = Some(dir.into());
        self
    }

    fn helper(&self, name: String) -> Helper<'_> {
        Helper {
            name,
            dir: self.helper_dir.as_deref(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Map<String, Value>, CredentialsError> {
        match std::fs::read(&self.path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Ok(Map::new()),
                Err(source) => Err(CredentialsError::Json {
                    path: self.path.clone(),
                    source,
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
            Err(source) => Err(CredentialsError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, config: &Map<String, Value>) -> Result<(), CredentialsError> {
        let mut bytes = serde_json::to_vec_pretty(config).unwrap_or_default();
        bytes.push(b'\n');
        // Created 0600 (never readable by others), fsynced, renamed, directory fsynced.
        archway_oci::atomic_file::write_with_mode(&self.path, &bytes, 0o600).map_err(|source| {
            CredentialsError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// The helper responsible for `registry`, if any (`credHelpers` first, then `credsStore`).
    fn helper_for(config: &Map<String, Value>, registry: &str) -> Option<String> {
        if let Some(Value::Object(helpers)) = config.get("credHelpers") {
            for k in keys_for(registry) {
                if let Some(Value::String(h)) = helpers.get(&k) {
                    return Some(h.clone());
                }
            }
        }
        match config.get("credsStore") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// Credentials for `registry`, or `None` (anonymous).
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        let config = self.read()?;
        if let Some(Value::Object(auths)) = config.get("auths") {
            for k in keys_for(registry) {
                let Some(Value::Object(entry)) = auths.get(&k) else {
                    continue;
                };
                if let Some(Value::String(token)) = entry.get("identitytoken")
                    && !token.is_empty()
                {
                    return Ok(Some(Credentials {
                        username: "<token>".into(),
                        secret: token.clone(),
                        identity_token: true,
                    }));
                }
                if let Some(Value::String(auth)) = entry.get("auth")
                    && !auth.is_empty()
                {
                    let bad = || CredentialsError::BadAuth {
                        path: self.path.clone(),
                        registry: registry.to_owned(),
                    };
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let text = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (u, p) = text.split_once(':').ok_or_else(bad)?;
                    return Ok(Some(Credentials::password(u, p)));
                }
            }
        }
        if let Some(helper) = Self::helper_for(&config, registry) {
            let helper = self.helper(helper);
            for key in keys_for(registry).iter().take(2) {
                if let Some(c) = helper.get(key)? {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// Stores credentials: through the configured helper if there is one, else base64 in
    /// `auths`.
    pub fn store(&self, registry: &str, creds: &Credentials) -> Result<(), CredentialsError> {
        let mut config = self.read()?;
        let key = key_for(registry);
        if let Some(helper) = Self::helper_for(&config, registry) {
            self.helper(helper).store(&key, creds)?;
            // Leave a marker entry, as docker does, so `auths` lists the registry.
            let auths = config
                .entry("auths")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(a) = auths {
                a.insert(key, json!({}));
            }
            return self.write(&config);
        }
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.secret));
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Value::Object(a) = auths {
            a.insert(key, json!({ "auth": auth }));
        }
        self.write(&config)
    }

    /// Forgets credentials for `registry`. Returns whether there were any.
    pub fn erase(&self, registry: &str) -> Result<bool, CredentialsError> {
        let mut config = self.read()?;
        let mut found = false;
        if let Some(helper) = Self::helper_for(&config, registry) {
            found |= self.helper(helper).erase(&key_for(registry))?;
        }
        if let Some(Value::Object(auths)) = config.get_mut("auths") {
            for k in keys_for(registry) {
                found |= auths.remove(&k).is_some();
            }
        }
        self.write(&config)?;
        Ok(found)
    }
}

/// One `docker-credential-<name>` program.
struct Helper<'a> {
    name: String,
    dir: Option<&'a Path>,
}

impl Helper<'_> {
    fn err(&self, action: &'static str, message: String) -> CredentialsError {
        CredentialsError::Helper {
            helper: self.name.clone(),
            action,
            message,
        }
    }

    fn run(
        &self,
        action: &'static str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>, String), CredentialsError> {
        let program = format!("docker-credential-{}", self.name);
        let path = match self.dir {
            Some(d) => d.join(&program),
            None => PathBuf::from(&program),
        };
        let mut child = Command::new(&path)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                self.err(
                    action,
                    format!("cannot run {program}: {e} (is it installed and on PATH?)"),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| self.err(action, e.to_string()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok((out.status.success(), out.stdout, text))
    }

    fn get(&self, server: &str) -> Result<Option<Credentials>, CredentialsError> {
        let (ok, stdout, text) = self.run("get", server.as_bytes())?;
        if !ok {
            if text.contains("credentials not found") {
                return Ok(None);
            }
            return Err(self.err("get", text));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Out {
            username: String,
            secret: String,
        }
        let out: Out = serde_json::from_slice(&stdout)
            .map_err(|e| self.err("get", format!("unexpected output: {e}")))?;
        Ok(Some(Credentials {
            identity_token: out.username == "<token>",
            username: out.username,
            secret: out.secret,
        }))
    }

    fn store(&self, server: &str, c: &Credentials) -> Result<(), CredentialsError> {
        let input = json!({ "ServerURL": server, "Username": c.username, "Secret": c.secret });
        let (ok, _, text) = self.run("store", input.to_string().as_bytes())?;
        if ok {
            Ok(())
        } else {
            Err(self.err("store", text))
        }
    }

    fn erase(&self, server: &str) -> Result<bool, CredentialsError> {
        let (ok, _, text) = self.run("erase", server.as_bytes())?;
        if ok {
            Ok(true)
        } else if text.contains("not found") {
            Ok(false)
        } else {
            Err(self.err("erase", text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_reads_and_erases_auths_keeping_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"other.io":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let cfg = DockerConfig::at(&path);
        cfg.store("127.0.0.1:5000", &Credentials::password("alice", "s3:cret"))
            .unwrap();
        let c = cfg.lookup("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "s3:cret")
        );
        assert_eq!(cfg.lookup("other.io").unwrap().unwrap().username, "x");
        assert_eq!(cfg.lookup("unknown.io").unwrap(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"psFormat\": \"table\""), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(cfg.erase("127.0.0.1:5000").unwrap());
        assert_eq!(cfg.lookup("127.0.0.1:5000").unwrap(), None);
        assert!(!cfg.erase("127.0.0.1:5000").unwrap());
    }

    #[test]
    fn docker_hub_aliases_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"ghcr.io":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::at(&path);
        assert_eq!(cfg.lookup("docker.io").unwrap().unwrap().username, "u");
        let t = cfg.lookup("ghcr.io").unwrap().unwrap();
        assert!(t.identity_token && t.secret == "tok");
    }

    #[test]
    fn credential_helpers_speak_the_docker_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let store = dir.path().join("store");
        // A tiny helper storing one credential in a file, speaking docker's protocol.
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n get) read s; if [ -f {s} ]; then cat {s}; else echo 'credentials not found in native keychain'; exit 1; fi;;\n store) cat > {s};;\n erase) read s; rm -f {s};;\nesac\n",
            s = store.display()
        );
        let helper = bin.join("docker-credential-test");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credHelpers":{"reg.example":"test"}}"#).unwrap();
        let cfg = DockerConfig::at(&path).with_helper_dir(&bin);
        assert_eq!(cfg.lookup("reg.example").unwrap(), None);
        cfg.store("reg.example", &Credentials::password("bob", "pw"))
            .unwrap();
        let c = cfg.lookup("reg.example").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("bob", "pw"));
        assert!(cfg.erase("reg.example").unwrap());
        // A missing helper is reported by name.
        let missing = DockerConfig::at(&path).with_helper_dir(dir.path());
        let err = missing.lookup("reg.example").unwrap_err().to_string();
        assert!(err.contains("docker-credential-test"), "{err}");
        // The plaintext secret never reached config.json.
        assert!(!std::fs::read_to_string(&path).unwrap().contains("pw"));
    }
}
