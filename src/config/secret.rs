//! `Secret`: a password or token read from a file, masked in `Debug` (a leaf: no crate imports).

use std::fmt;
use std::path::Path;

use anyhow::Context as _;

/// A secret read from a file; its `Debug` shows `Secret(***)`, and it has no `Display`: the
/// value leaves only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Reads the file, trimming surrounding whitespace.
    ///
    /// # Errors
    /// The file cannot be read (the I/O error is the source) or is empty.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading secret {}", path.display()))?;
        let text = text.trim();
        anyhow::ensure!(!text.is_empty(), "secret file {} is empty", path.display());
        Ok(Self(text.to_owned()))
    }

    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = Secret::from_file(&path).unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
