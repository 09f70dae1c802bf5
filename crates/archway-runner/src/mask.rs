//! Masking secrets in a job's output stream: every occurrence of a masked value, its base64
//! forms and its URL-encoded form becomes `[MASKED]` before a byte leaves the runner.
//!
//! Output arrives in arbitrary chunks, so a value can be split across two of them: the masker
//! holds back the longest tail of what it has seen that could still begin a secret, and only
//! releases bytes that can no longer be part of one. What it holds back is shorter than the
//! longest pattern.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

/// The replacement text.
pub const MASK: &[u8] = b"[MASKED]";

/// A streaming masker.
#[derive(Debug)]
pub struct Masker {
    patterns: Vec<Vec<u8>>,
    matcher: Option<AhoCorasick>,
    pending: Vec<u8>,
}

/// The byte strings that reveal `value`: itself, its URL encoding, and the parts of its
/// base64 encoding that do not depend on the bytes around it (for each of the three
/// alignments it can have inside a longer encoded string, e.g. `user:token` in a docker
/// `auth` field).
pub fn forms(value: &str) -> Vec<Vec<u8>> {
    let v = value.as_bytes();
    let mut out = vec![v.to_vec()];
    let url = percent_encode(v);
    if url != v {
        out.push(url);
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for k in 0..3usize {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(v);
            let enc = engine.encode(&buf);
            let enc = enc.trim_end_matches('=').as_bytes();
            // Characters whose 6 bits all come from the value.
            let first = (8 * k).div_ceil(6);
            let end = (8 * (k + v.len())) / 6;
            if end > first && end - first >= 4 {
                out.push(enc[first..end.min(enc.len())].to_vec());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn percent_encode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

impl Masker {
    /// A masker for `values` (empty values are ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(forms)
            .collect();
        patterns.sort();
        patterns.dedup();
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns always build")
        });
        Masker {
            patterns,
            matcher,
            pending: Vec::new(),
        }
    }

    /// Feeds output; returns what can be released now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.matcher else {
            return data.to_vec();
        };
        self.pending.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut last = 0;
        for m in matcher.find_iter(&self.pending) {
            out.extend_from_slice(&self.pending[last..m.start()]);
            out.extend_from_slice(MASK);
            last = m.end();
        }
        let rest = &self.pending[last..];
        let hold = self.held_tail(rest);
        out.extend_from_slice(&rest[..rest.len() - hold]);
        let keep = rest[rest.len() - hold..].to_vec();
        self.pending = keep;
        out
    }

    /// The end of the stream: releases what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Length of the longest suffix of `rest` that is a proper prefix of a pattern.
    fn held_tail(&self, rest: &[u8]) -> usize {
        let mut best = 0;
        for p in &self.patterns {
            let max = (p.len() - 1).min(rest.len());
            for l in (best + 1..=max).rev() {
                if rest[rest.len() - l..] == p[..l] {
                    best = l;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(masker: &mut Masker, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(masker.push(c));
        }
        out.extend(masker.finish());
        String::from_utf8(out).unwrap()
    }

    const SECRET: &str = "s3cr3t-T0ken/value";

    #[test]
    fn whole_values_are_masked() {
        let mut m = Masker::new([SECRET]);
        assert_eq!(
            run(&mut m, &[format!("token={SECRET} done\n").as_bytes()]),
            "token=[MASKED] done\n"
        );
    }

    #[test]
    fn a_value_split_across_chunks_at_every_position_is_masked() {
        let line = format!("a {SECRET} b {SECRET}\n");
        for cut in 0..line.len() {
            for cut2 in cut..line.len() {
                let b = line.as_bytes();
                let mut m = Masker::new([SECRET]);
                let out = run(&mut m, &[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                assert_eq!(out, "a [MASKED] b [MASKED]\n", "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn base64_and_url_encoded_forms_are_masked() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "u:", "us:", "usr:"] {
            let encoded = b64.encode(format!("{prefix}{SECRET}"));
            let mut m = Masker::new([SECRET]);
            let out = run(&mut m, &[format!("auth: {encoded}\n").as_bytes()]);
            assert!(out.contains("[MASKED]"), "{prefix:?}: {out}");
            // What is left is the prefix's own encoding and at most the few characters
            // that mix the value with its neighbours.
            let leftover = out.replace("[MASKED]", "");
            assert!(
                leftover.len() <= "auth: \n".len() + (prefix.len() * 4).div_ceil(3) + 4,
                "{prefix:?}: {out}"
            );
        }
        let mut m = Masker::new([SECRET]);
        let out = run(&mut m, &[b"https://x/?t=s3cr3t-T0ken%2Fvalue&y=1\n"]);
        assert_eq!(out, "https://x/?t=[MASKED]&y=1\n");
    }

    #[test]
    fn output_without_secrets_passes_and_holds_back_only_possible_starts() {
        let mut m = Masker::new([SECRET]);
        assert_eq!(m.push(b"hello s3c"), b"hello ");
        assert_eq!(m.held(), 3);
        assert_eq!(m.push(b"ond\n"), b"s3cond\n");
        assert_eq!(m.held(), 0);
        let mut none = Masker::new(["", ""]);
        assert_eq!(none.push(b"anything"), b"anything");
    }

    #[test]
    fn several_values_and_overlaps() {
        let mut m = Masker::new(["password123", "password123456"]);
        assert_eq!(
            run(&mut m, &[b"x password123456 y password123 z"]),
            "x [MASKED] y [MASKED] z"
        );
    }
}
