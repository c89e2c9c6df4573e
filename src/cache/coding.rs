//! Content codings for bodies rendered once and served many times ([`super::Rendered`]).
//!
//! Compressing a response as it goes out costs far more than serving it: the cached 14 KB
//! trending list took 24 µs of server CPU per request as it is, 198 µs gzipped and 1,591 µs in
//! brotli on the fly (brotli's window is a fresh multi-megabyte allocation per response, mapped
//! and faulted in by the kernel each time). A rendered body is compressed once per coding, the
//! first time a client asks for that coding, and the bytes are kept with it: 22 µs per request
//! in any coding since.

use std::io::Write;

use axum::http::{HeaderMap, HeaderValue, header};

/// Bodies shorter than this are sent as they are: a few hundred bytes gain little on the wire
/// and a compressed stream has its own overhead. The edge's on-the-fly compression uses the
/// same floor.
pub const MIN_COMPRESS: usize = 1024;

/// A content coding kept for rendered bodies. Declaration order is the preference when a client
/// accepts several with the same weight: smallest output first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coding {
    Gzip,
    Zstd,
    Br,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Gzip, Coding::Zstd, Coding::Br];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Br => "br",
        }
    }

    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.name())
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Self::Gzip)
        } else if token.eq_ignore_ascii_case("zstd") {
            Some(Self::Zstd)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Self::Br)
        } else {
            None
        }
    }

    /// `body` in this coding, once per body and coding. The levels are where more effort stops
    /// paying: on the 14 KB trending list gzip 6 takes 0.25 ms (level 9: the same bytes), brotli
    /// 4 0.23 ms (quality 5 and up: 5% smaller in 6.6 ms), zstd 9 0.13 ms (19: 1% smaller in
    /// 6 ms); docs/performance.md.
    pub fn compress(self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Gzip => {
                let mut out = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 4),
                    flate2::Compression::new(6),
                );
                out.write_all(body)?;
                out.finish()
            }
            Self::Zstd => zstd::bulk::compress(body, 9),
            Self::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 4,
                    // A window no larger than the body: the encoder's memory follows it.
                    lgwin: (usize::BITS - body.len().leading_zeros()).clamp(16, 22) as i32,
                    size_hint: body.len(),
                    ..Default::default()
                };
                let mut out = Vec::with_capacity(body.len() / 4);
                brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
                Ok(out)
            }
        }
    }
}

/// The coding to send a rendered body in, from the request's `Accept-Encoding` (RFC 9110
/// 12.5.3): the kept coding with the highest weight above zero, ties going to the smaller
/// output; `None` for the body as it is (no header, nothing acceptable, or `identity` weighted
/// above every kept coding). A coding not listed takes the weight of `*` when there is one.
/// Codings it does not keep (`deflate`) are left to the edge's on-the-fly compression.
pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut weights = [None::<u16>; 3];
    let mut identity = 0;
    let mut star = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or_default().trim();
            // An item whose weight cannot be read is ignored, as tower-http ignores it.
            let Some(q) = weight(parts) else { continue };
            if token == "*" {
                star = Some(q);
            } else if token.eq_ignore_ascii_case("identity") {
                identity = q;
            } else if let Some(coding) = Coding::parse(token) {
                weights[coding.index()] = Some(q);
            }
        }
    }
    Coding::ALL
        .into_iter()
        .filter_map(|c| Some((weights[c.index()].or(star)?, c)))
        .filter(|&(q, _)| q > 0 && q >= identity)
        .max()
        .map(|(_, c)| c)
}

/// The weight of an `Accept-Encoding` item in thousandths (1000 when absent), from its
/// parameters; `None` when it is malformed.
fn weight<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    let mut q = 1000;
    for param in params {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut thousandths = 0;
        for (digit, scale) in fraction.bytes().zip([100, 10, 1]) {
            thousandths += u16::from(digit - b'0') * scale;
        }
        q = match whole {
            "0" => thousandths,
            "1" if thousandths == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn pick(accept: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        negotiate(&headers)
    }

    #[test]
    fn negotiation_follows_weights_then_size() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(pick(""), None);
        // What browsers send: every kept coding at weight 1, so the smallest.
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Coding::Br));
        assert_eq!(pick("gzip, deflate"), Some(Coding::Gzip));
        assert_eq!(pick("x-gzip"), Some(Coding::Gzip));
        assert_eq!(pick("deflate"), None, "left to the edge");
        assert_eq!(pick("GZIP;Q=0.5, zstd;q=0.8"), Some(Coding::Zstd));
        assert_eq!(pick("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.001"), Some(Coding::Br));
        assert_eq!(pick("*"), Some(Coding::Br));
        assert_eq!(pick("*;q=0.2, gzip;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some(Coding::Zstd));
        assert_eq!(pick("identity;q=0, *;q=0"), None);
        assert_eq!(
            pick("gzip;q=0.5, identity"),
            None,
            "identity weighted higher"
        );
        assert_eq!(pick("gzip, identity;q=0.5"), Some(Coding::Gzip));
        assert_eq!(
            pick("gzip;q=0.5, identity;q=0.5"),
            Some(Coding::Gzip),
            "a tie compresses"
        );
        // Malformed weights drop their item only.
        for bad in [
            "br;q=2",
            "br;q=1.5",
            "br;q=0.1234",
            "br;q=",
            "br;q=x",
            "br;q",
        ] {
            assert_eq!(pick(&format!("{bad}, gzip")), Some(Coding::Gzip), "{bad}");
        }
        assert_eq!(pick("gzip;q=1.000, br;q=0.999"), Some(Coding::Gzip));
        // Several header lines count as one list.
        let mut headers = HeaderMap::new();
        headers.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0.1"),
        );
        headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(negotiate(&headers), Some(Coding::Zstd));
    }

    #[test]
    fn every_coding_decodes_to_the_body_and_shrinks_a_json_list() {
        let body = serde_json::to_vec(
            &(0..200)
                .map(|i| serde_json::json!({"id": i, "text": format!("claim number {i}"), "status": "resolved"}))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for coding in Coding::ALL {
            let packed = coding.compress(&body).unwrap();
            assert!(
                packed.len() * 5 < body.len(),
                "{coding:?}: {} of {}",
                packed.len(),
                body.len()
            );
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Zstd => back = zstd::stream::decode_all(&packed[..]).unwrap(),
                Coding::Br => {
                    brotli::Decompressor::new(&packed[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
            }
            assert_eq!(back, body, "{coding:?}");
        }
    }
}
