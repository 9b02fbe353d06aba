//! Keeping secrets out of logs, status and errors: URL userinfo, tokens echoed by an upstream.

use std::borrow::Cow;

/// Longest upstream error body kept in an error message, in bytes (cut at a char boundary).
pub const MAX_ERROR_TEXT: usize = 512;

/// `url` with any userinfo (`user:password@`) replaced by `***@`; other text unchanged.
pub fn url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}://***@{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// `text` with every occurrence of `secret` replaced by `***`, then cut to [`MAX_ERROR_TEXT`]
/// bytes (scrubbed first, so a cut cannot leave a token's prefix to match later).
pub fn error_text(text: &str, secret: Option<&str>) -> String {
    let mut out = match secret.filter(|s| !s.is_empty()) {
        Some(secret) => text.replace(secret, "***"),
        None => text.to_owned(),
    };
    if out.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = out.len() - cut;
        out.truncate(cut);
        out.push_str(&format!("... ({dropped} more bytes)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(
            url("https://u:pw@host:1/mcp?a@b"),
            "https://***@host:1/mcp?a@b"
        );
        assert_eq!(url("mqtt://user@broker"), "mqtt://***@broker");
        assert_eq!(url("http://host/p@th"), "http://host/p@th");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn error_text_is_scrubbed_then_cut() {
        let body = format!("echo: Bearer t0ken {}", "x".repeat(2000));
        let out = error_text(&body, Some("t0ken"));
        assert!(out.starts_with("echo: Bearer *** x"), "{out}");
        assert!(
            out.len() < MAX_ERROR_TEXT + 40 && out.ends_with("more bytes)"),
            "{out}"
        );
        assert_eq!(
            error_text("é".repeat(400).as_str(), None).len(),
            512 + "... (288 more bytes)".len()
        );
    }
}
