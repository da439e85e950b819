//! The two facts of a certificate that rustls does not expose: its DNS names
//! (subjectAltName) and its validity period. A small DER walk, no X.509 library; read by
//! the TLS certificate store (`proxy/tls/store.rs`) and by ACME's renewal (`acme/store.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

/// What the store reads of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// dNSName entries of subjectAltName, lowercased (`*.example.test` kept as written).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first().context("truncated DER")?;
    let (&first, rest) = rest.split_first().context("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            bail!("bad DER length");
        }
        (rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize), &rest[n..])
    };
    if rest.len() < len {
        bail!("truncated DER element");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Reads a leaf certificate's names and validity.
pub fn leaf(der: &[u8]) -> anyhow::Result<Leaf> {
    let (_, cert, _) = element(der)?;
    let (_, mut tbs, _) = element(cert)?;
    let mut next = || -> anyhow::Result<(u8, &[u8])> {
        let (tag, body, rest) = element(tbs)?;
        tbs = rest;
        Ok((tag, body))
    };
    let (mut tag, _) = next()?;
    if tag == 0xa0 {
        tag = next()?.0; // the version came first; this is the serial number
    }
    if tag != 0x02 {
        bail!("not an X.509 certificate (no serial number)");
    }
    next()?; // signature algorithm
    next()?; // issuer
    let (_, validity) = next()?;
    let (t1, b1, rest) = element(validity)?;
    let (t2, b2, _) = element(rest)?;
    let (not_before, not_after) = (time(t1, b1)?, time(t2, b2)?);
    next()?; // subject
    next()?; // subject public key info
    let mut names = Vec::new();
    while let Ok((tag, body)) = next() {
        if tag == 0xa3 {
            names = san_names(body)?;
        }
    }
    Ok(Leaf { names, not_before, not_after })
}

/// The dNSNames of the subjectAltName extension in `[3] Extensions`.
fn san_names(explicit: &[u8]) -> anyhow::Result<Vec<String>> {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    let (_, mut exts, _) = element(explicit)?;
    while !exts.is_empty() {
        let (_, ext, rest) = element(exts)?;
        exts = rest;
        let (_, oid, mut rest) = element(ext)?;
        if oid != SAN {
            continue;
        }
        let mut value = None;
        while !rest.is_empty() {
            let (tag, body, r) = element(rest)?;
            rest = r;
            if tag == 0x04 {
                value = Some(body);
            }
        }
        let (_, mut general, _) = element(value.context("subjectAltName without a value")?)?;
        let mut names = Vec::new();
        while !general.is_empty() {
            let (tag, body, r) = element(general)?;
            general = r;
            if tag == 0x82 {
                names.push(std::str::from_utf8(body).context("a dNSName that is not text")?.to_ascii_lowercase());
            }
        }
        return Ok(names);
    }
    Ok(Vec::new())
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, body: &[u8]) -> anyhow::Result<SystemTime> {
    let s = std::str::from_utf8(body).context("a time that is not text")?;
    let s = s.strip_suffix('Z').filter(|s| s.bytes().all(|b| b.is_ascii_digit())).context("a time not in UTC digits")?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse()?, &s[4..]),
        _ => bail!("bad certificate time {s:?}"),
    };
    let n = |i: usize| -> anyhow::Result<i64> { Ok(rest[i..i + 2].parse()?) };
    let days = days_from_civil(year, n(0)?, n(2)?);
    let secs = days * 86_400 + n(4)? * 3600 + n(6)? * 60 + n(8)?;
    Ok(if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_truncation() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(time(0x17, b"491231235959Z").unwrap(), UNIX_EPOCH + Duration::from_secs(2_524_607_999));
        assert_eq!(time(0x18, b"20260101000000Z").unwrap(), UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        assert!(leaf(&[0x30, 0x05, 0x30]).is_err());
        assert!(leaf(b"garbage").is_err());
        assert!(time(0x17, "4912312359é9Z".as_bytes()).is_err(), "not digits, no panic");
    }
}
