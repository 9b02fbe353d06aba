//! What a `POST /v1/events` must carry before its body is read: the bearer token when
//! `ingest.http.token_file` is set, and a JSON content type.
//!
//! The content type is what keeps web pages out: a page open in a browser on the gateway can
//! send `text/plain`, form or typeless bodies cross-site without asking, never a JSON one.

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::config::secret::Secret;

/// Media types `POST /v1/events` accepts (parameters such as `charset` are ignored).
pub const ACCEPTED_TYPES: [&str; 2] = ["application/json", "application/x-ndjson"];

/// Why a request was refused before its body was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Token configured and the request carried none or another one (HTTP 401).
    #[error("missing or wrong bearer token (ingest.http.token_file is set)")]
    Unauthorized,
    /// Content type absent or not one of [`ACCEPTED_TYPES`] (HTTP 415).
    #[error("Content-Type must be application/json or application/x-ndjson, got {0}")]
    UnsupportedType(String),
}

/// Checks the headers of a `POST /v1/events` against the optional `token`.
///
/// # Errors
/// The first [`Refusal`]: the token is checked before the content type.
pub fn admit(headers: &HeaderMap, token: Option<&Secret>) -> Result<(), Refusal> {
    if let Some(token) = token {
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), token.expose().as_bytes())) {
            return Err(Refusal::Unauthorized);
        }
    }
    let given = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let essence = given.map(|v| v.split(';').next().unwrap_or("").trim());
    match essence {
        Some(t) if ACCEPTED_TYPES.iter().any(|a| t.eq_ignore_ascii_case(a)) => Ok(()),
        _ => Err(Refusal::UnsupportedType(
            given.map_or_else(|| "none".to_owned(), |v| format!("{v:?}")),
        )),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(hyper::header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn json_types_only() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/x-ndjson",
        ] {
            assert_eq!(admit(&headers(&[(CONTENT_TYPE, ok)]), None), Ok(()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; b=x",
        ] {
            let err = admit(&headers(&[(CONTENT_TYPE, bad)]), None).unwrap_err();
            assert!(matches!(err, Refusal::UnsupportedType(_)), "{bad}");
        }
        let err = admit(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(err, Refusal::UnsupportedType("none".into()));
    }

    #[test]
    fn bearer_token_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "s3cret\n").unwrap();
        let token = Secret::from_file(&dir.path().join("t")).unwrap();
        let json = (CONTENT_TYPE, "application/json");
        let with = |auth: &str| headers(&[json.clone(), (AUTHORIZATION, auth)]);
        assert_eq!(admit(&with("Bearer s3cret"), Some(&token)), Ok(()));
        for bad in ["Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "s3cret"] {
            assert_eq!(
                admit(&with(bad), Some(&token)),
                Err(Refusal::Unauthorized),
                "{bad}"
            );
        }
        let err = admit(&headers(std::slice::from_ref(&json)), Some(&token)).unwrap_err();
        assert_eq!(err, Refusal::Unauthorized);
    }
}
