//! Golden files: expected output next to the tests, rewritten with `UPDATE_EXPECT=1`.

use std::path::PathBuf;

/// Compares `got` with `tests/golden/<name>`; with `UPDATE_EXPECT` set, writes it instead.
pub fn check(name: &str, got: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_default();
    assert!(
        want == got,
        "{} differs from the golden file (UPDATE_EXPECT=1 rewrites it):\n--- expected\n{}\n--- got\n{}",
        path.display(),
        String::from_utf8_lossy(&want),
        String::from_utf8_lossy(got)
    );
}

/// A test vector from `tests/vectors/`.
pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(name),
    )
    .unwrap()
}
