//! Content digests: `algorithm:hex`, computed incrementally and verified while streaming.
//!
//! Only the algorithms the OCI image specification registers are accepted: `sha256` (the
//! default everywhere) and `sha512`. Encoded parts must be lowercase hex of the exact length.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::Digest as _;

/// A registered digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in `algorithm:hex` strings and in storage paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        }
    }
}

/// Why a digest string or a digest check was rejected.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` has no `algorithm:` prefix (expected e.g. `sha256:<64 hex>`)")]
    MissingAlgorithm(String),
    #[error("digest algorithm `{0}` is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters, got `{encoded}`")]
    BadEncoding {
        algorithm: Algorithm,
        expected: usize,
        encoded: String,
    },
    #[error("content digest mismatch: expected {expected}, computed {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content size mismatch for {digest}: expected {expected} bytes, read {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

/// A validated content digest such as `sha256:e3b0c442…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Builds a digest from an algorithm and its hex encoding, validating the encoding.
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Self, DigestError> {
        let valid = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::BadEncoding {
                algorithm,
                expected: algorithm.hex_len(),
                encoded: hex.to_owned(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Digest of a byte slice.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut d = Digester::new(algorithm);
        d.update(data);
        d.finish()
    }

    /// sha256 of a byte slice (the common case).
    pub fn sha256(data: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, data)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded part after `algorithm:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks `data` against this digest.
    pub fn verify(&self, data: &[u8]) -> Result<(), DigestError> {
        let actual = Digest::of(self.algorithm, data);
        if &actual == self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.clone(),
                actual,
            })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_owned()))?;
        Digest::new(alg.parse()?, hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format_args!("digest `{s}`: {e}")))
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        d.as_ref().parse()
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        // A validated sha256/sha512 digest is always a valid oci-spec digest.
        oci_spec::image::Digest::from_str(&d.to_string())
            .unwrap_or_else(|_| unreachable!("validated digest {d} rejected by oci-spec"))
    }
}

/// Incremental hasher for one algorithm.
#[derive(Clone, Debug)]
pub struct Digester {
    state: State,
    bytes: u64,
}

#[derive(Clone, Debug)]
enum State {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Digester {
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
        };
        Digester { state, bytes: 0 }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    /// Number of bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self.state {
            State::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            State::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The hashing state as bytes, so that another process can continue the same hash
    /// ([`Digester::from_state`]): an upload resumed on another server replica goes on from
    /// where the last request stopped instead of reading everything back. The layout is
    /// `<algorithm>:<byte count, 8 bytes LE><the hash function's own state>`.
    pub fn state(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(self.algorithm().as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(&self.bytes.to_le_bytes());
        match &self.state {
            State::Sha256(h) => out.extend_from_slice(&h.serialize()),
            State::Sha512(h) => out.extend_from_slice(&h.serialize()),
        }
        out
    }

    /// Rebuilds a digester from [`Digester::state`]; `None` if the bytes are not such a state.
    pub fn from_state(bytes: &[u8]) -> Option<Digester> {
        use sha2::digest::common::hazmat::SerializableState;
        let colon = bytes.iter().position(|b| *b == b':')?;
        let algorithm: Algorithm = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
        let rest = &bytes[colon + 1..];
        let count = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let inner = &rest[8..];
        let state = match algorithm {
            Algorithm::Sha256 => {
                State::Sha256(sha2::Sha256::deserialize(inner.try_into().ok()?).ok()?)
            }
            Algorithm::Sha512 => {
                State::Sha512(sha2::Sha512::deserialize(inner.try_into().ok()?).ok()?)
            }
        };
        Some(Digester {
            state,
            bytes: count,
        })
    }

    /// Hashes everything `reader` yields.
    pub fn read_all(mut self, reader: &mut impl Read) -> io::Result<Self> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(self);
            }
            self.update(&buf[..n]);
        }
    }
}

