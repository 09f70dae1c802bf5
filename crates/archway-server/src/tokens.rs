//! Secrets the coordinator hands out: admin and registration tokens, runner tokens and the
//! per-attempt job tokens (`CI_JOB_TOKEN`).
//!
//! A token is 32 random bytes in hex behind a prefix that says what it is (so a leaked
//! token is recognisable in logs and by secret scanners). Only its SHA-256 is stored: tokens
//! are high-entropy, so a fast hash is enough and lookups stay cheap (no bcrypt on the
//! request path).

use sha2::{Digest, Sha256};

/// What a token is for, by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Full access to the API and the registry.
    Admin,
    /// Registers runners.
    Registration,
    /// One runner's own token.
    Runner,
    /// One attempt of one job.
    Job,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Admin => "awa_",
            TokenKind::Registration => "awr_",
            TokenKind::Runner => "awn_",
            TokenKind::Job => "awj_",
        }
    }

    pub fn of(token: &str) -> Option<TokenKind> {
        [
            TokenKind::Admin,
            TokenKind::Registration,
            TokenKind::Runner,
            TokenKind::Job,
        ]
        .into_iter()
        .find(|k| token.starts_with(k.prefix()) && token.len() == k.prefix().len() + 64)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Registration => "registration",
            TokenKind::Runner => "runner",
            TokenKind::Job => "job",
        }
    }
}

/// A new random token of `kind`.
pub fn generate(kind: TokenKind) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// What the database stores for `token`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_say_what_they_are_and_hash_stably() {
        for kind in [
            TokenKind::Admin,
            TokenKind::Registration,
            TokenKind::Runner,
            TokenKind::Job,
        ] {
            let t = generate(kind);
            assert_eq!(TokenKind::of(&t), Some(kind));
            assert_ne!(generate(kind), t);
            assert_eq!(hash(&t), hash(&t));
            assert_eq!(hash(&t).len(), 64);
        }
        assert_eq!(TokenKind::of("awa_short"), None);
        assert_eq!(TokenKind::of("password"), None);
    }
}
