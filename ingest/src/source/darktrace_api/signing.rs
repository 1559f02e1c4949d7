//! Darktrace API request signing (see `docs/darktrace_api.md`).
//!
//! `DTAPI-Signature` = lowercase hex HMAC-SHA1, keyed with the private token, over
//! `<path?query>` `\n` `<public token>` `\n` `<DTAPI-Date>`. The request part is built once as a
//! string ([`RequestPart`]); the URL that is sent is parsed from that same string and checked to
//! serialise back to it byte for byte, so what is signed is exactly what goes on the wire.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// `DTAPI-Date` format: UTC `%Y%m%dT%H%M%S` (what SEKOIA's and Elastic's clients send).
pub const DATE_FORMAT: &str = "%Y%m%dT%H%M%S";

/// The date header value for `now`. Compute it once per request: the header and the signed
/// message must carry the same second.
pub fn date_header(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format(DATE_FORMAT).to_string()
}

/// Lowercase hex HMAC-SHA1 of the documented message.
pub fn signature(
    private_token: &str,
    public_token: &str,
    request_part: &str,
    date: &str,
) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(private_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(request_part.as_bytes());
    mac.update(b"\n");
    mac.update(public_token.as_bytes());
    mac.update(b"\n");
    mac.update(date.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `path?query` as signed and sent. Always has a query (`starttime` comes first), so the
/// trailing-`?` disagreement between public clients never arises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPart(String);

impl RequestPart {
    /// `prefix` is the base URL's path without a trailing `/` (empty for the usual root);
    /// `endtime_ms`, when given, follows `starttime`.
    pub fn new<'a>(
        prefix: &str,
        path: &str,
        starttime_ms: i64,
        endtime_ms: Option<i64>,
        extra: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> RequestPart {
        use std::fmt::Write;
        let mut s = format!("{prefix}{path}?starttime={starttime_ms}");
        if let Some(end) = endtime_ms {
            let _ = write!(s, "&endtime={end}");
        }
        for (k, v) in extra {
            let _ = write!(s, "&{k}={v}");
        }
        RequestPart(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL to send: `base`'s origin followed by exactly these bytes. `Err` when URL
    /// normalisation would change them (then the signature could not match).
    pub fn url(&self, base: &reqwest::Url) -> Result<reqwest::Url, String> {
        let origin = base.origin().ascii_serialization();
        let text = format!("{origin}{}", self.0);
        let url = reqwest::Url::parse(&text)
            .map_err(|e| format!("cannot build a URL from {text}: {e}"))?;
        // What reqwest writes as the request target.
        let sent = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        if sent != self.0 {
            return Err(format!(
                "the URL would be sent as `{sent}` but signed as `{}`",
                self.0
            ));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors (`../shared/docs/darktrace-api.md` §3; the first is SEKOIA's
    /// upstream unit test, the others derived with Python's hmac/hashlib).
    const VECTORS: &[(&str, &str, &str)] = &[
        (
            "/query?param=True",
            "20230628T125331",
            "77bb1423ac8b591f5cb5fded6d4c6002db824a07",
        ),
        (
            "/modelbreaches?starttime=1687774141000&includeallpinned=false&historicmodelonly=false",
            "20230628T125331",
            "d0b04f0e20d7953371e91ff088e19dcb8ec8d989",
        ),
        (
            "/aianalyst/incidentevents?starttime=1687774141000&includeallpinned=false&historicmodelonly=false",
            "20230628T125331",
            "89e9811cf5b81325b48037c6cda6c8ef74bb8bf6",
        ),
        (
            "/modelbreaches?",
            "20230628T125331",
            "fd62da772afa3b54db9b3adee944bc0d6a67a78e",
        ),
        (
            "/modelbreaches",
            "20230628T125331",
            "5f1d6e11099bce559244ec391d371b879d71cee9",
        ),
        (
            "/aianalyst/acknowledge?uuid=eabcdef0-1234-1234-1234-cabcdefghij9",
            "2023-06-28T12:53:31.000000+00:00",
            "63c5da62b0d6754e104af974417b6694c9661132",
        ),
    ];

    #[test]
    fn published_test_vectors() {
        for (part, date, want) in VECTORS {
            assert_eq!(signature("private", "public", part, date), *want, "{part}");
        }
        // A different key or date must change it.
        assert_ne!(
            signature("Private", "public", VECTORS[0].0, VECTORS[0].1),
            VECTORS[0].2
        );
        assert_ne!(
            signature("private", "public", VECTORS[0].0, "20230628T125332"),
            VECTORS[0].2
        );
    }

    #[test]
    fn request_part_matches_the_vector_shape_and_the_wire() {
        let part = RequestPart::new(
            "",
            "/modelbreaches",
            1_687_774_141_000,
            None,
            [
                ("includeallpinned", "false"),
                ("historicmodelonly", "false"),
            ],
        );
        assert_eq!(part.as_str(), VECTORS[1].0);
        assert_eq!(
            signature("private", "public", part.as_str(), "20230628T125331"),
            VECTORS[1].2
        );
        let base = reqwest::Url::parse("https://dt.example:8443").unwrap();
        let url = part.url(&base).unwrap();
        assert_eq!(
            url.as_str(),
            format!("https://dt.example:8443{}", VECTORS[1].0)
        );
        // With a path prefix the prefix is part of what is signed.
        let prefixed = RequestPart::new("/dt", "/modelbreaches", 1, None, []);
        assert_eq!(prefixed.as_str(), "/dt/modelbreaches?starttime=1");
        // A bounded window: `endtime` right after `starttime`, then the configured parameters.
        let window = RequestPart::new("", "/modelbreaches", 1, Some(2), [("a", "b")]);
        assert_eq!(window.as_str(), "/modelbreaches?starttime=1&endtime=2&a=b");
        // Bytes that URL parsing would re-encode are refused instead of signed wrongly.
        let bad = RequestPart::new("", "/modelbreaches", 1, None, [("q", "a b")]);
        assert!(bad.url(&base).is_err());
    }

    #[test]
    fn date_is_utc_basic_format() {
        let t = chrono::DateTime::from_timestamp(1_687_956_811, 0).unwrap();
        assert_eq!(date_header(t), "20230628T125331");
    }
}