/// A reader that hashes what passes through it and fails at end of stream when the content
/// does not match the expected digest (and size, when given). Nothing read through it should
/// be trusted before it has returned `Ok(0)`.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    expected: Digest,
    expected_size: Option<u64>,
    digester: Option<Digester>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        let digester = Some(Digester::new(expected.algorithm()));
        VerifyingReader {
            inner,
            expected,
            expected_size,
            digester,
        }
    }

    fn check(&mut self) -> io::Result<()> {
        let Some(digester) = self.digester.take() else {
            return Ok(());
        };
        let read = digester.len();
        if let Some(size) = self.expected_size
            && size != read
        {
            return Err(invalid_data(DigestError::SizeMismatch {
                digest: self.expected.clone(),
                expected: size,
                actual: read,
            }));
        }
        let actual = digester.finish();
        if actual != self.expected {
            return Err(invalid_data(DigestError::Mismatch {
                expected: self.expected.clone(),
                actual,
            }));
        }
        Ok(())
    }
}

fn invalid_data(e: DigestError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.check()?;
            return Ok(0);
        }
        if let Some(d) = &mut self.digester {
            d.update(&buf[..n]);
            if let Some(size) = self.expected_size
                && d.len() > size
            {
                let actual = d.len();
                self.digester = None;
                return Err(invalid_data(DigestError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    actual,
                }));
            }
        }
        Ok(n)
    }
}

/// A writer that hashes (and counts) everything written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    digester: Digester,
}

impl<W: io::Write> HashingWriter<W> {
    pub fn new(inner: W, algorithm: Algorithm) -> Self {
        HashingWriter {
            inner,
            digester: Digester::new(algorithm),
        }
    }

    /// The writer back, with the digest and size of what went through.
    pub fn finish(self) -> (W, Digest, u64) {
        let size = self.digester.len();
        (self.inner, self.digester.finish(), size)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_round_trip() {
        let d: Digest = EMPTY_256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_256);
        assert_eq!(Digest::sha256(b""), d);
    }

    #[test]
    fn a_hash_continues_from_its_saved_state() {
        for alg in Algorithm::ALL {
            let mut d = Digester::new(alg);
            d.update(b"hello, ");
            // Mid-block: the buffered bytes travel with the state.
            let mut resumed = Digester::from_state(&d.state()).unwrap();
            assert_eq!(resumed.len(), 7);
            resumed.update(b"world");
            assert_eq!(resumed.finish(), Digest::of(alg, b"hello, world"));
        }
        assert!(Digester::from_state(b"sha256:short").is_none());
        assert!(Digester::from_state(b"md5:01234567").is_none());
        assert!(Digester::from_state(b"").is_none());
    }

    #[test]
    fn sha512_of_empty_input() {
        let d = Digest::of(Algorithm::Sha512, b"");
        assert_eq!(
            d.to_string(),
            "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_malformed_digests() {
        let cases = [
            ("e3b0c442", "no `algorithm:` prefix"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "not supported"),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "lowercase",
            ),
            ("sha256:abc", "64 lowercase hex"),
            (
                "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "128",
            ),
        ];
        for (input, needle) in cases {
            let err = input.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for alg in Algorithm::ALL {
            let mut d = Digester::new(alg);
            for chunk in data.chunks(977) {
                d.update(chunk);
            }
            assert_eq!(d.len(), data.len() as u64);
            assert_eq!(d.finish(), Digest::of(alg, &data));
        }
    }

    #[test]
    fn verifying_reader_accepts_good_and_rejects_bad_content() {
        let data = b"hello world".to_vec();
        let good = Digest::sha256(&data);
        let mut out = Vec::new();
        VerifyingReader::new(&data[..], good.clone(), Some(11))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        let err = VerifyingReader::new(&b"hello worle"[..], good.clone(), None)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("mismatch"), "{err}");

        let err = VerifyingReader::new(&data[..], good.clone(), Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("expected 5 bytes"), "{err}");

        let err = VerifyingReader::new(&data[..], good, Some(20))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("read 11"), "{err}");
    }

    #[test]
    fn converts_to_and_from_oci_spec() {
        let d: Digest = EMPTY_256.parse().unwrap();
        let spec: oci_spec::image::Digest = (&d).into();
        assert_eq!(Digest::try_from(&spec).unwrap(), d);
    }
}
