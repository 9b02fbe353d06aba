//! The few X.509 fields the relay reports (RFC 5280 §4.1): the subject's common attributes and
//! the validity end, read from a certificate's DER without a full parser.

use rustls::pki_types::CertificateDer;

/// What `probe` and `/metrics` say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject as `CN=..., O=..., OU=..., C=...` (only these attributes, in certificate order);
    /// empty when it has none of them.
    pub subject: String,
    /// `notAfter` in seconds since the Unix epoch (UTC).
    pub not_after: i64,
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`); before 1970 as 1970.
pub fn format_time(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    httpdate::fmt_http_date(at)
}

/// The DER tag and contents at the front of `input`, and what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Reads the subject and `notAfter` of a DER certificate; `None` if it is not one.
pub fn summary(cert: &CertificateDer<'_>) -> Option<CertSummary> {
    let (0x30, cert, _) = element(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = element(rest)?.2; // serial, signature algorithm, issuer
    }
    let (0x30, validity, rest) = element(rest)? else {
        return None;
    };
    let (_, _, validity) = element(validity)?;
    let (time_tag, not_after, _) = element(validity)?;
    let (0x30, subject, _) = element(rest)? else {
        return None;
    };
    Some(CertSummary {
        subject: name(subject),
        not_after: time(time_tag, not_after)?,
    })
}

/// `CN=..., O=...` from a Name's RDN sequence.
fn name(mut rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((_, set, rest)) = element(rdns) {
        rdns = rest;
        let Some((_, attribute, _)) = element(set) else {
            continue;
        };
        let Some((0x06, oid, value)) = element(attribute) else {
            continue;
        };
        let label = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [0x55, 0x04, 0x06] => "C",
            _ => continue,
        };
        if let Some((_, text, _)) = element(value) {
            parts.push(format!("{label}={}", String::from_utf8_lossy(text)));
        }
    }
    parts.join(", ")
}

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, years 1950..2049) or GeneralizedTime (0x18,
/// `YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, field(0)?, field(2)?)?;
    let at = date.and_hms_opt(field(4)?, field(6)?, field(8)?)?;
    Some(at.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x18, b"20260301120000Z"), Some(1_772_366_400));
        assert_eq!(time(0x18, b"2026030112000Z"), None);
        assert_eq!(time(0x17, b"700101000000"), None);
    }

    #[test]
    fn reads_subject_and_expiry_of_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["gw-01.fleet".to_owned()]).unwrap();
        let dn = &mut params.distinguished_name;
        dn.push(rcgen::DnType::CommonName, "gw-01");
        dn.push(rcgen::DnType::OrganizationName, "Fleet");
        params.not_after = rcgen::date_time_ymd(2031, 6, 30);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let read = summary(cert.der()).unwrap();
        assert_eq!(read.subject, "CN=gw-01, O=Fleet");
        assert_eq!(read.not_after, 1_940_544_000);
        assert_eq!(format_time(read.not_after), "Mon, 30 Jun 2031 00:00:00 GMT");
        // Past 2049 the time is a GeneralizedTime (rcgen's default end: year 4096).
        let far = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        let far = far.self_signed(&key).unwrap();
        assert_eq!(summary(far.der()).unwrap().not_after, 67_090_118_400);
    }

    #[test]
    fn not_a_certificate() {
        assert_eq!(summary(&CertificateDer::from(vec![0x30, 0x03, 1, 2])), None);
        assert_eq!(summary(&CertificateDer::from(Vec::new())), None);
    }
}
